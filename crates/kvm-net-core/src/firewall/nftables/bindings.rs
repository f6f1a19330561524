//! The guest filter's bindings as they were last in force, kept by kvm-net
//! itself (`/run/kvm-net/guests/netns-COOKIE-BRIDGE.bindings`, root's
//! alone): which port holds which MAC and address. A filter made anew
//! (after `nft flush ruleset`, which Debian's nftables.service runs at
//! every start) restores exactly these. Written only by kvm-net's programs
//! under the bridge's lock, from the filter's own sets after each change:
//! never rebuilt from what guests can steer (the bridge's forwarding
//! database, which any frame teaches; the lease file, whose MACs are what
//! guests said).

use std::net::IpAddr;

use anyhow::Result;

use super::antispoof::Binding;
use crate::ifname::IfName;
use crate::kernel::netns::bridge_tag;
use crate::mac;
use crate::security::rundir::{Area, SafeDir};

/// The most of a record read back: far more than a bridge's 1024 ports hold.
const MAX_RECORD: u64 = 1 << 20;

fn file_name(bridge: &IfName) -> Result<String> {
    Ok(format!("{}.bindings", bridge_tag(bridge)?))
}

/// One line per bound address, IPv4 or IPv6: `PORT MAC IP`.
fn text(bindings: &[Binding]) -> String {
    let mut text = String::new();
    for binding in bindings {
        let addresses = binding.ip.map(IpAddr::V4).into_iter().chain(binding.ipv6.iter().copied().map(IpAddr::V6));
        for ip in addresses {
            text.push_str(&format!("{} {} {ip}\n", binding.port, mac::show(&binding.mac)));
        }
    }
    text
}

fn parse(text: &str) -> Vec<Binding> {
    let mut bindings: Vec<Binding> = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        let (Some(port), Some(mac), Some(ip), None) = (words.next(), words.next(), words.next(), words.next()) else {
            continue;
        };
        let (Ok(port), Some(mac), Ok(ip)) = (IfName::parse(port), mac::parse(mac), ip.parse::<IpAddr>()) else {
            continue;
        };
        let port = port.to_string();
        let index = match bindings.iter().position(|b| b.port == port && b.mac == mac) {
            Some(index) => index,
            None => {
                bindings.push(Binding { port, mac, ip: None, ipv6: Vec::new() });
                bindings.len() - 1
            }
        };
        match ip {
            IpAddr::V4(v4) => bindings[index].ip = Some(v4),
            IpAddr::V6(v6) => bindings[index].ipv6.push(v6),
        }
    }
    bindings
}

/// Records `bindings` (their addresses) as the ones in force.
pub fn save(bridge: &IfName, bindings: &[Binding]) -> Result<()> {
    let dir = SafeDir::create(Area::Guests)?;
    let name = file_name(bridge)?;
    let text = text(bindings);
    if dir.read(&name, MAX_RECORD)?.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    dir.replace(&name, text.as_bytes(), 0o600)
}

/// The bindings last recorded for `bridge`; none if there is no record.
pub fn load(bridge: &IfName) -> Result<Vec<Binding>> {
    let Some(dir) = SafeDir::existing(Area::Guests)? else { return Ok(Vec::new()) };
    Ok(dir.read(&file_name(bridge)?, MAX_RECORD)?.map(|text| parse(&text)).unwrap_or_default())
}

/// Removes the record, with the filter it was of.
pub fn forget(bridge: &IfName) -> Result<()> {
    match SafeDir::existing(Area::Guests)? {
        Some(dir) => dir.remove(&file_name(bridge)?),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damaged_lines_are_skipped() {
        let ip = |text: &str| text.parse().expect("an address");
        let ip6 = |text: &str| text.parse().expect("an address");
        let bindings = vec![
            Binding {
                port: "vm-a".into(),
                mac: [0x52, 0x54, 0, 0, 0, 0x0a],
                ip: Some(ip("10.0.0.10")),
                ipv6: Vec::new(),
            },
            Binding {
                port: "vm-b".into(),
                mac: [0x52, 0x54, 0, 0, 0, 0x0b],
                ip: Some(ip("10.0.0.11")),
                ipv6: vec![ip6("fd00::b"), ip6("fe80::5054:ff:fe00:b")],
            },
        ];
        let written = text(&bindings);
        assert_eq!(
            written,
            "vm-a 52:54:00:00:00:0a 10.0.0.10\nvm-b 52:54:00:00:00:0b 10.0.0.11\nvm-b 52:54:00:00:00:0b fd00::b\nvm-b 52:54:00:00:00:0b fe80::5054:ff:fe00:b\n"
        );
        assert_eq!(parse(&written), bindings);
        let unbound = Binding { port: "vm-c".into(), mac: [0; 6], ip: None, ipv6: Vec::new() };
        assert_eq!(text(&[unbound]), "");
        for bad in ["vm-a 52:54:00:00:00:0a", "vm/a 52:54:00:00:00:0a 10.0.0.1", "vm-a x 10.0.0.1", "a b c d"] {
            assert!(parse(bad).is_empty(), "{bad:?}");
        }
    }
}
