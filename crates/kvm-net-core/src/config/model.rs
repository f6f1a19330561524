//! The config's data: networks and what they say, as validated. A leaf
//! every layer may use (the kernel and config model are the bottom of the
//! core, docs/architecture.md): it imports nothing of kvm-net's but names
//! and ports. Reading, validating and choosing live in the [`crate::config`]
//! facade above.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::ifname::IfName;
use crate::ports::{PortRange, Protocol};

/// The network used when nothing else picks one.
pub const DEFAULT_NETWORK: &str = "default";
/// The bridge name of `/etc/qemu-ifup` and `qemu-natup`.
pub const DEFAULT_BRIDGE: &str = "br0";
/// The bridge address of `qemu-natup`, host part included.
pub const DEFAULT_ADDRESS: &str = "192.168.100.1/24";

/// How a network reaches the world, and so which helpers serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Guests reach out through the host's address (masquerade).
    Nat,
    /// Guests reach out with their own addresses; upstream routes the subnet back.
    Routed,
    /// Guests reach each other (and the host, if the bridge has an address); nothing is forwarded.
    Isolated,
    /// A bridge the system owns, usually holding the host's NIC; kvm-net only attaches taps.
    Bridged,
    /// An Open vSwitch bridge (OVN's `br-int`, say) the system owns; kvm-net
    /// only adds and removes taps as its ports, through OVSDB.
    Ovs,
}

impl Mode {
    /// Whether kvm-net creates and removes this network's bridge (kvm-natup/kvm-natdown).
    pub fn is_managed(self) -> bool {
        matches!(self, Mode::Nat | Mode::Routed | Mode::Isolated)
    }

    /// Whether guests' traffic is forwarded past the bridge.
    pub fn forwards(self) -> bool {
        matches!(self, Mode::Nat | Mode::Routed)
    }

    /// Reads `nat`, `routed`, `isolated`, `bridged` or `ovs`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "nat" => Some(Mode::Nat),
            "routed" => Some(Mode::Routed),
            "isolated" => Some(Mode::Isolated),
            "bridged" => Some(Mode::Bridged),
            "ovs" => Some(Mode::Ovs),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Nat => "nat",
            Mode::Routed => "routed",
            Mode::Isolated => "isolated",
            Mode::Bridged => "bridged",
            Mode::Ovs => "ovs",
        })
    }
}

/// One network, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Its name in the config file.
    pub name: String,
    /// How it reaches the world.
    pub mode: Mode,
    /// The bridge its taps are attached to.
    pub bridge: IfName,
    /// The host's IPv4 address on the bridge, with the subnet's prefix.
    pub ipv4: Option<Ipv4Network>,
    /// The host's IPv6 address on the bridge, with the subnet's prefix.
    pub ipv6: Option<Ipv6Network>,
    /// How guests configure IPv6 (`ipv6_autoconfig`): router advertisements
    /// and DHCPv6 from the network's dnsmasq. `Off` without `ipv6`.
    pub ipv6_autoconfig: Autoconfig,
    /// MTU for a bridge kvm-net creates (taps always take the bridge's).
    pub mtu: Option<u32>,
    /// Tap-name patterns that pick this network (`lab-*`).
    pub taps: Vec<glob::Pattern>,
    /// DHCP (and DNS) for guests, served by a dnsmasq of kvm-net's; `None`: off.
    pub dhcp: Option<Dhcp>,
    /// Who besides root may use it through a setuid or capability helper.
    pub grants: Grants,
    /// Which firewall backend writes its rules (the file's `firewall`).
    pub firewall: Choice,
    /// How many taps the bridge helper makes on it for one user other than
    /// root, so that no user can fill the bridge (`max_taps_per_user`).
    pub max_taps_per_user: u32,
    /// Whether its guests may not reach each other (`isolate_guests`): every
    /// port kvm-net attaches is isolated, and routing between them through
    /// the host is dropped.
    pub isolate_guests: bool,
    /// Connections to the host's own addresses forwarded to guests (nat and
    /// routed networks).
    pub forwards: Vec<Forward>,
    /// Whether guests may send as another guest (`guest_spoofing`).
    pub guest_spoofing: Spoofing,
    /// Each guest port's rate limits (`bandwidth`), unless an override matches it.
    pub bandwidth: Bandwidth,
    /// Limits for the taps whose names match (`bandwidth_overrides`): the first match wins.
    pub bandwidth_overrides: Vec<BandwidthOverride>,
    /// How taps join the network's Open vSwitch bridge (`mode = "ovs"` only).
    pub ovs: Option<OvsPorts>,
    /// Whether `kvm-net up --autostart` brings it up at boot, and it stays
    /// up after its last VM (`autostart`; managed networks only).
    pub autostart: bool,
}

/// How a network's guests configure IPv6 (`ipv6_autoconfig`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Autoconfig {
    /// Router advertisements with the prefix to build addresses from (SLAAC,
    /// a /64 only) and stateless DHCPv6 for DNS: the default for a /64.
    Slaac,
    /// Router advertisements that send guests to DHCPv6 for addresses,
    /// leased from this range (`dhcp.ipv6_range`).
    Dhcpv6 {
        /// First and last address leased.
        range: (Ipv6Addr, Ipv6Addr),
    },
    /// No router advertisements, no DHCPv6: addresses set by hand (the
    /// default for any prefix but a /64, and without `ipv6`).
    #[default]
    Off,
}

impl Autoconfig {
    /// `slaac`, `dhcpv6` or `off`, as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Autoconfig::Slaac => "slaac",
            Autoconfig::Dhcpv6 { .. } => "dhcpv6",
            Autoconfig::Off => "off",
        }
    }

    /// Whether the network's dnsmasq sends router advertisements.
    pub fn advertises(self) -> bool {
        self != Autoconfig::Off
    }

    /// The default DHCPv6 range of `subnet`: its upper half, short of the
    /// 128 highest addresses (RFC 2526's subnet anycast addresses) where
    /// there are that many.
    pub fn default_range(subnet: Ipv6Network) -> (Ipv6Addr, Ipv6Addr) {
        let host_bits = 128 - u32::from(subnet.prefix());
        let first = u128::from(subnet.network());
        let size = 1u128.checked_shl(host_bits).unwrap_or(0).wrapping_sub(1);
        let half = (size / 2).wrapping_add(1);
        let last = if host_bits > 8 { first + size - 128 } else { first + size };
        (Ipv6Addr::from(first + half), Ipv6Addr::from(last))
    }
}

/// A rate in bits per second, as `tc` reads `50mbit` (1000-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(pub u64);

impl Rate {
    /// The least rate a limit may have: `8kbit`.
    pub const MIN: Rate = Rate(8_000);

    /// Reads an integer with `kbit`, `mbit` or `gbit`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
        let factor: u64 = match unit {
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            _ => return None,
        };
        if digits.is_empty() || digits.len() > 12 {
            return None;
        }
        digits.parse::<u64>().ok()?.checked_mul(factor).map(Rate)
    }

    /// Bytes per second, as the kernel's shapers count.
    pub fn bytes_per_second(self) -> u64 {
        self.0 / 8
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            bits if bits % 1_000_000_000 == 0 => write!(f, "{}gbit", bits / 1_000_000_000),
            bits if bits % 1_000_000 == 0 => write!(f, "{}mbit", bits / 1_000_000),
            bits if bits % 1_000 == 0 => write!(f, "{}kbit", bits / 1_000),
            bits => write!(f, "{bits}bit"),
        }
    }
}

/// A guest port's limits, one per direction; `None`: unlimited that way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bandwidth {
    /// What the guest receives (the tap's transmit side).
    pub to_guest: Option<Rate>,
    /// What the guest sends (the tap's receive side).
    pub from_guest: Option<Rate>,
}

/// `to the guest 50mbit, from the guest unlimited`, as traces and reports say it.
impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |rate: Option<Rate>| rate.map_or_else(|| "unlimited".to_owned(), |rate| rate.to_string());
        write!(f, "to the guest {}, from the guest {}", show(self.to_guest), show(self.from_guest))
    }
}

impl Bandwidth {
    /// Whether it limits anything.
    pub fn is_limited(&self) -> bool {
        self.to_guest.is_some() || self.from_guest.is_some()
    }
}

/// Limits for some taps of a network (`[[network.NAME.bandwidth_overrides]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct BandwidthOverride {
    /// The tap-name patterns it is for.
    pub taps: Vec<glob::Pattern>,
    /// Their limits (a direction left out: unlimited).
    pub limits: Bandwidth,
}

impl Network {
    /// The limits of the port `tap`: the first override whose pattern
    /// matches it, else the network's.
    pub fn limits_for(&self, tap: &str) -> Bandwidth {
        self.bandwidth_overrides
            .iter()
            .find(|o| o.taps.iter().any(|pattern| pattern.matches(tap)))
            .map_or(self.bandwidth, |o| o.limits)
    }

    /// Whether any port of the network may be limited.
    pub fn has_limits(&self) -> bool {
        self.bandwidth.is_limited() || self.bandwidth_overrides.iter().any(|o| o.limits.is_limited())
    }
}

/// How a network's taps become ports of its Open vSwitch bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsPorts {
    /// The template of each port's `external_ids:iface-id` (`{tap}`: the tap's name).
    pub iface_id: String,
    /// The OVSDB server's Unix socket.
    pub ovsdb: PathBuf,
    /// The port's access VLAN tag, if any.
    pub vlan: Option<u16>,
}

/// `external_ids:iface-id` by default: the tap's name, as libvirt and OVN's
/// own scripts name their ports.
pub const DEFAULT_IFACE_ID: &str = "{tap}";
/// Open vSwitch's database socket where its packages put it.
pub const DEFAULT_OVSDB: &str = "unix:/run/openvswitch/db.sock";

impl OvsPorts {
    /// The iface-id for `tap`.
    pub fn iface_id_of(&self, tap: &str) -> String {
        self.iface_id.replace("{tap}", tap)
    }
}

/// What a guest may send as (`guest_spoofing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spoofing {
    /// Anything, as on a plain bridge (the default).
    #[default]
    Allow,
    /// Only its first MAC, the address DHCP leased it, and no server
    /// replies or router advertisements (see
    /// docs/firewall.md).
    Deny,
}

impl Spoofing {
    /// Reads `allow` or `deny`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Spoofing::Allow),
            "deny" => Some(Spoofing::Deny),
            _ => None,
        }
    }

    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Spoofing::Allow => "allow",
            Spoofing::Deny => "deny",
        }
    }
}

/// A port forward: connections to the host's own addresses (or to one of
/// them) on `host_ports` go to a guest, port for port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Forward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host's port, or ports.
    pub host_ports: PortRange,
    /// The guest's address.
    pub guest: Ipv4Addr,
    /// The guest's IPv6 address, where `guest` names a `dhcp.hosts` entry
    /// with one: the forward listens on the host's IPv6 addresses too.
    pub guest6: Option<Ipv6Addr>,
    /// The `dhcp.hosts` name it was given by, if any.
    pub guest_name: Option<String>,
    /// The guest's ports, as many as `host_ports`, mapped one to one.
    pub guest_ports: PortRange,
    /// Only connections to this address of the host; `None`: to any of them.
    pub host_address: Option<Ipv4Addr>,
}

impl Forward {
    /// Whether a connection could match both.
    pub fn overlaps(&self, other: &Forward) -> bool {
        let addresses = match (self.host_address, other.host_address) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.protocol == other.protocol && addresses && self.host_ports.overlaps(&other.host_ports)
    }

    /// `tcp 2222`, `udp 10.0.0.5:8000-8010`: what it listens for.
    pub fn listens(&self) -> String {
        match self.host_address {
            Some(address) => format!("{} {address}:{}", self.protocol, self.host_ports),
            None => format!("{} {}", self.protocol, self.host_ports),
        }
    }

    /// `web1 (192.168.100.10):22`, or `192.168.100.10:22`: where it goes.
    pub fn target(&self) -> String {
        match &self.guest_name {
            Some(name) => format!("{name} ({}):{}", self.guest, self.guest_ports),
            None => format!("{}:{}", self.guest, self.guest_ports),
        }
    }
}

/// The default of `max_taps_per_user`: a few VMs with several NICs each,
/// far below the kernel's 1023 ports per bridge.
pub const DEFAULT_MAX_TAPS_PER_USER: u32 = 32;

/// What the network's dnsmasq hands out and answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp {
    /// First and last address leased dynamically.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Lease time as dnsmasq reads it (`1h`, `45m`, `infinite`).
    pub lease_time: String,
    /// Whether dnsmasq also answers DNS on the bridge (and says so in its offers).
    pub dns: bool,
    /// Fixed addresses by MAC.
    pub hosts: Vec<StaticLease>,
    /// Extra names dnsmasq answers for.
    pub records: Vec<HostRecord>,
    /// The guests' DNS domain (`domain`): leases carry it, and the network's
    /// DNS answers in it itself, never asking upstream.
    pub domain: Option<String>,
    /// The resolvers other queries go to (`upstream_dns`); empty: the host's
    /// `/etc/resolv.conf`.
    pub upstream_dns: Vec<IpAddr>,
}

impl Dhcp {
    /// The defaults for a subnet: the upper half leased for an hour, leaving
    /// the lower half to guests with static addresses; DNS on.
    pub fn defaults_for(address: Ipv4Network) -> Self {
        let network = u32::from(address.network());
        let broadcast = u32::from(address.broadcast());
        let half = (broadcast - network).div_ceil(2);
        Dhcp {
            range: (Ipv4Addr::from(network + half.max(2)), Ipv4Addr::from(broadcast - 1)),
            lease_time: "1h".to_owned(),
            dns: true,
            hosts: Vec::new(),
            records: Vec::new(),
            domain: None,
            upstream_dns: Vec::new(),
        }
    }
}

/// A fixed address for one MAC, as `dhcp-host=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticLease {
    /// The guest NIC's MAC, lower case.
    pub mac: String,
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// Its IPv6 address: its DHCPv6 lease (`ipv6_autoconfig = "dhcpv6"`),
    /// and its AAAA record in the network's DNS either way.
    pub ipv6: Option<Ipv6Addr>,
    /// Host name handed to the guest and resolvable through the bridge's DNS.
    pub name: Option<String>,
    /// The taps that alone may use this MAC and take this address (`tap`,
    /// a pattern): a reservation, so that no other guest can claim a
    /// forward's target while it is stopped.
    pub tap: Option<glob::Pattern>,
}

/// An extra name in the bridge's DNS, as `host-record=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    /// Fully qualified or short name.
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
}

impl Network {
    /// The classic scripts' network: NAT on `br0` with `192.168.100.1/24`.
    pub fn classic() -> Self {
        Network {
            name: DEFAULT_NETWORK.to_owned(),
            mode: Mode::Nat,
            bridge: IfName::builtin(DEFAULT_BRIDGE),
            ipv4: DEFAULT_ADDRESS.parse().ok(),
            ipv6: None,
            ipv6_autoconfig: Autoconfig::Off,
            mtu: None,
            taps: Vec::new(),
            dhcp: None,
            grants: Grants::default(),
            firewall: Choice::Auto,
            max_taps_per_user: DEFAULT_MAX_TAPS_PER_USER,
            isolate_guests: false,
            forwards: Vec::new(),
            guest_spoofing: Spoofing::Allow,
            bandwidth: Bandwidth::default(),
            bandwidth_overrides: Vec::new(),
            ovs: None,
            autostart: false,
        }
    }

    /// The host's addresses on the bridge, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpNetwork> {
        self.ipv4.map(IpNetwork::V4).into_iter().chain(self.ipv6.map(IpNetwork::V6))
    }

    /// The subnets guests live in, IPv4 first.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> {
        self.subnet4().map(IpNetwork::V4).into_iter().chain(self.subnet6().map(IpNetwork::V6))
    }

    /// The IPv4 subnet guests live in: what firewall rules match.
    pub fn subnet4(&self) -> Option<Ipv4Network> {
        self.ipv4.and_then(|a| Ipv4Network::new(a.network(), a.prefix()).ok())
    }

    /// The IPv6 subnet guests live in.
    pub fn subnet6(&self) -> Option<Ipv6Network> {
        self.ipv6.and_then(|a| Ipv6Network::new(a.network(), a.prefix()).ok())
    }
}

/// Where the networks came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// No config file: the classic single network.
    Builtin,
    /// A config file.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("the built-in default (no config file)"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Every network the host knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file they were read from, if any.
    pub source: Source,
    /// Which firewall backend writes the networks' rules.
    pub firewall: Choice,
    /// The networks, in file order.
    pub networks: Vec<Network>,
}

/// Which users and groups a network is granted to, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `allow_users`.
    pub users: Vec<String>,
    /// `allow_groups`.
    pub groups: Vec<String>,
}

/// The two ways kvm-net can write rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// kvm-net's own nf_tables tables, over netlink.
    Nftables,
    /// Chains of its own in iptables' tables, through `iptables-restore`.
    Iptables,
}

impl Backend {
    /// `nftables` or `iptables`, as the config and status say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the config asks for (`firewall = "auto" | "nftables" | "iptables"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Choice {
    /// nftables where the kernel has nf_tables and no legacy iptables tables
    /// are in use; iptables otherwise.
    #[default]
    Auto,
    /// This backend, whatever the host.
    Only(Backend),
}

impl Choice {
    /// Reads `auto`, `nftables` or `iptables`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Choice::Auto),
            "nftables" => Some(Choice::Only(Backend::Nftables)),
            "iptables" => Some(Choice::Only(Backend::Iptables)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_integers_with_a_tc_unit_and_read_back() {
        for (text, bits) in
            [("8kbit", 8_000), ("50mbit", 50_000_000), ("1gbit", 1_000_000_000), ("12000kbit", 12_000_000)]
        {
            let rate = Rate::parse(text).expect(text);
            assert_eq!(rate.0, bits, "{text}");
            assert_eq!(Rate::parse(&rate.to_string()), Some(rate), "{text} reads back");
        }
        assert_eq!(Rate(12_000_000).to_string(), "12mbit");
        for bad in ["fast", "5", "1.5mbit", "50mbps", "-5mbit", "+5mbit", "mbit", "5 mbit", "99999999999999gbit"] {
            assert_eq!(Rate::parse(bad), None, "{bad}");
        }
        assert!(Rate::parse("0kbit").is_some_and(|rate| rate < Rate::MIN));
    }

    #[test]
    fn the_first_matching_override_wins_and_a_direction_it_leaves_out_is_unlimited() {
        let limits =
            |to: Option<u64>, from: Option<u64>| Bandwidth { to_guest: to.map(Rate), from_guest: from.map(Rate) };
        let network = Network {
            bandwidth: limits(Some(50_000_000), Some(20_000_000)),
            bandwidth_overrides: vec![
                BandwidthOverride {
                    taps: vec![glob::Pattern::new("db-*").expect("p")],
                    limits: limits(Some(1_000_000_000), None),
                },
                BandwidthOverride { taps: vec![glob::Pattern::new("d*").expect("p")], limits: limits(None, None) },
            ],
            ..Network::classic()
        };
        assert_eq!(network.limits_for("db-1"), limits(Some(1_000_000_000), None));
        assert_eq!(network.limits_for("dev0"), limits(None, None));
        assert_eq!(network.limits_for("vm0"), network.bandwidth);
        assert!(network.has_limits() && !Network::classic().has_limits());
    }
}
