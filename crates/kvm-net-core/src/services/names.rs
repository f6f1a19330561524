//! Guests' own host names in their network's DNS, on kvm-net's terms. A
//! guest's DHCP request carries whatever name the guest likes; dnsmasq
//! would give it to the last guest to ask, taking it from the guest that
//! had it, and would answer `wpad` with whoever asked for it. So kvm-net's
//! dnsmasq ignores client names (`dhcp-ignore-names`), and the lease hook
//! ([`crate::ops::lease_hook`]) publishes them instead, in a hosts file dnsmasq reads
//! as it changes (`hostsdir`), first come, first served:
//!
//! - only a valid DNS label (the first label of what the guest sent, lower case);
//! - never a name the config gives (`dhcp.hosts` names, `records`), the
//!   host's own name, or one that names a service (`wpad`, `isatap`,
//!   `localhost`, ...): see [`reserved`];
//! - never a name another lease holds, until that lease ends (released or
//!   expired), whatever the later guest asks.
//!
//! Files, in the network's dnsmasq directory: `names.reserved` (written by
//! the helper that starts dnsmasq), `names.state` (`MAC IP NAME`, root's
//! alone) and `names/guests` (`IP NAME`, readable by all: names and
//! addresses only). Everything happens under the bridge's lock.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::Result;

use crate::config::model::Dhcp;
use crate::mac::{self, Mac};
use crate::security::rundir::SafeDir;

/// The directory dnsmasq reads hosts files from (`hostsdir`), in its own.
pub const HOSTS_DIR: &str = "names";
/// The hosts file of guests' names, in [`HOSTS_DIR`].
const HOSTS_FILE: &str = "guests";
/// Who holds which name (root's alone: MACs).
const STATE_FILE: &str = "names.state";
/// The names no guest may take.
const RESERVED_FILE: &str = "names.reserved";
/// The most of any of these files read back.
const MAX_FILE: u64 = 4 << 20;

/// Names that stand for a service or the host itself on every network,
/// which clients look up on their own (web proxy and ISATAP discovery,
/// loopback names).
const SERVICE_NAMES: [&str; 8] =
    ["localhost", "localdomain", "wpad", "isatap", "ip6-localhost", "ip6-loopback", "broadcasthost", "gateway"];

/// One published name: a MAC holds one name, for each address it leases
/// (its IPv4 lease and its DHCPv6 leases).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    mac: Mac,
    ip: IpAddr,
    name: String,
}

/// A name a guest sent, as kvm-net would publish it: the first label, lower
/// case, if it is a valid DNS label (letters, digits, inner hyphens, at
/// most 63 bytes).
pub fn label_of(supplied: &str) -> Option<String> {
    let label = supplied.split('.').next()?.to_ascii_lowercase();
    let valid = !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then_some(label)
}

/// The names no guest may take: the network's `dhcp.hosts` names and
/// `records` (whole, and their first labels), the host's own name, and
/// [`SERVICE_NAMES`].
pub fn reserved(dhcp: &Dhcp) -> BTreeSet<String> {
    let configured =
        dhcp.hosts.iter().filter_map(|h| h.name.clone()).chain(dhcp.records.iter().map(|r| r.name.clone()));
    let host = crate::kernel::sysctl::read_small("/proc/sys/kernel/hostname").ok();
    let mut names: BTreeSet<String> = SERVICE_NAMES.iter().map(|n| (*n).to_owned()).collect();
    for name in configured.chain(host) {
        let name = name.trim().to_ascii_lowercase();
        if let Some(label) = label_of(&name) {
            names.insert(label);
        }
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// Readies `dir` (a network's dnsmasq directory) before its dnsmasq
/// starts: the hosts directory, and the reserved names as they are now.
pub fn prepare(dir: &SafeDir, reserved: &BTreeSet<String>) -> Result<()> {
    let hosts = dir.subdir(HOSTS_DIR, 0o755)?;
    let text: String = reserved.iter().map(|name| format!("{name}\n")).collect();
    if dir.read(RESERVED_FILE, MAX_FILE)?.as_deref() != Some(text.as_str()) {
        dir.replace(RESERVED_FILE, text.as_bytes(), 0o644)?;
    }
    if hosts.read(HOSTS_FILE, MAX_FILE)?.is_none() {
        hosts.replace(HOSTS_FILE, b"", 0o644)?;
    }
    Ok(())
}

fn parse_state(text: &str) -> Vec<Held> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let held = Held {
                mac: mac::parse(words.next()?)?,
                ip: words.next()?.parse().ok()?,
                name: label_of(words.next()?)?,
            };
            words.next().is_none().then_some(held)
        })
        .collect()
}

/// Whether `dir` publishes names (its dnsmasq was started with a hosts directory).
fn publishes(dir: &SafeDir) -> Result<Option<SafeDir>> {
    dir.existing_subdir(HOSTS_DIR, 0o755)
}

fn load(dir: &SafeDir) -> Result<Vec<Held>> {
    Ok(dir.read(STATE_FILE, MAX_FILE)?.map(|text| parse_state(&text)).unwrap_or_default())
}

fn store(dir: &SafeDir, hosts: &SafeDir, held: &[Held]) -> Result<()> {
    let state: String = held.iter().map(|h| format!("{} {} {}\n", mac::show(&h.mac), h.ip, h.name)).collect();
    dir.replace(STATE_FILE, state.as_bytes(), 0o600)?;
    let published: String = held.iter().map(|h| format!("{} {}\n", h.ip, h.name)).collect();
    if hosts.read(HOSTS_FILE, MAX_FILE)?.as_deref() != Some(published.as_str()) {
        hosts.replace(HOSTS_FILE, published.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// What became of a name a guest asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Published: the network's DNS answers it with the lease's address.
    Published(String),
    /// Not published, and why.
    Refused(String),
    /// The guest sent none, or the network publishes no names.
    Nothing,
}

/// A lease given or renewed to `mac` (`ip`), whose guest sent `supplied`:
/// the MAC's name is the one it asks for, if it may have it, for every
/// address it leases; any other it held goes. Without a name sent (a
/// renewal that sends none, dnsmasq telling of the lease again after it
/// read the hosts file, or a DHCPv6 client, which seldom sends one) the
/// address keeps the name it has, or takes the one its MAC holds.
pub fn on_lease(dir: &SafeDir, mac: &Mac, ip: IpAddr, supplied: Option<&str>) -> Result<Outcome> {
    let Some(hosts) = publishes(dir)? else { return Ok(Outcome::Nothing) };
    let mut held = load(dir)?;
    let before = held.clone();
    let current = held.iter().find(|h| h.mac == *mac && h.ip == ip).map(|h| h.name.clone());
    // The MAC's lease of this family moved (IPv4: one at a time) or ended
    // unseen; whoever had this address had it before.
    let replaced = |h: &Held| (h.mac == *mac && h.ip.is_ipv4() && ip.is_ipv4()) || h.ip == ip;
    let outcome = match (supplied.filter(|s| !s.is_empty()), current) {
        (None, Some(_)) => Outcome::Nothing,
        (None, None) => {
            held.retain(|h| !replaced(h));
            if let Some(name) = held.iter().find(|h| h.mac == *mac).map(|h| h.name.clone()) {
                held.push(Held { mac: *mac, ip, name });
            }
            Outcome::Nothing
        }
        (Some(supplied), current) => {
            let reserved: BTreeSet<String> =
                dir.read(RESERVED_FILE, MAX_FILE)?.unwrap_or_default().lines().map(str::to_owned).collect();
            held.retain(|h| !replaced(h));
            match label_of(supplied) {
                None => Outcome::Refused(format!("{supplied:?} is not a DNS label")),
                Some(name) if reserved.contains(&name) => Outcome::Refused(format!("{name} is reserved")),
                Some(name) => match held.iter().find(|h| h.name == name && h.mac != *mac) {
                    Some(other) => {
                        Outcome::Refused(format!("{name} is held by {} ({})", other.ip, mac::show(&other.mac)))
                    }
                    None => {
                        // One name per MAC: its other addresses take the new one.
                        for other in held.iter_mut().filter(|h| h.mac == *mac) {
                            other.name.clone_from(&name);
                        }
                        held.push(Held { mac: *mac, ip, name: name.clone() });
                        if current.as_deref() == Some(name.as_str()) {
                            Outcome::Nothing
                        } else {
                            Outcome::Published(name)
                        }
                    }
                },
            }
        }
    };
    if held != before {
        store(dir, &hosts, &held)?;
    }
    Ok(outcome)
}

/// A lease released or expired: its name is free again.
pub fn on_release(dir: &SafeDir, mac: &Mac, ip: IpAddr) -> Result<()> {
    let Some(hosts) = publishes(dir)? else { return Ok(()) };
    let mut held = load(dir)?;
    let count = held.len();
    held.retain(|h| !(h.mac == *mac && h.ip == ip));
    if held.len() != count {
        store(dir, &hosts, &held)?;
    }
    Ok(())
}

/// The names published now, by address (for `kvm-net status`: the hosts
/// file is readable by all).
pub fn published(dir: &SafeDir) -> Vec<(IpAddr, String)> {
    let Ok(Some(hosts)) = publishes(dir) else { return Vec::new() };
    let text = hosts.read(HOSTS_FILE, MAX_FILE).ok().flatten().unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (ip, name) = line.split_once(' ')?;
            Some((ip.parse().ok()?, label_of(name)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_labels_are_taken_lower_case_and_cut_at_the_first_dot() {
        assert_eq!(label_of("DBServer").as_deref(), Some("dbserver"));
        assert_eq!(label_of("web1.example.org").as_deref(), Some("web1"));
        for bad in ["", "-a", "a-", "a_b", "a b", "\u{1b}[31mred", &"x".repeat(64), ".hidden"] {
            assert_eq!(label_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_configs_names_and_service_names_are_reserved() {
        let network = crate::config::model::Network::classic();
        let mut dhcp = Dhcp::defaults_for(network.ipv4.expect("an address"));
        dhcp.hosts.push(crate::config::model::StaticLease {
            mac: "52:54:00:00:00:10".into(),
            ip: std::net::Ipv4Addr::new(192, 168, 100, 10),
            ipv6: None,
            name: Some("Web1".into()),
            tap: None,
        });
        dhcp.records.push(crate::config::model::HostRecord {
            name: "db.lab".into(),
            ip: "192.168.100.20".parse().expect("ip"),
        });
        let names = reserved(&dhcp);
        for name in ["web1", "db.lab", "db", "wpad", "localhost"] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn state_lines_read_back_and_damaged_ones_are_skipped() {
        let held = parse_state("52:54:00:00:00:0a 10.0.0.10 alpha\nbad line\n52:54:00:00:00:0b 10.0.0.11 -x\n");
        assert_eq!(
            held,
            [Held { mac: [0x52, 0x54, 0, 0, 0, 0x0a], ip: IpAddr::from([10, 0, 0, 10]), name: "alpha".into() }]
        );
    }
}
