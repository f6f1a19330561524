//! The names of a network's guests for the host itself, for the NSS module
//! `libnss_kvmnet.so.2` (`hosts: files kvmnet dns`): files of `ADDRESS
//! NAME` lines under `/run/kvm-net/hosts`, readable by everyone and holding
//! nothing but names and addresses (no MACs, no client ids), there exactly
//! while the network is up. Named by the bridge's run-state tag
//! (`netns-COOKIE-BRIDGE`): the module answers a process from its own
//! network namespace's files only.
//!
//! What goes in them is the policy: a `dhcp.hosts` name plain and in the
//! network's domain (`TAG.hosts`, written at each start of the network);
//! a guest's own host name, as the lease hook publishes it, only in the
//! domain and never plain (`TAG.leases`), so that no guest shadows a name
//! of the host's (`mail`, `localhost`, the host's own) by choosing it.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;

use crate::config::model::Network;
use crate::ifname::IfName;
use crate::kernel::netns::bridge_tag;
use crate::security::rundir::{Area, SafeDir, RUN_DIR};

fn file(bridge: &IfName, kind: &str) -> Result<String> {
    Ok(format!("{}.{kind}", bridge_tag(bridge)?))
}

/// The `dhcp.hosts` names of `network`, as the module reads them.
fn config_text(network: &Network) -> String {
    let Some(dhcp) = &network.dhcp else { return String::new() };
    let mut text = String::new();
    for host in &dhcp.hosts {
        let Some(name) = &host.name else { continue };
        let addresses = [Some(IpAddr::V4(host.ip)), host.ipv6.map(IpAddr::V6)];
        for address in addresses.into_iter().flatten() {
            text.push_str(&format!("{address} {name}\n"));
            if let Some(domain) = &dhcp.domain {
                text.push_str(&format!("{address} {name}.{domain}\n"));
            }
        }
    }
    text
}

/// Writes (or removes, where it has none) `network`'s `dhcp.hosts` names;
/// at each start of the network, so that a changed config is followed.
pub fn publish_config(network: &Network) -> Result<()> {
    publish(&file(&network.bridge, "hosts")?, &config_text(network))
}

/// Writes the guests' own names, `published` (what the lease hook has
/// published for the network's DNS), qualified with `domain`; none without
/// a domain.
pub fn publish_leases(bridge: &IfName, published: &[(IpAddr, String)], domain: Option<&str>) -> Result<()> {
    let text: String = match domain {
        Some(domain) => published.iter().map(|(ip, label)| format!("{ip} {label}.{domain}\n")).collect(),
        None => String::new(),
    };
    publish(&file(bridge, "leases")?, &text)
}

/// Makes the file `name` hold `text`, rewritten only when it differs;
/// removed when there is nothing to say.
fn publish(name: &str, text: &str) -> Result<()> {
    if text.is_empty() {
        return remove(name);
    }
    let dir = SafeDir::create(Area::Hosts)?;
    if dir.read(name, text.len() as u64 + 1)?.as_deref() == Some(text) {
        return Ok(());
    }
    dir.replace(name, text.as_bytes(), 0o644)
}

/// Removes the file `name`, if there is one. The common case, a network
/// without names, costs a warm start one system call: only root makes
/// entries under /run/kvm-net, so "not there" cannot be faked; whatever is
/// there is opened and verified.
fn remove(name: &str) -> Result<()> {
    let path = Path::new(RUN_DIR).join(Area::Hosts.name()).join(name);
    if matches!(nix::sys::stat::lstat(&path), Err(nix::errno::Errno::ENOENT)) {
        return Ok(());
    }
    match SafeDir::existing(Area::Hosts)? {
        Some(dir) => dir.remove(name),
        None => Ok(()),
    }
}

/// Removes the bridge's names (its network is going down).
pub fn forget(bridge: &IfName) -> Result<()> {
    remove(&file(bridge, "hosts")?)?;
    remove(&file(bridge, "leases")?)
}

/// Whether anything of the bridge's names is left.
pub fn leftover(bridge: &IfName) -> Result<bool> {
    let Some(dir) = SafeDir::existing(Area::Hosts)? else { return Ok(false) };
    Ok(dir.read(&file(bridge, "hosts")?, 1)?.is_some() || dir.read(&file(bridge, "leases")?, 1)?.is_some())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::config::model::{Dhcp, StaticLease};

    #[test]
    fn hosts_names_are_plain_and_in_the_domain_and_nothing_else_is_said() {
        let mut network = Network::classic();
        let mut dhcp = Dhcp::defaults_for(network.ipv4.expect("an address"));
        dhcp.hosts.push(StaticLease {
            mac: "52:54:00:00:00:10".into(),
            ip: Ipv4Addr::new(192, 168, 100, 10),
            ipv6: "fd00::10".parse().ok(),
            name: Some("web1".into()),
            tap: None,
        });
        dhcp.hosts.push(StaticLease {
            mac: "52:54:00:00:00:11".into(),
            ip: Ipv4Addr::new(192, 168, 100, 11),
            ipv6: None,
            name: None,
            tap: None,
        });
        dhcp.domain = Some("vm.internal".into());
        network.dhcp = Some(dhcp);
        assert_eq!(
            config_text(&network),
            "192.168.100.10 web1\n192.168.100.10 web1.vm.internal\nfd00::10 web1\nfd00::10 web1.vm.internal\n"
        );
        assert!(!config_text(&network).contains("52:54"), "no MAC");
    }
}
