//! `kvm-net-lease`: the script the dnsmasq of a kvm-net network runs for
//! each lease (`--dhcp-script`: `add|old|del MAC IP [NAME]`; for a DHCPv6
//! lease `add|old|del DUID IPV6 [NAME]`, the MAC in `DNSMASQ_MAC`). It binds the
//! leased address to the port the guest sends from, or unbinds it, where
//! the network has a guest filter (`guest_spoofing = "deny"`); and it
//! publishes the host name the guest sent, where the network may have it
//! ([`crate::services::names`]). A program of kvm-net's, not a shell script: it keeps
//! only CAP_NET_ADMIN, reads no config, takes its bridge from the dnsmasq
//! that ran it (whose config file names the bridge and the network
//! namespace), works under the bridge's lock, and believes nothing a guest
//! said: the MAC must be the one the guest filter locked to one of the
//! network's ports, and the name is checked before it is published.
//!
//! Also here: where that program is installed ([`hook_path`]).

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};

use crate::error::Error;
use crate::firewall::guests::GuestFilter;
use crate::ifname::IfName;
use crate::kernel::netns::bridge_of_tag;
use crate::mac::{self, Mac};
use crate::security::lock::BridgeLock;
use crate::services::dnsmasq::Dnsmasq;
use crate::services::host_names;
use crate::services::names::{self, Outcome};

/// The binary's name, installed beside the tap helpers.
pub const NAME: &str = "kvm-net-lease";

/// Where the lease hook is: beside the running helper, checked like
/// everything a privileged program hands to root (dnsmasq runs it as root):
/// a regular file of root's that no one else may write, in a directory of
/// root's that no one else may write. (A caller's hard link to a setuid
/// helper in a directory of their own is refused here.)
pub fn hook_path() -> Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe").context("finding the running helper (/proc/self/exe)")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let hook = dir.join(NAME);
    let refuse = |path: &Path, why: String| -> anyhow::Error {
        Error::UnsafePath { path: path.display().to_string(), why }.into()
    };
    let meta = std::fs::symlink_metadata(&hook)
        .map_err(|err| anyhow!("{NAME} is not installed beside the helper ({}: {err})", hook.display()))?;
    if !meta.file_type().is_file() {
        return Err(refuse(&hook, "it is not a regular file".to_owned()));
    }
    for (path, meta) in
        [(hook.as_path(), meta), (dir, std::fs::metadata(dir).with_context(|| format!("checking {}", dir.display()))?)]
    {
        if meta.uid() != 0 {
            return Err(refuse(path, format!("it is owned by uid {}, not root", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(refuse(path, format!("its mode {:04o} lets others write to it", meta.mode() & 0o7777)));
        }
    }
    Ok(hook)
}

/// What dnsmasq says happened to a lease.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// Given or renewed (`add`, `old`): bind it.
    Bound { mac: Mac, ip: IpAddr },
    /// Released or expired (`del`): unbind it.
    Gone { mac: Mac, ip: IpAddr },
    /// Anything else dnsmasq tells a script (`init`, `tftp`, `arp-add`, ...).
    Other,
}

/// A lease event from dnsmasq's arguments; `mac6`: `DNSMASQ_MAC`, which
/// names the client of a DHCPv6 lease (whose second argument is a DUID).
fn parse(args: &[String], mac6: Option<&str>) -> Result<Event> {
    let (action, client, ip) = match args {
        [action, client, ip, ..] => (action.as_str(), client, ip),
        _ => return Ok(Event::Other),
    };
    if !matches!(action, "add" | "old" | "del") {
        return Ok(Event::Other);
    }
    let ip: IpAddr = ip.parse().map_err(|_| anyhow!("{ip:?} is not an IP address"))?;
    let mac = match ip {
        IpAddr::V4(_) => client.as_str(),
        // A client dnsmasq knows no MAC of is none kvm-net can find a port for.
        IpAddr::V6(_) => match mac6 {
            Some(mac) => mac,
            None => return Ok(Event::Other),
        },
    };
    let mac = mac::parse(mac).ok_or_else(|| anyhow!("{mac:?} is not a MAC address"))?;
    Ok(if action == "del" { Event::Gone { mac, ip } } else { Event::Bound { mac, ip } })
}

/// The bridge of the dnsmasq that ran this process: its `--conf-file` is
/// `/run/kvm-net/dnsmasq/netns-COOKIE-BRIDGE/dnsmasq.conf`, and the
/// namespace in it must be this one.
fn bridge_of_parent() -> Result<IfName> {
    let parent = nix::unistd::getppid();
    let cmdline = std::fs::read(format!("/proc/{parent}/cmdline")).context("reading the command line of dnsmasq")?;
    let prefix = format!("--conf-file={}/dnsmasq/", crate::security::rundir::RUN_DIR);
    let tag = cmdline
        .split(|b| *b == 0)
        .filter_map(|arg| std::str::from_utf8(arg).ok())
        .find_map(|arg| arg.strip_prefix(&prefix)?.strip_suffix("/dnsmasq.conf").map(str::to_owned))
        .ok_or_else(|| anyhow!("{NAME} is run by the dnsmasq of a kvm-net network, and process {parent} is none"))?;
    bridge_of_tag(&tag)?
        .ok_or_else(|| anyhow!("dnsmasq's config {tag:?} is not for a bridge of this network namespace"))
}

fn run(args: &[String], supplied_name: Option<&str>, mac6: Option<&str>) -> Result<()> {
    crate::security::privilege::keep_only_network_admin()?;
    let event = parse(args, mac6)?;
    if event == Event::Other {
        return Ok(());
    }
    let bridge = bridge_of_parent()?;
    let _lock = BridgeLock::acquire(&bridge)?;
    let filter = GuestFilter::of_bridge(&bridge);
    let filtered = filter.is_present()?;
    let dnsmasq = Dnsmasq::for_bridge(&bridge)?;
    let dir = dnsmasq.dir()?;
    match event {
        Event::Bound { mac, ip } => {
            if filtered {
                filter.bind(&mac, ip)?;
            }
            // Guests' own names are published for their leases, IPv4 and DHCPv6.
            if let Some(dir) = &dir {
                match names::on_lease(dir, &mac, ip, supplied_name)? {
                    Outcome::Refused(why) => crate::trace::warn(format_args!(
                        "{NAME}: {}'s host name is not published: {why}",
                        mac::show(&mac)
                    )),
                    Outcome::Published(_) | Outcome::Nothing => {}
                }
                host_names::publish_leases(&bridge, &names::published(dir), dnsmasq.domain().as_deref())?;
            }
            Ok(())
        }
        Event::Gone { mac, ip } => {
            if let Some(dir) = &dir {
                names::on_release(dir, &mac, ip)?;
                host_names::publish_leases(&bridge, &names::published(dir), dnsmasq.domain().as_deref())?;
            }
            if filtered {
                filter.unbind(&mac, ip)?;
            }
            Ok(())
        }
        Event::Other => Ok(()),
    }
}

/// The whole of `kvm-net-lease`'s `main`: dnsmasq logs what it prints.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The name the guest sent, as dnsmasq (run as root, our parent) passes it.
    let supplied_name = std::env::var("DNSMASQ_SUPPLIED_HOSTNAME").ok();
    let mac6 = std::env::var("DNSMASQ_MAC").ok();
    match run(&args, supplied_name.as_deref(), mac6.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            crate::trace::warn(format_args!("{NAME}: {err:#}"));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_dnsmasqs_lease_events() {
        let mac = [0x52, 0x54, 0, 0, 0, 0x10];
        let ip = IpAddr::from([192, 168, 100, 10]);
        for action in ["add", "old"] {
            assert_eq!(
                parse(&args(&[action, "52:54:00:00:00:10", "192.168.100.10", "web1"]), None).ok(),
                Some(Event::Bound { mac, ip })
            );
        }
        assert_eq!(
            parse(&args(&["del", "52:54:00:00:00:10", "192.168.100.10"]), None).ok(),
            Some(Event::Gone { mac, ip })
        );
        assert_eq!(parse(&args(&["init"]), None).ok(), Some(Event::Other));
        assert!(parse(&args(&["add", "52:54:00:00:00:1", "192.168.100.10"]), None).is_err());
        assert!(parse(&args(&["add", "52:54:00:00:00:10:11", "192.168.100.10"]), None).is_err());
    }

    #[test]
    fn a_dhcpv6_lease_is_the_client_dnsmasq_names_by_its_mac() {
        let duid = "00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:10";
        let ip: IpAddr = "fd00:60::1000".parse().expect("an address");
        assert_eq!(
            parse(&args(&["add", duid, "fd00:60::1000"]), Some("52:54:00:00:00:10")).ok(),
            Some(Event::Bound { mac: [0x52, 0x54, 0, 0, 0, 0x10], ip })
        );
        assert_eq!(parse(&args(&["add", duid, "fd00:60::1000"]), None).ok(), Some(Event::Other), "no MAC, no port");
        assert!(parse(&args(&["add", duid, "fd00:60::1000"]), Some("x")).is_err());
    }
}
