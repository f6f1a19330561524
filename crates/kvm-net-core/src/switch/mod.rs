//! Where a network's taps are plugged in: a Linux bridge (one kvm-net made
//! for a managed network, or the system's for a bridged one) or an Open
//! vSwitch bridge. One interface for everything the helpers, the watcher,
//! `status`, `check` and `gc` do with a switch ([`Switch`]), one for what a
//! kind of switch says before one is opened ([`Kind`]), and one factory
//! ([`open`]) that makes every switch: nothing outside this folder knows
//! which kind a network has. A third kind is one more module here and one
//! arm in `with_kind` (docs/architecture.md says what that module implements).
//! What only a managed network has (kvm-net creates and deletes its Linux
//! bridge, with addresses, rules and dnsmasq) is in `ops::network`; the
//! marks on such a bridge are [`linux`]'s.

pub mod linux;
pub mod ovs;
pub mod ovsdb;

use anyhow::Result;

use crate::config::model::{Mode, Network};
use crate::kernel::netlink::{Link, Netlink};

pub use self::linux::LinuxBridge;
pub use self::ovs::OvsBridge;

/// Where a tap came from, which decides what attaching it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// QEMU made it (the tap scripts): only its switch, MTU and state change.
    Qemu,
    /// The bridge helper just made it: its MAC is kvm-net's to choose too
    /// ([`made_tap_mac`]).
    Made,
}

/// What a watcher waits on until a port may have gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Departures {
    /// A link deleted, or a link other than this bridge (index) changing
    /// without being its port: a Linux bridge, whose ports the kernel lists.
    Bridge(u32),
    /// A link deleted, or one of these taps changing without kvm-net's
    /// mark (`alias`): a switch whose ports the kernel does not know.
    Taps {
        /// The taps that are its ports now.
        names: Vec<String>,
        /// The alias kvm-net gives them while they are.
        alias: String,
    },
}

/// One port as reports show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortReport {
    /// The tap's name.
    pub name: String,
    /// Whether it is isolated from the switch's other isolated ports.
    pub isolated: bool,
    /// Its `external_ids:iface-id` (Open vSwitch), if the switch has such.
    pub iface_id: Option<String>,
    /// Whether OVN has installed its flows (Open vSwitch), if the switch says.
    pub ovn_installed: Option<bool>,
    /// What the switch says went wrong with it, if anything (it could not open the tap).
    pub problem: Option<String>,
}

/// One switch a network's taps are ports of.
pub trait Switch {
    /// What it is, for messages (`bridge br0`, `Open vSwitch bridge br-int`).
    fn describe(&self) -> String;

    /// Its kind's short name (`bridge`, `ovs`): the prefix of the codes of
    /// `kvm-net check`'s findings about it.
    fn kind(&self) -> &'static str;

    /// Makes `port` one of its ports and brings it up.
    fn attach(&mut self, netlink: &mut Netlink, port: &Link, tap: Tap) -> Result<()>;

    /// Takes `port` off it and sets it down; a port already gone counts as done.
    fn detach(&mut self, netlink: &mut Netlink, port: &Link) -> Result<()>;

    /// Whether it forwards frames whose checksums a guest left unfinished
    /// (virtio-net checksum offload, through a tap with virtio-net headers)
    /// as they are, so that receivers drop them: Open vSwitch's userspace
    /// datapath (`datapath_type=netdev`) does. The kernel's bridge finishes them.
    fn forwards_unfinished_checksums(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Its ports kvm-net attached, as the kernel has them (a port whose tap
    /// is gone, or is another tap of its name, is not among them).
    fn ports(&mut self, netlink: &mut Netlink) -> Result<Vec<Link>>;

    /// Whether it has any port kvm-net attached ([`Switch::ports`], as cheaply as it can).
    fn has_ports(&mut self, netlink: &mut Netlink) -> Result<bool> {
        Ok(!self.ports(netlink)?.is_empty())
    }

    /// Whether a port whose tap went stays on it until kvm-net removes it
    /// (Open vSwitch keeps its rows; a Linux bridge loses a port with its
    /// link). Such a switch gets a watcher from its first VM on, and its
    /// ports are added and removed under the bridge's lock.
    fn keeps_departed_ports(&self) -> bool {
        false
    }

    /// The ports kvm-net made whose tap is gone, or is another tap of their
    /// name: stale, to be removed ([`Switch::forget`]).
    fn stale_ports(&mut self, _netlink: &mut Netlink) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Removes the stale port `port` without waiting for the switch to apply it.
    fn forget(&mut self, _port: &str) -> Result<()> {
        Ok(())
    }

    /// What a watcher of its ports waits on.
    fn departures(&mut self, netlink: &mut Netlink) -> Result<Departures>;

    /// Each of its ports as reports show it.
    fn port_reports(&mut self, netlink: &mut Netlink) -> Result<Vec<PortReport>>;

    /// Of `links`, the taps that carry kvm-net's mark for this switch but
    /// are no port of it (someone took the port away).
    fn lost_taps(&mut self, _netlink: &mut Netlink, _links: &[Link]) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Its own link in the kernel, if it has one (a Linux bridge): reports
    /// read its addresses and marks.
    fn link(&self) -> Option<&Link> {
        None
    }
}

/// A kind of switch: what is known of a network's switch before it is
/// opened, and how to open it. One value per kind, listed in `with_kind`.
pub trait Kind {
    /// Its short name, the one its switches give ([`Switch::kind`]).
    fn name(&self) -> &'static str;

    /// Whether networks of `mode` have this kind of switch.
    fn serves(&self, mode: Mode) -> bool;

    /// What `network`'s switch is called in messages before it is opened.
    fn describe(&self, network: &Network) -> String;

    /// Opens `network`'s switch. `found` is the bridge a managed network's
    /// bring-up found or made; without it, the switch must exist already.
    fn open(&self, network: &Network, netlink: &mut Netlink, found: Option<Link>) -> Result<Box<dyn Switch>>;

    /// Where reports find the switch beside the kernel (a daemon's database
    /// socket), if it is not in the kernel alone.
    fn database(&self, _network: &Network) -> Option<String> {
        None
    }

    /// Why a helper without root's ids cannot serve it (a socket of
    /// root's, [`crate::error::NEEDS_ROOT_OVS`]), if it cannot.
    fn needs_root(&self) -> Option<&'static str> {
        None
    }

    /// Before a tap named `tap` joins a switch of another kind: takes
    /// kvm-net's stale ports of that name away from the switches of
    /// `networks` (all of this kind), for a kind that keeps ports of
    /// departed taps and takes any new link of a port's name.
    fn release_stale_named(&self, _networks: &[&Network], _tap: &str) -> Result<()> {
        Ok(())
    }
}

/// `$body` with `$kind` bound to the kind of switch that serves `$mode`:
/// the list of kinds, the one place that names them. Static, not a table
/// of `dyn Kind`, so that each program links only the methods it calls
/// (kvm-natdown, which never opens a switch, no OVSDB client).
macro_rules! with_kind {
    ($mode:expr, $kind:ident => $body:expr) => {
        match $mode {
            mode if ovs::OVS.serves(mode) => {
                let $kind = &ovs::OVS;
                $body
            }
            _ => {
                let $kind = &linux::LINUX;
                $body
            }
        }
    };
}

/// The switch of `network`, the one way every switch is made. `found` is
/// the bridge a managed network's bring-up found or made; without it, the
/// switch must exist already (bridged and ovs networks are the system's).
pub fn open(network: &Network, netlink: &mut Netlink, found: Option<Link>) -> Result<Box<dyn Switch>> {
    with_kind!(network.mode, kind => kind.open(network, netlink, found))
}

/// The short name of `network`'s kind of switch ([`Kind::name`]).
pub fn kind_of(network: &Network) -> &'static str {
    with_kind!(network.mode, kind => kind.name())
}

/// What `network`'s switch is called in messages before it is opened.
pub fn describe(network: &Network) -> String {
    with_kind!(network.mode, kind => kind.describe(network))
}

/// Where reports find `network`'s switch beside the kernel (Open vSwitch's
/// database socket), if it is not in the kernel alone.
pub fn database_of(network: &Network) -> Option<String> {
    with_kind!(network.mode, kind => kind.database(network))
}

/// Why a helper without root's ids cannot serve `network`'s switch, if it cannot.
pub fn needs_root(network: &Network) -> Option<&'static str> {
    with_kind!(network.mode, kind => kind.needs_root())
}

/// The words before the network's name in the alias of a tap that a
/// switch of kind `kind` marks as its port (`kvm-net port of ovs network `).
fn port_alias_prefix(kind: &str) -> String {
    format!("kvm-net port of {kind} network ")
}

/// The alias a switch of kind `kind` that marks its taps (one whose ports
/// the kernel does not know) gives a tap it made a port of `network`.
pub fn port_alias(kind: &str, network: &str) -> String {
    format!("{}{network}", port_alias_prefix(kind))
}

/// The network a tap's mark names ([`port_alias`]), for a switch that
/// marks its taps: what `kvm-ifdown` detaches it from. The network's own
/// kind must be the mark's (`kind_of`).
pub fn network_marked_on(tap: &Link) -> Option<(&str, &str)> {
    let rest = tap.alias.as_deref()?.strip_prefix("kvm-net port of ")?;
    rest.split_once(" network ").filter(|(kind, network)| !kind.contains(' ') && !network.is_empty())
}

/// Before kvm-net attaches `tap` to `network`'s switch: takes any stale
/// port of kvm-net's of that name away from the switches of the other
/// networks in `all` that keep ports of departed taps (Open vSwitch, whose
/// daemon takes any link of a row's name), so that the tap joins no
/// network it is not attached to. A kind sees to its own names as it attaches.
pub fn release_stale_named(all: &[Network], network: &Network, tap: &str) -> Result<()> {
    let own = kind_of(network);
    let others: Vec<&Network> = all.iter().filter(|n| n.name != network.name && kind_of(n) != own).collect();
    let mut done: Vec<&str> = Vec::new();
    for first in &others {
        let kind = kind_of(first);
        if done.contains(&kind) {
            continue;
        }
        done.push(kind);
        let same: Vec<&Network> = others.iter().copied().filter(|n| kind_of(n) == kind).collect();
        with_kind!(first.mode, switch => switch.release_stale_named(&same, tap))?;
    }
    Ok(())
}

/// The MAC a tap the bridge helper made gets: its own, with a first byte of
/// 0xFE, so that a Linux bridge that takes the lowest of its ports'
/// addresses never takes a VM's.
pub fn made_tap_mac(port: &Link) -> [u8; 6] {
    let mut mac = port.mac.unwrap_or_else(|| linux::bridge_mac(&port.name));
    mac[0] = 0xfe;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A switch that implements only what the trait requires.
    struct Plain(Vec<Link>);

    impl Switch for Plain {
        fn describe(&self) -> String {
            "plain".to_owned()
        }
        fn kind(&self) -> &'static str {
            "plain"
        }
        fn attach(&mut self, _: &mut Netlink, port: &Link, _: Tap) -> Result<()> {
            self.0.push(port.clone());
            Ok(())
        }
        fn detach(&mut self, _: &mut Netlink, port: &Link) -> Result<()> {
            self.0.retain(|p| p.index != port.index);
            Ok(())
        }
        fn ports(&mut self, _: &mut Netlink) -> Result<Vec<Link>> {
            Ok(self.0.clone())
        }
        fn departures(&mut self, _: &mut Netlink) -> Result<Departures> {
            Ok(Departures::Bridge(0))
        }
        fn port_reports(&mut self, _: &mut Netlink) -> Result<Vec<PortReport>> {
            Ok(self.0.iter().map(|p| PortReport { name: p.name.clone(), ..PortReport::default() }).collect())
        }
    }

    fn tap(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.to_owned(),
            kind: Some("tun".to_owned()),
            mtu: 1500,
            mac: Some([0x52, 0x54, 0, 0, 0, 1]),
            ..Link::default()
        }
    }

    #[test]
    fn a_switch_that_loses_ports_with_their_links_needs_no_watcher_and_has_nothing_stale() {
        let mut netlink = Netlink::connect().expect("a netlink socket");
        let mut plain: Box<dyn Switch> = Box::new(Plain(Vec::new()));
        assert!(!plain.keeps_departed_ports());
        assert!(!plain.has_ports(&mut netlink).expect("ports"));
        plain.attach(&mut netlink, &tap(7, "t0"), Tap::Qemu).expect("attach");
        assert!(plain.has_ports(&mut netlink).expect("ports"));
        assert!(plain.stale_ports(&mut netlink).expect("stale").is_empty());
        assert!(plain.lost_taps(&mut netlink, &[tap(8, "t1")]).expect("lost").is_empty());
        assert!(plain.link().is_none() && !plain.forwards_unfinished_checksums().expect("checksums"));
        plain.detach(&mut netlink, &tap(7, "t0")).expect("detach");
        assert!(!plain.has_ports(&mut netlink).expect("ports"));
    }

    #[test]
    fn a_made_tap_never_gets_a_mac_a_bridge_would_take() {
        let made = made_tap_mac(&tap(3, "kvmtap0"));
        assert_eq!(made, [0xfe, 0x54, 0, 0, 0, 1]);
        let without = Link { mac: None, ..tap(4, "kvmtap1") };
        assert_eq!(made_tap_mac(&without)[0], 0xfe);
    }

    #[test]
    fn every_mode_has_one_kind_of_switch() {
        let kinds: [&dyn Kind; 2] = [&ovs::OVS, &linux::LINUX];
        for mode in [Mode::Nat, Mode::Routed, Mode::Isolated, Mode::Bridged, Mode::Ovs] {
            let serving: Vec<&str> = kinds.iter().filter(|kind| kind.serves(mode)).map(|kind| kind.name()).collect();
            assert_eq!(serving.len(), 1, "{mode}: {serving:?}");
            assert_eq!(with_kind!(mode, kind => kind.name()), serving[0], "{mode}");
        }
    }

    #[test]
    fn a_tap_marked_as_a_port_names_its_switchs_kind_and_network() {
        let marked = Link { alias: Some(port_alias("ovs", "lab")), ..tap(5, "t5") };
        assert_eq!(network_marked_on(&marked), Some(("ovs", "lab")));
        let bridge_alias = Link { alias: Some(linux::MANAGED_ALIAS.to_owned()), ..tap(6, "t6") };
        assert_eq!(network_marked_on(&bridge_alias), None);
        assert_eq!(network_marked_on(&tap(7, "t7")), None);
        let empty = Link { alias: Some(port_alias("ovs", "")), ..tap(8, "t8") };
        assert_eq!(network_marked_on(&empty), None);
    }

    #[test]
    fn a_networks_switch_is_described_before_it_is_opened() {
        let network = Network::classic();
        assert_eq!(describe(&network), "bridge br0");
        assert_eq!(database_of(&network), None);
        assert_eq!(needs_root(&network), None);
        let ovs = Network {
            mode: Mode::Ovs,
            ovs: Some(crate::config::model::OvsPorts {
                iface_id: "{tap}".to_owned(),
                ovsdb: "/run/openvswitch/db.sock".into(),
                vlan: None,
            }),
            ..Network::classic()
        };
        assert_eq!(describe(&ovs), "Open vSwitch bridge br0");
        assert_eq!(database_of(&ovs).as_deref(), Some("/run/openvswitch/db.sock"));
        assert_eq!(needs_root(&ovs), Some(crate::error::NEEDS_ROOT_OVS));
    }
}
