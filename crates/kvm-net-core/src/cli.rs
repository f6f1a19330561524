//! QEMU's side of the contract: `HELPER IFNAME`, silence on stdout, one line
//! on stderr and a non-zero status when something fails.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;

use nix::sys::stat::Mode;

use crate::config::model::{Config, Network, Source};
use crate::config::{self, Environment, SYSTEM_CONFIG};
use crate::error::Error;
use crate::ifname::IfName;
use crate::ops::bridge_helper;
use crate::ops::tap_scripts;
use crate::security::privilege::{self, Install, Needs, Start};
use crate::switch;
use crate::trace::trace;

/// The four helpers, one per binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    /// Attach a tap to an existing bridge.
    IfUp,
    /// Detach a tap from its bridge.
    IfDown,
    /// Create the NAT network if needed, then attach a tap.
    NatUp,
    /// Detach a tap; remove the NAT network when it is the last.
    NatDown,
}

impl Helper {
    /// The binary's name, used as the prefix of every message.
    pub fn name(self) -> &'static str {
        match self {
            Helper::IfUp => "kvm-ifup",
            Helper::IfDown => "kvm-ifdown",
            Helper::NatUp => "kvm-natup",
            Helper::NatDown => "kvm-natdown",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Helper::IfUp => "attach a VM's tap to an existing bridge (bridged or isolated networking)",
            Helper::IfDown => "detach a VM's tap from its bridge and set it down",
            Helper::NatUp => "attach a VM's tap to the NAT bridge, creating the bridge and its rules if needed",
            Helper::NatDown => "detach a VM's tap; remove the NAT bridge and its rules after the last one",
        }
    }

    fn usage(self) -> String {
        format!(
            "{name} - {summary}\n\n\
             Usage: {name} IFNAME        (or a symlink {name}@NETWORK)\n\n\
             QEMU runs it with the tap's name: -netdev tap,id=n0,script=/usr/libexec/{name},...\n\n\
             The network comes from, first to last: the @NETWORK suffix of the name it was\n\
             run as, the first network whose taps pattern matches IFNAME, KVM_NET_NETWORK,\n\
             the network called default. Networks live in {SYSTEM_CONFIG}; without\n\
             it, default is NAT on br0 with 192.168.100.1/24.\n\n\
             Environment (ignored when run setuid or with file capabilities):\n  \
             KVM_NET_CONFIG   config file (default {SYSTEM_CONFIG})\n  \
             KVM_NET_NETWORK  network name\n  \
             KVM_NET_BRIDGE   override the network's bridge\n  \
             KVM_NET_ADDRESS  override the network's IPv4 address, CIDR\n  \
             KVM_NET_DEBUG=1  trace each step on stderr\n",
            name = self.name(),
            summary = self.summary(),
        )
    }

    /// What the helper's job needs from the kernel.
    fn needs(self) -> Needs {
        match self {
            Helper::IfUp | Helper::IfDown => Needs::Netlink,
            Helper::NatUp | Helper::NatDown => Needs::ManagedNetwork,
        }
    }

    fn run(self, tap: &IfName, invoked_as: Option<&str>, start: &Start) -> anyhow::Result<()> {
        start.keep_only(self.needs(), self.name())?;
        let access = start.access();
        // A switch behind a socket of root's (OVSDB): an install with file
        // capabilities cannot reach it (a setuid one keeps root's ids).
        let switch_needs_root = |network: &Network| -> anyhow::Result<()> {
            match switch::needs_root(network) {
                Some(job) if start.install == Install::Capabilities => {
                    Err(Error::NeedsRoot { helper: self.name(), job }.into())
                }
                _ => Ok(()),
            }
        };
        let load = || -> anyhow::Result<(Environment, Config)> {
            let env = Environment::from_process()?;
            let config = Config::load(&env.config_path(), start.install != Install::Plain)?;
            Ok((env, config))
        };
        // kvm-ifdown reads no config: it acts on what the tap is attached to.
        // With the network: all the config's, whose switches may hold a
        // stale port of the tap's name.
        let chosen = || -> anyhow::Result<(Network, Source, Vec<Network>)> {
            let (env, config) = load()?;
            let chosen = config::choose(&config, invoked_as, tap, &env)?;
            access.check_network(&chosen.network, &chosen.how)?;
            let network = chosen.network;
            switch_needs_root(&network)?;
            trace(format_args!(
                "{tap}: network {} ({}, bridge {}) from {} ({})",
                network.name, network.mode, network.bridge, config.source, chosen.how
            ));
            Ok((network, config.source, config.networks))
        };
        // kvm-ifdown reads the config only for a tap whose mark names its
        // network (an ovs network's: its database socket), if granted.
        let marked_network = |name: &str| -> anyhow::Result<Network> {
            let (_, config) = load()?;
            let network = config.network(name).cloned().ok_or_else(|| Error::UnknownNetwork {
                name: name.to_owned(),
                how: format!("the alias of {tap} names it"),
                origin: config.source.to_string(),
            })?;
            access.check_network(&network, &format!("the alias of {tap} names it"))?;
            switch_needs_root(&network)?;
            Ok(network)
        };
        match self {
            Helper::IfDown => tap_scripts::ifdown(tap, &access, marked_network),
            Helper::IfUp => {
                let (network, source, all) = chosen()?;
                tap_scripts::ifup(tap, &network, &source, &access, &all)
            }
            Helper::NatUp => {
                let (network, _, all) = chosen()?;
                tap_scripts::natup(tap, &network, &access, &all)
            }
            Helper::NatDown => tap_scripts::natdown(tap, &chosen()?.0, &access),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Help,
    Version,
    Run(IfName),
}

fn parse(args: &[OsString]) -> Result<Request, Error> {
    match args {
        [] => Err(Error::Usage("no interface name given".to_owned())),
        [one] if one == "--help" || one == "-h" => Ok(Request::Help),
        [one] if one == "--version" || one == "-V" => Ok(Request::Version),
        [one] => {
            let name = one.to_str().ok_or_else(|| Error::Usage(format!("interface name {one:?} is not UTF-8")))?;
            IfName::parse(name).map(Request::Run).map_err(Error::BadInterfaceName)
        }
        [_, extra, ..] => Err(Error::Usage(format!("unexpected extra argument {extra:?}"))),
    }
}

/// Formats an error as the one line the helpers print: context, cause, advice.
pub fn one_line(err: &anyhow::Error) -> String {
    let advice = match err.chain().find_map(|cause| cause.downcast_ref::<Error>()) {
        Some(known) => known.advice(),
        None if is_permission_error(err) => {
            "kvm-net needs root or CAP_NET_ADMIN; run QEMU as root, or with a setuid helper for unprivileged VMs"
        }
        None => "run again with KVM_NET_DEBUG=1 to see each step",
    };
    format!("{err:#}; {advice}").replace(['\n', '\r'], " ")
}

/// Whether the kernel refused for lack of privilege (EPERM/EACCES), from a
/// file (the lock, a sysctl) or from netlink.
fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(errno) = cause.downcast_ref::<nix::errno::Errno>() {
            return matches!(errno, nix::errno::Errno::EPERM | nix::errno::Errno::EACCES);
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// The network named by the name the helper was run as: `kvm-natup@lab` is
/// `kvm-natup` for network `lab`.
fn network_in_name(argv0: &OsString) -> Option<String> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    name.split_once('@').map(|(_, network)| network.to_owned())
}

/// Opens /dev/null on any of stdin, stdout and stderr that the caller
/// closed: otherwise the next file opened (a lock, a config) would take that
/// number, and an error message would be written into it.
fn open_standard_descriptors() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only asks the kernel whether the number is open
        // (EBADF if not); it reads or writes no memory.
        let closed =
            unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 && nix::errno::Errno::last() == nix::errno::Errno::EBADF;
        if closed {
            // The lowest free number is `fd` itself; it stays open for good.
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                if null.as_raw_fd() == fd {
                    std::mem::forget(null);
                }
            }
        }
    }
}

/// Marks every file descriptor above stderr close-on-exec. QEMU runs its
/// scripts with the tap's descriptor open (fd 3): a daemon that inherited it
/// (dnsmasq) would keep the tap alive after QEMU exits.
fn close_inherited_descriptors_on_exec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors this process owns; it closes nothing and touches no memory.
    let marked = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } == 0;
    if marked {
        return;
    }
    // Kernels before 5.11: one descriptor at a time.
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<i32> =
        entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|fd| *fd > 2).collect();
    for fd in fds {
        // SAFETY: F_SETFD only sets a flag on a descriptor of this process;
        // a number that is no longer open (the listing's own) gets EBADF,
        // which is ignored.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// What every helper does before reading its command line: standard
/// descriptors open, inherited ones closed on exec, the terminal's signals
/// ignored, a fixed umask, the caller taken and, when privileged, the
/// environment dropped.
fn prologue(name: &str) -> Result<Start, ExitCode> {
    open_standard_descriptors();
    close_inherited_descriptors_on_exec();
    // First of all: no ^Z from the caller's terminal while a lock is held.
    if let Err(err) = privilege::shield_from_terminal() {
        eprintln!("{name}: {}", one_line(&err));
        return Err(ExitCode::from(1));
    }
    // Files kvm-net creates get fixed modes; what it starts gets a sane umask.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    Start::detect().map_err(|err| {
        eprintln!("{name}: {}", one_line(&err));
        ExitCode::from(1)
    })
}

/// The exit status of a helper's run, its one line on stderr if it failed.
fn finish(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {}", one_line(&err));
            let code = err.chain().find_map(|cause| cause.downcast_ref::<Error>()).map_or(1, Error::exit_code);
            ExitCode::from(code)
        }
    }
}

/// The whole of a helper binary's `main`.
pub fn main(helper: Helper) -> ExitCode {
    let start = match prologue(helper.name()) {
        Ok(start) => start,
        Err(code) => return code,
    };
    let mut argv = std::env::args_os();
    let invoked_as = argv.next().as_ref().and_then(network_in_name);
    let args: Vec<OsString> = argv.collect();
    let result = parse(&args).map_err(anyhow::Error::from).and_then(|request| match request {
        Request::Help => {
            print!("{}", helper.usage());
            Ok(())
        }
        Request::Version => {
            println!("{} {}", helper.name(), env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Request::Run(tap) => helper.run(&tap, invoked_as.as_deref(), &start),
    });
    finish(helper.name(), result)
}

/// The whole of `kvm-net-bridge-helper`'s `main`.
pub fn bridge_helper_main() -> ExitCode {
    let start = match prologue(bridge_helper::NAME) {
        Ok(start) => start,
        Err(code) => return code,
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = bridge_helper::parse(&args).map_err(anyhow::Error::from).and_then(|command| match command {
        bridge_helper::Command::Help => {
            print!("{}", bridge_helper::usage());
            Ok(())
        }
        bridge_helper::Command::Version => {
            println!("{} {}", bridge_helper::NAME, env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        bridge_helper::Command::Run(request) => bridge_helper::run(&request, &start),
    });
    finish(bridge_helper::NAME, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn accepts_exactly_one_interface_name() {
        assert_eq!(parse(&args(&["tap0"])).ok(), Some(Request::Run(IfName::parse("tap0").expect("valid"))));
        assert_eq!(parse(&args(&["--help"])).ok(), Some(Request::Help));
        assert_eq!(parse(&args(&["--version"])).ok(), Some(Request::Version));
    }

    #[test]
    fn rejects_what_qemu_would_never_pass() {
        for bad in [&[][..], &["tap0", "tap1"], &[""], &["-x"], &["a/b"], &["tap 0"], &["abcdefghijklmnop"]] {
            let err = parse(&args(bad)).expect_err("must be rejected");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn network_comes_from_the_suffix_of_the_invoked_name() {
        assert_eq!(network_in_name(&OsString::from("/usr/libexec/kvm-natup@lab")).as_deref(), Some("lab"));
        assert_eq!(network_in_name(&OsString::from("kvm-natup")), None);
    }

    #[test]
    fn error_line_has_context_cause_and_advice_on_one_line() {
        let err = anyhow::Error::new(Error::NoBridge("br0".to_owned())).context("attaching tap0 to bridge br0");
        let line = one_line(&err);
        assert!(
            line.starts_with("attaching tap0 to bridge br0: bridge br0 does not exist; create the bridge"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
