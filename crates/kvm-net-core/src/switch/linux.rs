//! A Linux bridge as a network's switch: ports are links whose master is
//! the bridge (`IFLA_MASTER`), attached with the bridge's MTU and, with
//! `isolate_guests`, isolated before they come up. Also the marks kvm-net
//! puts on a bridge it creates for a managed network (its MAC and alias),
//! and what they say: kvm-net's to delete, kept up, abandoned.

use anyhow::Result;

use super::{made_tap_mac, Departures, Kind, PortReport, Switch, Tap};
use crate::config::model::{Mode, Network};
use crate::error::Error;
use crate::ifname::IfName;
use crate::kernel::netlink::{has_port_besides, Link, Netlink};
use crate::trace::trace;

/// The alias kvm-net puts on bridges it creates, for people reading `ip -d
/// link`. The mark that makes a bridge kvm-net's own to delete is its MAC
/// ([`bridge_mac`]), which is set in the very request that creates it: the
/// alias can only follow in a second request, and a crash in between must not
/// leave a bridge that no one removes.
pub const MANAGED_ALIAS: &str = "kvm-net managed bridge";
/// The alias of a managed bridge that `kvm-net up` keeps up without VMs.
pub const KEPT_UP_ALIAS: &str = "kvm-net managed bridge, kept up";

/// A stable, locally administered MAC for a bridge kvm-net creates: a bridge
/// without one takes the lowest MAC of its ports, which changes as VMs come
/// and go and makes guests' ARP caches stale. It is also kvm-net's mark.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    // FNV-1a: tiny, stable across releases and platforms.
    let hash = bridge.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let [a, b, c, d, e, ..] = hash.to_be_bytes();
    [0x02, a, b, c, d, e]
}

/// The Linux bridge's short name, the prefix of its `kvm-net check` codes.
const KIND: &str = "bridge";

/// The kind of the Linux bridge: managed and bridged networks.
pub struct Linux;

/// [`Linux`], as `switch::with_kind` lists it.
pub const LINUX: Linux = Linux;

impl Kind for Linux {
    fn name(&self) -> &'static str {
        KIND
    }

    fn serves(&self, mode: Mode) -> bool {
        mode.is_managed() || mode == Mode::Bridged
    }

    fn describe(&self, network: &Network) -> String {
        format!("bridge {}", network.bridge)
    }

    fn open(&self, network: &Network, netlink: &mut Netlink, found: Option<Link>) -> Result<Box<dyn Switch>> {
        Ok(Box::new(match found {
            Some(bridge) => LinuxBridge::new(bridge, network.isolate_guests),
            None => LinuxBridge::existing(netlink, network)?,
        }))
    }
}

/// What kvm-net's marks say of a link.
pub trait Marks {
    /// Whether kvm-net created this bridge (and so may delete it): it has
    /// kvm-net's MAC for its name, or (bridges of kvm-net 0.1 that someone
    /// re-addressed) kvm-net's alias.
    fn is_managed(&self) -> bool;

    /// Whether this managed bridge lacks the alias that says so (kvm-net
    /// stopped between creating and naming it).
    fn lacks_alias(&self) -> bool;

    /// Whether `kvm-net up` asked for this bridge to stay without VMs, so that
    /// neither the last VM's downscript nor `kvm-net gc` removes it.
    fn is_kept_up(&self) -> bool;
}

impl Marks for Link {
    fn is_managed(&self) -> bool {
        self.is_bridge()
            && (self.mac == Some(bridge_mac(&self.name))
                || matches!(self.alias.as_deref(), Some(MANAGED_ALIAS | KEPT_UP_ALIAS)))
    }

    fn lacks_alias(&self) -> bool {
        self.is_managed() && !matches!(self.alias.as_deref(), Some(MANAGED_ALIAS | KEPT_UP_ALIAS))
    }

    fn is_kept_up(&self) -> bool {
        self.is_bridge() && self.alias.as_deref() == Some(KEPT_UP_ALIAS)
    }
}

/// Bridges kvm-net created that have no ports and that `kvm-net up` does not
/// keep: what a VM killed without its downscript leaves (`gc` removes them,
/// `check` reports them).
pub fn abandoned_bridges(links: &[Link]) -> impl Iterator<Item = &Link> {
    links.iter().filter(|l| l.is_managed() && !l.is_kept_up() && !links.iter().any(|p| p.controller == Some(l.index)))
}

/// Creates a managed network's bridge, marked as kvm-net's by its MAC in the
/// creating request, then named with kvm-net's alias. `None` if another
/// process created a link of that name first.
pub fn create_managed_bridge(netlink: &mut Netlink, name: &str, mtu: Option<u32>) -> Result<Option<Link>> {
    let Some(bridge) = netlink.create_bridge(name, mtu, &bridge_mac(name))? else { return Ok(None) };
    netlink.set_alias(&bridge, MANAGED_ALIAS)?;
    Ok(Some(Link { alias: Some(MANAGED_ALIAS.to_owned()), ..bridge }))
}

/// A link named `bridge`, if there is one, refusing a link of another kind.
pub fn find_bridge(netlink: &mut Netlink, bridge: &IfName) -> Result<Option<Link>> {
    match netlink.link_by_name(bridge.as_str())? {
        Some(link) if !link.is_bridge() => {
            Err(Error::NotABridge { name: bridge.to_string(), kind: link.kind.unwrap_or_else(|| "device".to_owned()) }
                .into())
        }
        found => Ok(found),
    }
}

/// A Linux bridge, as the kernel has it now.
pub struct LinuxBridge {
    bridge: Link,
    /// Whether its ports are isolated from each other (`isolate_guests`):
    /// each reaches the bridge itself (the gateway, DHCP, DNS) and ports
    /// that are not isolated, never another guest's.
    isolated: bool,
}

impl LinuxBridge {
    /// The bridge a network names; it must exist (kvm-net makes only managed networks' bridges).
    pub fn existing(netlink: &mut Netlink, network: &Network) -> Result<Self> {
        let name = &network.bridge;
        let bridge = find_bridge(netlink, name)?.ok_or_else(|| Error::NoBridge(name.to_string()))?;
        Ok(Self::new(bridge, network.isolate_guests))
    }

    /// A bridge found (or made) already; `isolated`: its ports are isolated.
    pub fn new(bridge: Link, isolated: bool) -> Self {
        Self { bridge, isolated }
    }
}

impl Switch for LinuxBridge {
    fn describe(&self) -> String {
        format!("bridge {}", self.bridge.name)
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn attach(&mut self, netlink: &mut Netlink, port: &Link, tap: Tap) -> Result<()> {
        trace(format_args!("attaching {} to {} (mtu {})", port.name, self.bridge.name, self.bridge.mtu));
        match tap {
            Tap::Qemu => netlink.attach(port, &self.bridge, self.isolated),
            Tap::Made => netlink.attach_with_mac(port, &self.bridge, &made_tap_mac(port), self.isolated),
        }
    }

    fn detach(&mut self, netlink: &mut Netlink, port: &Link) -> Result<()> {
        // `port` may have been looked up before it was attached here.
        netlink.detach_and_down(&Link { controller: Some(self.bridge.index), ..port.clone() })
    }

    fn ports(&mut self, netlink: &mut Netlink) -> Result<Vec<Link>> {
        netlink.ports_of(&self.bridge)
    }

    fn has_ports(&mut self, _netlink: &mut Netlink) -> Result<bool> {
        has_port_besides(&self.bridge, None)
    }

    fn departures(&mut self, _netlink: &mut Netlink) -> Result<Departures> {
        Ok(Departures::Bridge(self.bridge.index))
    }

    fn port_reports(&mut self, netlink: &mut Netlink) -> Result<Vec<PortReport>> {
        Ok(self
            .ports(netlink)?
            .into_iter()
            .map(|port| PortReport { name: port.name, isolated: port.isolated, ..PortReport::default() })
            .collect())
    }

    fn link(&self) -> Option<&Link> {
        Some(&self.bridge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_unicast_locally_administered_and_stable() {
        let mac = bridge_mac("br0");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac, bridge_mac("br0"));
        assert_ne!(mac, bridge_mac("br1"));
    }

    fn link(index: u32, name: &str, controller: Option<u32>) -> Link {
        Link {
            index,
            name: name.to_owned(),
            kind: Some("bridge".to_owned()),
            mtu: 1500,
            controller,
            up: true,
            mac: Some(bridge_mac(name)),
            ..Link::default()
        }
    }

    #[test]
    fn a_bridge_is_kvm_nets_by_its_mac_kept_up_by_its_alias_and_abandoned_without_ports() {
        let ours = link(2, "br0", None);
        let theirs = Link { mac: Some([0x52, 0, 0, 0, 0, 1]), ..link(3, "lan0", None) };
        let kept = Link { alias: Some(KEPT_UP_ALIAS.to_owned()), ..link(4, "br1", None) };
        let busy = link(5, "br2", None);
        let port = Link { kind: Some("tun".to_owned()), mac: None, ..link(6, "tap0", Some(5)) };
        assert!(ours.is_managed() && ours.lacks_alias() && !ours.is_kept_up());
        assert!(!theirs.is_managed());
        assert!(kept.is_managed() && kept.is_kept_up() && !kept.lacks_alias());
        let links = [ours, theirs, kept, busy, port];
        let abandoned: Vec<&str> = abandoned_bridges(&links).map(|l| l.name.as_str()).collect();
        assert_eq!(abandoned, ["br0"]);
    }
}
