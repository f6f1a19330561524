//! The guest filter's bindings as they were last in force, kept by kvm-net
//! itself (`/run/kvm-net/guests/netns-COOKIE-BRIDGE.bindings`, root's
//! alone): which port holds which MAC and address. A filter made anew
//! (after `nft flush ruleset`, which Debian's nftables.service runs at
//! every start) restores exactly these. Written only by kvm-net's programs
//! under the bridge's lock, from the filter's own sets after each change:
//! never rebuilt from what guests can steer (the bridge's forwarding
//! database, which any frame teaches; the lease file, whose MACs are what
//! guests said).

use std::net::Ipv4Addr;

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

/// One line per bound address: `PORT MAC IP`.
fn text(bindings: &[Binding]) -> String {
    bindings.iter().filter_map(|b| Some(format!("{} {} {}\n", b.port, mac::show(&b.mac), b.ip?))).collect()
}

fn parse(text: &str) -> Vec<Binding> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let port = IfName::parse(words.next()?).ok()?.to_string();
            let mac = mac::parse(words.next()?)?;
            let ip: Ipv4Addr = words.next()?.parse().ok()?;
            words.next().is_none().then_some(Binding { port, mac, ip: Some(ip) })
        })
        .collect()
}

/// Records `bindings` (those with an address) as the ones in force.
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
        let bindings = vec![
            Binding { port: "vm-a".into(), mac: [0x52, 0x54, 0, 0, 0, 0x0a], ip: Some(Ipv4Addr::new(10, 0, 0, 10)) },
            Binding { port: "vm-b".into(), mac: [0x52, 0x54, 0, 0, 0, 0x0b], ip: Some(Ipv4Addr::new(10, 0, 0, 11)) },
        ];
        let written = text(&bindings);
        assert_eq!(written, "vm-a 52:54:00:00:00:0a 10.0.0.10\nvm-b 52:54:00:00:00:0b 10.0.0.11\n");
        assert_eq!(parse(&written), bindings);
        let unbound = Binding { port: "vm-c".into(), mac: [0; 6], ip: None };
        assert_eq!(text(&[unbound]), "");
        for bad in ["vm-a 52:54:00:00:00:0a", "vm/a 52:54:00:00:00:0a 10.0.0.1", "vm-a x 10.0.0.1", "a b c d"] {
            assert!(parse(bad).is_empty(), "{bad:?}");
        }
    }
}
