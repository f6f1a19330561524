//! `kvm-net-bridge-helper`: QEMU's bridge-helper protocol, for QEMU run by
//! an ordinary user (`-netdev bridge,br=NETWORK,helper=PATH`). QEMU runs
//! `HELPER [--use-vnet] --fd=N --br=NAME` with one end of a Unix socket pair
//! as descriptor N, reads one byte carrying a tap's descriptor
//! (`SCM_RIGHTS`), and waits for exit status 0. The helper makes that tap,
//! brings the network up exactly as `kvm-natup` does (bridge, addresses,
//! rules, dnsmasq on first use; attach only for a bridged network), attaches
//! the tap, and leaves a watcher ([`crate::ops::watch`]) to tear the network down
//! after its last VM, since QEMU runs no downscript with `helper=`.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    getpeername, getsockname, sendmsg, AddressFamily, ControlMessage, MsgFlags, SockaddrLike, SockaddrStorage,
};
use nix::sys::stat::{fstat, SFlag};

use crate::config::model::{Config, Network};
use crate::config::{self, Environment};
use crate::error::Error;
use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::tap::Tap;
use crate::ops::network::Bringup;
use crate::ops::tap_scripts::{attach_limited, plug_in, release_stale_named};
use crate::ops::watch;
use crate::security::access::Access;
use crate::security::lock::BridgeLock;
use crate::security::privilege::{Install, Needs, Start};
use crate::shaping;
use crate::switch::{self, Switch};
use crate::trace::trace;

/// The binary's name, the prefix of its messages.
pub const NAME: &str = "kvm-net-bridge-helper";

/// The names the kernel gives the taps the helper makes (`kvmtap0`, ...).
pub const TAP_PATTERN: &str = "kvmtap%d";

/// What QEMU asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `--use-vnet`: the tap carries virtio-net headers.
    pub use_vnet: bool,
    /// `--fd=N`: the socket to send the tap's descriptor through.
    pub fd: RawFd,
    /// `--br=NAME`: a kvm-net network, or its bridge.
    pub bridge: String,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// QEMU's request.
    Run(Request),
}

fn usage_error(reason: String) -> Error {
    Error::HelperUsage(reason)
}

/// Reads the command line the way QEMU writes it: `--use-vnet`, `--fd=N`
/// and `--br=NAME`, in any order, each at most once.
pub fn parse(args: &[OsString]) -> Result<Command, Error> {
    if let [one] = args {
        if one == "--help" || one == "-h" {
            return Ok(Command::Help);
        }
        if one == "--version" || one == "-V" {
            return Ok(Command::Version);
        }
    }
    let (mut use_vnet, mut fd, mut bridge) = (false, None, None);
    for arg in args {
        let arg = arg.to_str().ok_or_else(|| usage_error(format!("argument {arg:?} is not UTF-8")))?;
        if arg == "--use-vnet" && !use_vnet {
            use_vnet = true;
        } else if let (Some(value), None) = (arg.strip_prefix("--fd="), fd) {
            let number = value.parse::<RawFd>().ok().filter(|n| *n >= 0);
            fd = Some(number.ok_or_else(|| usage_error(format!("--fd={value} is not a descriptor number")))?);
        } else if let (Some(value), None) = (arg.strip_prefix("--br="), &bridge) {
            if value.is_empty() {
                return Err(usage_error("--br= names no network".to_owned()));
            }
            bridge = Some(value.to_owned());
        } else {
            return Err(usage_error(format!("unexpected argument {arg:?}")));
        }
    }
    match (fd, bridge) {
        (Some(fd), Some(bridge)) => Ok(Command::Run(Request { use_vnet, fd, bridge })),
        (None, _) => Err(usage_error("no --fd=N given".to_owned())),
        (_, None) => Err(usage_error("no --br=NAME given".to_owned())),
    }
}

/// The usage text.
pub fn usage() -> String {
    format!(
        "{NAME} - give an unprivileged QEMU a tap on a kvm-net network\n\n\
         Usage: {NAME} [--use-vnet] --fd=N --br=NETWORK\n\n\
         QEMU runs it for -netdev bridge,id=n0,br=NETWORK,helper=/usr/libexec/{NAME}\n\
         with a Unix socket as descriptor N, and receives the tap's descriptor\n\
         through it. NETWORK is a network of {} (or its bridge); without that\n\
         file, default (NAT on br0, 192.168.100.1/24, root only). The network is\n\
         created on first use and removed after its last VM exits.\n",
        config::SYSTEM_CONFIG
    )
}

/// The socket QEMU passed as `--fd`: it must be an open, connected Unix
/// socket (one end of a pair), or there is nobody to send the tap to.
fn unix_socket(fd: RawFd) -> Result<BorrowedFd<'static>> {
    let not_a_socket = |why: String| -> anyhow::Error { usage_error(format!("--fd={fd} {why}")).into() };
    // SAFETY: F_GETFD only asks whether the number is open; no memory is involved.
    if let Err(err) = Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) }) {
        return Err(not_a_socket(format!("is not an open descriptor ({err})")));
    }
    // SAFETY: the descriptor is open (checked above), this process never
    // closes it, and nothing else in it owns that number: it was inherited
    // from the caller.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(socket).map_err(|err| not_a_socket(format!("cannot be examined ({err})")))?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFSOCK {
        return Err(not_a_socket("is not a socket".to_owned()));
    }
    let family = getsockname::<SockaddrStorage>(socket.as_raw_fd()).ok().and_then(|a| a.family());
    if family != Some(AddressFamily::Unix) {
        return Err(not_a_socket("is not a Unix socket".to_owned()));
    }
    if getpeername::<SockaddrStorage>(socket.as_raw_fd()).is_err() {
        return Err(not_a_socket("is not connected to anyone".to_owned()));
    }
    Ok(socket)
}

/// Sends the tap's descriptor: one byte, with the descriptor attached.
fn send_descriptor(socket: BorrowedFd<'_>, tap: &Tap) -> Result<()> {
    let fds = [tap.fd().as_raw_fd()];
    let message = [IoSlice::new(&[0])];
    sendmsg::<()>(socket.as_raw_fd(), &message, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
        .with_context(|| format!("sending tap {} to QEMU", tap.name()))
        .map(drop)
}

/// Where the helper's tap goes.
enum Target<'a> {
    /// A managed network, brought up (or found up) for it.
    Managed(Bringup<'a>),
    /// A switch the system owns (bridged and ovs networks).
    Existing(Box<dyn Switch>),
}

/// The network `--br` names, if the caller may have a tap on it through
/// this install (privilege reduced to what it needs first), with the
/// whole config and the caller's access.
fn network_asked_for(request: &Request, start: &Start) -> Result<(Network, Config, Access)> {
    // A helper with file capabilities may only attach (bridged networks).
    let needs = if start.install == Install::Capabilities { Needs::Netlink } else { Needs::ManagedNetwork };
    start.keep_only(needs, NAME)?;
    let env = Environment::from_process()?;
    let config = Config::load(&env.config_path(), start.install != Install::Plain)?;
    let chosen = config::choose_by_bridge_argument(&config, &request.bridge, &env)?;
    let access = start.access();
    access.check_network(&chosen.network, &chosen.how)?;
    let network = chosen.network;
    // A managed network needs root's files and tools; an OVS port, root's
    // database socket and the watcher that takes it away with its tap.
    if needs == Needs::Netlink {
        if network.mode.is_managed() {
            return Err(Error::NeedsRoot { helper: NAME, job: crate::error::NEEDS_ROOT_MANAGED }.into());
        }
        if let Some(job) = switch::needs_root(&network) {
            return Err(Error::NeedsRoot { helper: NAME, job }.into());
        }
    }
    trace(format_args!(
        "--br={}: network {} ({}, bridge {})",
        request.bridge, network.name, network.mode, network.bridge
    ));
    Ok((network, config, access))
}

/// Serves one request.
pub fn run(request: &Request, start: &Start) -> Result<()> {
    // Checked first: nothing is made for a caller that cannot take the tap.
    let socket = unix_socket(request.fd)?;
    let (network, config, access) = network_asked_for(request, start)?;
    let mut netlink = Netlink::connect()?;
    // The switch of a network kvm-net does not make must be there before a tap is made for it.
    let mut target = if network.mode.is_managed() {
        Target::Managed(Bringup::prepare(&network, NAME)?)
    } else {
        Target::Existing(
            switch::open(&network, &mut netlink, None)
                .with_context(|| format!("attaching a tap to {}", switch::describe(&network)))?,
        )
    };
    // A switch that forwards the guest's unfinished checksums as they are
    // gets a tap without virtio-net headers: QEMU then offers the guest no
    // checksum offload, and the guest finishes its own.
    let unfinished = match &mut target {
        Target::Existing(switch) => switch.forwards_unfinished_checksums()?,
        Target::Managed(_) => false,
    };
    if unfinished && request.use_vnet {
        trace(format_args!("{} forwards unfinished checksums: no vnet header", network.bridge));
    }
    // The caller's user alone, no group: as private as a tap QEMU makes itself.
    let owner = match &access {
        Access::Restricted(caller) => Some(caller.uid),
        Access::Unrestricted => None,
    };
    let tap = Tap::create(TAP_PATTERN, request.use_vnet && !unfinished, owner)?;
    trace(format_args!("made tap {} (vnet header: {})", tap.name(), tap.has_vnet_hdr()));
    let port =
        netlink.link_by_name(tap.name().as_str())?.ok_or_else(|| Error::NoSuchInterface(tap.name().to_string()))?;
    match target {
        Target::Managed(bringup) => {
            let lock = BridgeLock::acquire(&network.bridge)?;
            // The watcher is started last, inside the bring-up: if it cannot
            // be, a network created here is removed again, as after any
            // failed start.
            bringup.run(&mut netlink, &lock, |netlink, bridge| {
                let mut switch = plug_in(netlink, &network, &config.networks, bridge, &port, switch::Tap::Made)?;
                within_bound(netlink, &access, &network, &port, &mut *switch)?;
                watch::ensure_watcher(&network)
            })?;
        }
        Target::Existing(mut switch) => {
            // A switch that keeps the ports of departed taps needs a watcher
            // to take this one away with its tap; as for managed networks,
            // it is started (or found) under the bridge's lock.
            // So does a tap with an ifb (a limit on what its guest sends),
            // which outlives its tap.
            let keeps = switch.keeps_departed_ports() || network.limits_for(&port.name).from_guest.is_some();
            let _lock = keeps.then(|| BridgeLock::acquire(&network.bridge)).transpose()?;
            // A tap the kernel just named may share its name with a stale
            // port elsewhere, which that switch takes whatever the tap is for.
            release_stale_named(&config.networks, &network, &port.name)?;
            attach_limited(&mut netlink, &network, &mut *switch, &port, switch::Tap::Made)?;
            within_bound(&mut netlink, &access, &network, &port, &mut *switch)?;
            if keeps {
                watch::ensure_watcher(&network)?;
            }
        }
    }
    send_descriptor(socket, &tap)
}

/// Refuses a caller other than root who now has more than
/// `max_taps_per_user` taps on the bridge, counting the one just attached,
/// and takes that one off again (it goes with this process). Counted after
/// the attach, so that callers racing on a bridge without a lock (a bridged
/// network) can only be refused too often, never let past the bound.
fn within_bound(
    netlink: &mut Netlink,
    access: &Access,
    network: &Network,
    port: &Link,
    switch: &mut dyn Switch,
) -> Result<()> {
    let Access::Restricted(caller) = access else { return Ok(()) };
    let theirs = switch
        .ports(netlink)?
        .iter()
        .filter(|p| p.tun.is_some_and(|tun| tun.owner == Some(caller.uid.as_raw())))
        .count();
    if theirs <= network.max_taps_per_user as usize {
        return Ok(());
    }
    switch.detach(netlink, port)?;
    if shaping::is_asked_for(network) {
        shaping::unlimit(netlink, port)?;
    }
    Err(Error::TooManyTaps { user: caller.name(), network: network.name.clone(), max: network.max_taps_per_user }
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn reads_what_qemu_and_libvirt_pass() {
        let expected = Request { use_vnet: true, fd: 5, bridge: "default".to_owned() };
        for order in [&["--use-vnet", "--fd=5", "--br=default"][..], &["--br=default", "--use-vnet", "--fd=5"]] {
            assert_eq!(parse(&args(order)).ok(), Some(Command::Run(expected.clone())), "{order:?}");
        }
        let plain = parse(&args(&["--fd=7", "--br=br0"])).ok();
        assert_eq!(plain, Some(Command::Run(Request { use_vnet: false, fd: 7, bridge: "br0".to_owned() })));
        assert_eq!(parse(&args(&["--help"])).ok(), Some(Command::Help));
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            &[][..],
            &["--br=default"],
            &["--fd=5"],
            &["--fd=x", "--br=default"],
            &["--fd=-1", "--br=default"],
            &["--fd=5", "--br="],
            &["--fd=5", "--fd=6", "--br=default"],
            &["--fd=5", "--br=a", "--br=b"],
            &["--fd=5", "--br=default", "extra"],
            &["--use-vnet", "--use-vnet", "--fd=5", "--br=default"],
        ] {
            let err = parse(&args(bad)).expect_err("must be refused");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
