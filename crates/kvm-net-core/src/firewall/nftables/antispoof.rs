//! The guest filter, in nf_tables' bridge family (`table bridge kvm_net`),
//! whichever backend writes the network's other rules. One base chain at
//! bridge prerouting, priority -300, sees every frame a port sends before
//! the bridge learns its source (a dropped frame never moves the forwarding
//! database), bridged or bound for the host alike, with or without
//! br_netfilter. It dispatches by port name (`iifname vmap @ports`: only
//! ports kvm-net attached) to the network's chain `spoof-BRIDGE`.
//!
//! With `guest_spoofing = "deny"` that chain
//!
//! - locks each port to the first MAC it sends from (a set filled from the
//!   packet path: no daemon), unless another port holds that MAC already,
//!   or the MAC is a `dhcp.hosts` reservation whose `tap` pattern the port's
//!   name does not match;
//! - lets DHCP through only when its client hardware address (`chaddr`) is
//!   the port's own MAC: dnsmasq keys its leases by it (client ids are
//!   ignored: `dhcp-ignore-clid`), so no guest can take, renew, release or
//!   decline another's lease, and each port holds at most one IPv4 lease;
//! - lets IPv4 and ARP through only from the address the network's DHCP
//!   server leased to that MAC on that port (`bound-BRIDGE`, filled by the
//!   lease hook, [`crate::ops::lease_hook`]), plus what a client needs before it has a
//!   lease (DHCP from 0.0.0.0, RFC 5227 ARP probes);
//! - drops DHCP and DHCPv6 server replies, router advertisements and
//!   redirects from guests, and every other kind of frame but IPv6 (link-local
//!   and neighbour discovery keep working) and RARP (QEMU's announcement after
//!   a migration).
//!
//! Without "deny", a network with reservations gets a chain that only keeps
//! DHCP for a reserved MAC to the taps its pattern matches: the reservation
//! still decides which guest gets the lease.
//!
//! A port's elements go when it is detached, when it is seen gone (the
//! watcher, `kvm-net gc`, the next VM start), and before a port of the same
//! name is admitted (tap names are reused). The bindings in force are
//! recorded by kvm-net ([`super::bindings`]) so that a filter made anew
//! restores exactly them.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, Context, Result};
use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, Expressions, Hook, InetHookNumber, ListAttribute, Lookup, MetaKey,
    NfTablesMessage, Operator, Register, RuleAttribute, RuleMessage, SetAttribute, SetDescription, SetElementAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage, Verdict,
};
use netlink_packet_netfilter::NetfilterProtoFamily;

use super::antispoof6::{self, Scope, Sets6, HOLD_MS};
use super::bindings;
use super::numbers::*;
use super::render::{
    cmp, comment, expression, meta, payload_into, raw, set_verdict, u32_attribute, verdict, Expression, LINK_HEADER,
    NETWORK_HEADER, NF_ACCEPT, NF_DROP, TRANSPORT_HEADER,
};
use super::socket::{with_nft, Change, Committed, Nft, Owned};
use super::{key_in_host_order, with_retries, TABLE};
use crate::config::model::{Autoconfig, Network, Spoofing};
use crate::ifname::IfName;
use crate::kernel::wire::{self, NLM_F_APPEND, NLM_F_CREATE};
use crate::mac;
pub use crate::mac::Mac;
use crate::trace::trace;

/// nf_tables' bridge family.
const BRIDGE: NetfilterProtoFamily = NetfilterProtoFamily::Bridge;
/// The base chain, and the map of ports it dispatches through.
const BASE: &str = "prerouting";
const PORTS: &str = "ports";
/// Bumped whenever the chain's rules change, so that an older kvm-net's are rewritten.
const RULES_VERSION: u32 = 4;

/// Field lengths in a concatenated key: each field takes whole 32-bit registers.
const IFNAME_LEN: usize = 16;
const MAC_LEN: usize = 8;
const IPV4_LEN: usize = 4;
const IPV6_LEN: usize = 16;
/// The most IPv6 addresses a network's ports may hold together.
const MAX_CLAIMS: u32 = 65_536;
/// Ether types, protocols, ports and ICMPv6 types the chain looks at.
const ETH_IP: u16 = libc::ETH_P_IP as u16;
const ETH_ARP: u16 = libc::ETH_P_ARP as u16;
const ETH_IPV6: u16 = libc::ETH_P_IPV6 as u16;
const ETH_RARP: u16 = libc::ETH_P_RARP as u16;
const UDP: u8 = libc::IPPROTO_UDP as u8;
const ICMPV6: u8 = libc::IPPROTO_ICMPV6 as u8;
const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;
const DHCPV6_SERVER: u16 = 547;
const ROUTER_ADVERTISEMENT: u8 = 134;
const REDIRECT: u8 = 137;
/// Where a DHCP message's fields are, counted from the UDP header: `op`,
/// `htype` and `hlen` (a request, Ethernet, 6-byte addresses), and `chaddr`.
const BOOTP_KIND_AT: u32 = 8;
const BOOTP_REQUEST_ETHERNET: [u8; 3] = [1, 1, 6];
const BOOTP_CHADDR_AT: u32 = 36;

/// The per-network sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Set {
    /// Ports whose MAC is locked (`ifname`).
    Locked,
    /// Each locked port's MAC (`ifname . ether_addr`).
    PortMac,
    /// MACs some port holds (`ether_addr`).
    Taken,
    /// Addresses leased to a MAC on a port (`ifname . ether_addr . ipv4_addr`).
    Bound,
    /// MACs `dhcp.hosts` reserves for some taps (`ether_addr`).
    Reserved,
    /// The ports that may use a reserved MAC (`ifname . ether_addr`).
    Allowed,
    /// IPv6 addresses some port holds (`ipv6_addr`, [`antispoof6`]).
    Held6,
    /// Which port holds which IPv6 address (`ifname . ipv6_addr`).
    Port6,
    /// The network's own IPv6 addresses (`ipv6_addr`): the bridge's.
    Own6,
    /// `dhcp.hosts` IPv6 addresses (`ipv6_addr`).
    Host6,
    /// Each of those with its entry's MAC (`ether_addr . ipv6_addr`).
    MacHost6,
}

impl Set {
    /// The sets of the MAC lock, the IPv4 leases and the reservations.
    const V4: [Set; 6] = [Set::Locked, Set::PortMac, Set::Taken, Set::Bound, Set::Reserved, Set::Allowed];
    const ALL: [Set; 11] = [
        Set::Locked,
        Set::PortMac,
        Set::Taken,
        Set::Bound,
        Set::Reserved,
        Set::Allowed,
        Set::Held6,
        Set::Port6,
        Set::Own6,
        Set::Host6,
        Set::MacHost6,
    ];

    fn name(self, bridge: &IfName) -> String {
        let prefix = match self {
            Set::Locked => "locked",
            Set::PortMac => "portmac",
            Set::Taken => "taken",
            Set::Bound => "bound",
            Set::Reserved => "reserved",
            Set::Allowed => "allowed",
            Set::Held6 => "held6",
            Set::Port6 => "port6",
            Set::Own6 => "own6",
            Set::Host6 => "host6",
            Set::MacHost6 => "machost6",
        };
        format!("{prefix}-{bridge}")
    }

    /// nft's type number and the key length.
    fn key(self) -> (u32, usize) {
        let concat = |types: &[u32]| types.iter().fold(0, |all, t| (all << TYPE_BITS) | t);
        match self {
            Set::Locked => (TYPE_IFNAME, IFNAME_LEN),
            Set::PortMac | Set::Allowed => (concat(&[TYPE_IFNAME, TYPE_ETHERADDR]), IFNAME_LEN + MAC_LEN),
            Set::Taken | Set::Reserved => (TYPE_ETHERADDR, 6),
            Set::Bound => (concat(&[TYPE_IFNAME, TYPE_ETHERADDR, TYPE_IPADDR]), IFNAME_LEN + MAC_LEN + IPV4_LEN),
            Set::Held6 | Set::Own6 | Set::Host6 => (TYPE_IP6ADDR, IPV6_LEN),
            Set::Port6 => (concat(&[TYPE_IFNAME, TYPE_IP6ADDR]), IFNAME_LEN + IPV6_LEN),
            Set::MacHost6 => (concat(&[TYPE_ETHERADDR, TYPE_IP6ADDR]), MAC_LEN + IPV6_LEN),
        }
    }

    /// Filled from the packet path (`flags dynamic`), or only by kvm-net.
    fn flags(self) -> SetFlags {
        match self {
            Set::Bound | Set::Reserved | Set::Allowed | Set::Own6 | Set::Host6 | Set::MacHost6 => SetFlags::empty(),
            Set::Locked | Set::PortMac | Set::Taken => SetFlags::Eval,
            Set::Held6 | Set::Port6 => SetFlags::Eval | SetFlags::Timeout,
        }
    }

    /// The most elements it may hold, for a set guests fill address by
    /// address (a bound on the kernel memory one guest can take).
    fn size(self) -> Option<u32> {
        matches!(self, Set::Held6 | Set::Port6).then_some(MAX_CLAIMS)
    }

    /// Whether it holds what guests did (locks, leases), which a set made
    /// anew loses; the others come from the config.
    fn holds_guest_state(self) -> bool {
        matches!(self, Set::Locked | Set::PortMac | Set::Taken | Set::Bound | Set::Held6 | Set::Port6)
    }
}

/// A `dhcp.hosts` entry with `tap`: its MAC, and the taps that may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The reserved MAC.
    pub mac: Mac,
    /// The tap names that may send from it and take its address.
    pub taps: glob::Pattern,
}

/// What a network's guest filter enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `guest_spoofing = "deny"`: the whole filter; otherwise only the reservations.
    pub deny: bool,
    /// The network's reservations.
    pub reservations: Vec<Reservation>,
    /// What IPv6 addresses are compared with: the prefix, the DHCPv6 range.
    pub scope6: Scope,
    /// The network's own IPv6 addresses, which no guest may use: the
    /// bridge's, its subnet-router anycast address, its link-local ones.
    pub own6: Vec<Ipv6Addr>,
    /// `dhcp.hosts` IPv6 addresses, each usable only from its entry's MAC.
    pub hosts6: Vec<(Mac, Ipv6Addr)>,
}

impl Policy {
    /// The filter `network` needs, if any: with `guest_spoofing = "deny"`,
    /// or with a `dhcp.hosts` entry reserved for some taps.
    pub fn of(network: &Network) -> Option<Self> {
        let reservations: Vec<Reservation> = network
            .dhcp
            .iter()
            .flat_map(|dhcp| &dhcp.hosts)
            .filter_map(|host| Some(Reservation { mac: mac::parse(&host.mac)?, taps: host.tap.clone()? }))
            .collect();
        let deny = network.guest_spoofing == Spoofing::Deny;
        let pool = match network.ipv6_autoconfig {
            Autoconfig::Dhcpv6 { range } => Some(range),
            Autoconfig::Slaac | Autoconfig::Off => None,
        };
        let scope6 = Scope { prefix: network.subnet6(), pool };
        let own6 = network.ipv6.iter().flat_map(|address| [address.ip(), address.network()]).collect();
        let hosts6 = network
            .dhcp
            .iter()
            .flat_map(|dhcp| &dhcp.hosts)
            .filter_map(|host| Some((mac::parse(&host.mac)?, host.ipv6?)))
            .collect();
        (deny || !reservations.is_empty()).then_some(Self { deny, reservations, scope6, own6, hosts6 })
    }

    /// With the bridge's link-local addresses among the network's own.
    pub fn with_own(mut self, link_local: &[Ipv6Addr]) -> Self {
        for address in link_local {
            if !self.own6.contains(address) {
                self.own6.push(*address);
            }
        }
        self
    }

    /// The reserved MACs `port` may use.
    fn allowed_for<'a>(&'a self, port: &'a str) -> impl Iterator<Item = Mac> + 'a {
        self.reservations.iter().filter(move |r| r.taps.matches(port)).map(|r| r.mac)
    }

    fn is_reserved(&self, mac: &Mac) -> bool {
        self.reservations.iter().any(|r| r.mac == *mac)
    }
}

/// What binds a guest to its port, as the sets have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The port (tap) name.
    pub port: String,
    /// The MAC the port is locked to.
    pub mac: Mac,
    /// The address leased to that MAC on that port, if any.
    pub ip: Option<Ipv4Addr>,
    /// The IPv6 addresses the port holds (claimed by use, or leased).
    pub ipv6: Vec<Ipv6Addr>,
}

fn chain_name(bridge: &IfName) -> String {
    format!("spoof-{bridge}")
}

/// The chain of the network's IPv6 rules ([`antispoof6`]).
fn chain6_name(bridge: &IfName) -> String {
    format!("spoof6-{bridge}")
}

/// The names of the sets the IPv6 rules use.
fn sets6(bridge: &IfName) -> Sets6 {
    Sets6 {
        held: Set::Held6.name(bridge),
        port: Set::Port6.name(bridge),
        own: Set::Own6.name(bridge),
        host: Set::Host6.name(bridge),
        host_mac: Set::MacHost6.name(bridge),
        port_mac: Set::PortMac.name(bridge),
    }
}

fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut key = vec![0; IFNAME_LEN];
    let len = name.len().min(IFNAME_LEN - 1);
    key[..len].copy_from_slice(&name.as_bytes()[..len]);
    key
}

fn mac_bytes(mac: &Mac) -> Vec<u8> {
    let mut key = mac.to_vec();
    key.resize(MAC_LEN, 0);
    key
}

/// A set's key for these fields, each padded to whole registers.
fn key_of(set: Set, port: &str, mac: &Mac, ip: Option<IpAddr>) -> Vec<u8> {
    let address = match ip {
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
        None => Vec::new(),
    };
    match set {
        Set::Locked => ifname_bytes(port),
        Set::Taken | Set::Reserved => mac.to_vec(),
        Set::PortMac | Set::Allowed => [ifname_bytes(port), mac_bytes(mac)].concat(),
        Set::Bound => [ifname_bytes(port), mac_bytes(mac), address].concat(),
        Set::Held6 | Set::Own6 | Set::Host6 => address,
        Set::Port6 => [ifname_bytes(port), address].concat(),
        Set::MacHost6 => [mac_bytes(mac), address].concat(),
    }
}

/// The name a key starts with (`Locked`, `PortMac`, `Bound`, `Allowed`).
fn port_of_key(key: &[u8]) -> Option<String> {
    let name = key.get(..IFNAME_LEN)?;
    let end = name.iter().position(|b| *b == 0).unwrap_or(IFNAME_LEN);
    std::str::from_utf8(&name[..end]).ok().map(str::to_owned)
}

fn mac_of_key(key: &[u8], at: usize) -> Option<Mac> {
    key.get(at..at + 6).and_then(|m| <Mac>::try_from(m).ok())
}

fn ip_of_key(key: &[u8]) -> Option<Ipv4Addr> {
    key.get(IFNAME_LEN + MAC_LEN..).and_then(|o| <[u8; 4]>::try_from(o).ok()).map(Ipv4Addr::from)
}

/// The address a key of `Port6` (or `Held6`) ends with.
fn ip6_of_key(key: &[u8]) -> Option<Ipv6Addr> {
    key.len().checked_sub(IPV6_LEN).and_then(|at| <[u8; 16]>::try_from(&key[at..]).ok()).map(Ipv6Addr::from)
}

// The chain's rules, one expression builder each.

fn ether_type(kind: u16) -> Vec<Expression> {
    vec![payload_into(Register::Reg1, LINK_HEADER, 12, 2), cmp(Operator::Equal, kind.to_be_bytes().to_vec())]
}

fn l4proto(number: u8) -> Vec<Expression> {
    vec![meta(MetaKey::L4Proto), cmp(Operator::Equal, vec![number])]
}

pub(super) fn lookup(set: &str, register: Register, inverted: bool) -> Expression {
    let mut attributes = vec![Lookup::Set(set.to_owned()), Lookup::SourceRegister(register)];
    if inverted {
        attributes.push(Lookup::Flags(libc::NFT_LOOKUP_F_INV as u32));
    }
    expression(Expressions::Lookup(attributes))
}

fn add_to(set: &str, register: Register) -> Expression {
    raw(
        "dynset",
        vec![
            DefaultNla::new(NFTA_DYNSET_SET_NAME, {
                let mut name = set.as_bytes().to_vec();
                name.push(0);
                name
            }),
            u32_attribute(NFTA_DYNSET_OP, libc::NFT_DYNSET_OP_ADD as u32),
            u32_attribute(NFTA_DYNSET_SREG_KEY, register.into()),
        ],
    )
}

/// The port's name into register 1 (16 bytes).
pub(super) fn port_name() -> Expression {
    meta(MetaKey::Iifname)
}

/// The frame's source MAC into `register`.
pub(super) fn source_mac(register: Register) -> Expression {
    payload_into(register, LINK_HEADER, 6, 6)
}

/// To `chain`, which decides.
fn jump(chain: &str) -> Expression {
    expression(Expressions::Immediate(vec![
        netlink_packet_netfilter::nftables::Immediate::DestinationRegister(Register::Verdict),
        netlink_packet_netfilter::nftables::Immediate::Data(verdict(Verdict::Jump, Some(chain))),
    ]))
}

pub(super) fn accept() -> Expression {
    set_verdict(Verdict::Other(NF_ACCEPT))
}

pub(super) fn drop_it() -> Expression {
    set_verdict(Verdict::Other(NF_DROP))
}

/// A concatenation's second field starts at register 2 (after the 16-byte
/// name), its third at 32-bit register 6 (after the 8-byte MAC).
const SECOND: Register = Register::Reg2;
const THIRD: Register = Register::Reg32_06;

/// IPv4 UDP to the DHCP server's port. What follows may read the
/// transport header: a packet that has none (a later fragment) never
/// matches, and so falls to the rule that drops what did not pass.
fn dhcp_request() -> Vec<Expression> {
    [
        ether_type(ETH_IP),
        l4proto(UDP),
        vec![
            payload_into(Register::Reg1, TRANSPORT_HEADER, 2, 2),
            cmp(Operator::Equal, DHCP_SERVER.to_be_bytes().to_vec()),
        ],
    ]
    .concat()
}

/// A BOOTP request from an Ethernet client: `op`, `htype` and `hlen` (a
/// first fragment too short to hold them does not match).
fn bootp_from_ethernet() -> Vec<Expression> {
    vec![
        payload_into(Register::Reg1, TRANSPORT_HEADER, BOOTP_KIND_AT, 3),
        cmp(Operator::Equal, BOOTP_REQUEST_ETHERNET.to_vec()),
    ]
}

/// The port's name and the message's `chaddr`, looked up in `set`.
fn port_and_chaddr_in(set: &str, inverted: bool) -> Vec<Expression> {
    vec![port_name(), payload_into(SECOND, TRANSPORT_HEADER, BOOTP_CHADDR_AT, 6), lookup(set, Register::Reg1, inverted)]
}

/// The chain of a network with `guest_spoofing = "deny"`, in order.
fn deny_rules(bridge: &IfName) -> Vec<Vec<Expression>> {
    let mut rules = mac_lock_rules(bridge);
    rules.extend(no_server_rules());
    rules.extend(dhcp_rules(bridge));
    rules.extend(address_rules(bridge));
    // IPv6: judged address by address (servers dropped above); and RARP.
    rules.push([ether_type(ETH_IPV6), vec![jump(&chain6_name(bridge))]].concat());
    rules.push([ether_type(ETH_RARP), vec![accept()]].concat());
    rules.push(vec![drop_it()]);
    rules
}

/// Each port locked to the first MAC it sends from: not a MAC another port
/// holds, nor one reserved for other taps.
fn mac_lock_rules(bridge: &IfName) -> Vec<Vec<Expression>> {
    let [locked, portmac, taken, _, reserved, allowed] = Set::V4.map(|set| set.name(bridge));
    let unlocked = || vec![port_name(), lookup(&locked, Register::Reg1, true)];
    vec![
        // A port's first frame, from a MAC reserved for other taps.
        [
            unlocked(),
            vec![
                source_mac(Register::Reg1),
                lookup(&reserved, Register::Reg1, false),
                port_name(),
                source_mac(SECOND),
                lookup(&allowed, Register::Reg1, true),
                drop_it(),
            ],
        ]
        .concat(),
        // A port's first frame, from a MAC another port holds.
        [unlocked(), vec![source_mac(Register::Reg1), lookup(&taken, Register::Reg1, false), drop_it()]].concat(),
        // A port's first frame: lock the port to its MAC.
        [
            unlocked(),
            vec![
                port_name(),
                add_to(&locked, Register::Reg1),
                port_name(),
                source_mac(SECOND),
                add_to(&portmac, Register::Reg1),
                source_mac(Register::Reg1),
                add_to(&taken, Register::Reg1),
            ],
        ]
        .concat(),
        // Any other MAC than the port's.
        vec![port_name(), source_mac(SECOND), lookup(&portmac, Register::Reg1, true), drop_it()],
    ]
}

/// Servers no guest may be: DHCP, DHCPv6, router advertisements, redirects.
fn no_server_rules() -> Vec<Vec<Expression>> {
    let source_port = |port: u16| {
        vec![payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 2), cmp(Operator::Equal, port.to_be_bytes().to_vec())]
    };
    let icmpv6_type =
        |kind: u8| vec![payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 1), cmp(Operator::Equal, vec![kind])];
    let mut rules = vec![
        [ether_type(ETH_IP), l4proto(UDP), source_port(DHCP_SERVER), vec![drop_it()]].concat(),
        [ether_type(ETH_IPV6), l4proto(UDP), source_port(DHCPV6_SERVER), vec![drop_it()]].concat(),
    ];
    for kind in [ROUTER_ADVERTISEMENT, REDIRECT] {
        rules.push([ether_type(ETH_IPV6), l4proto(ICMPV6), icmpv6_type(kind), vec![drop_it()]].concat());
    }
    rules
}

/// The port's name, source MAC and IPv4 source address, looked up in the
/// bound set: a packet from the port's lease.
fn from_bound(bridge: &IfName) -> Vec<Expression> {
    vec![
        port_name(),
        source_mac(SECOND),
        payload_into(THIRD, NETWORK_HEADER, 12, 4),
        lookup(&Set::Bound.name(bridge), Register::Reg1, false),
    ]
}

/// DHCP: a client without an address yet, or renewing from its leased
/// one, always about the port's own MAC; nothing else to the server's port.
fn dhcp_rules(bridge: &IfName) -> Vec<Vec<Expression>> {
    let portmac = Set::PortMac.name(bridge);
    let ports = [DHCP_CLIENT.to_be_bytes(), DHCP_SERVER.to_be_bytes()].concat();
    let from_nowhere = vec![
        payload_into(Register::Reg1, NETWORK_HEADER, 12, 4),
        cmp(Operator::Equal, vec![0; 4]),
        payload_into(Register::Reg1, NETWORK_HEADER, 16, 4),
        cmp(Operator::Equal, vec![0xff; 4]),
    ];
    vec![
        [
            ether_type(ETH_IP),
            from_nowhere,
            l4proto(UDP),
            vec![payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 4), cmp(Operator::Equal, ports)],
            bootp_from_ethernet(),
            port_and_chaddr_in(&portmac, false),
            vec![accept()],
        ]
        .concat(),
        [
            dhcp_request(),
            bootp_from_ethernet(),
            port_and_chaddr_in(&portmac, false),
            from_bound(bridge),
            vec![accept()],
        ]
        .concat(),
        [dhcp_request(), vec![drop_it()]].concat(),
    ]
}

/// IPv4 only from the port's lease; ARP only as a probe (sender 0.0.0.0)
/// from the port's MAC, or from the lease.
fn address_rules(bridge: &IfName) -> Vec<Vec<Expression>> {
    let [_, portmac, _, bound, _, _] = Set::V4.map(|set| set.name(bridge));
    let sender_mac = |register| payload_into(register, NETWORK_HEADER, 8, 6);
    vec![
        [ether_type(ETH_IP), from_bound(bridge), vec![accept()]].concat(),
        [ether_type(ETH_IP), vec![drop_it()]].concat(),
        [
            ether_type(ETH_ARP),
            vec![
                payload_into(Register::Reg1, NETWORK_HEADER, 14, 4),
                cmp(Operator::Equal, vec![0; 4]),
                port_name(),
                sender_mac(SECOND),
                lookup(&portmac, Register::Reg1, false),
                accept(),
            ],
        ]
        .concat(),
        [
            ether_type(ETH_ARP),
            vec![
                port_name(),
                sender_mac(SECOND),
                payload_into(THIRD, NETWORK_HEADER, 14, 4),
                lookup(&bound, Register::Reg1, false),
                accept(),
            ],
        ]
        .concat(),
        [ether_type(ETH_ARP), vec![drop_it()]].concat(),
    ]
}

/// The chain of a network that only reserves: DHCP about a reserved MAC
/// passes from the taps it is reserved for; the rest returns to the base
/// chain, which accepts.
fn reservation_rules(bridge: &IfName) -> Vec<Vec<Expression>> {
    let [_, _, _, _, reserved, allowed] = Set::V4.map(|set| set.name(bridge));
    vec![
        [
            dhcp_request(),
            bootp_from_ethernet(),
            vec![
                payload_into(Register::Reg1, TRANSPORT_HEADER, BOOTP_CHADDR_AT, 6),
                lookup(&reserved, Register::Reg1, true),
                accept(),
            ],
        ]
        .concat(),
        [dhcp_request(), bootp_from_ethernet(), port_and_chaddr_in(&allowed, false), vec![accept()]].concat(),
        [dhcp_request(), vec![drop_it()]].concat(),
    ]
}

/// One chain of a network's filter, as it should be: its rules, and the
/// comment each carries (the bridge, which rule, and what it compares
/// with), by which a later run knows them.
struct ChainSpec {
    name: String,
    rules: Vec<Vec<Expression>>,
    comments: Vec<Vec<u8>>,
}

/// The network's chains, a chain ahead of the one that jumps to it: with
/// "deny", its IPv6 chain and its chain; otherwise its chain of reservations.
fn chain_specs(bridge: &IfName, policy: &Policy) -> Vec<ChainSpec> {
    let tag = format!("kvm-net:{bridge}");
    let spec = |name: String, rules: Vec<Vec<Expression>>, what: &dyn Fn(usize) -> Vec<u8>| ChainSpec {
        comments: (0..rules.len()).map(what).collect(),
        name,
        rules,
    };
    if !policy.deny {
        let rules = reservation_rules(bridge);
        return vec![spec(chain_name(bridge), rules, &|index| comment(&tag, &("reservations", RULES_VERSION, index)))];
    }
    let scope = policy.scope6;
    vec![
        spec(chain6_name(bridge), antispoof6::rules(&sets6(bridge), &policy.scope6), &|index| {
            comment(&tag, &("antispoof6", RULES_VERSION, index, scope))
        }),
        spec(chain_name(bridge), deny_rules(bridge), &|index| comment(&tag, &("antispoof", RULES_VERSION, index))),
    ]
}

fn dispatch_comment() -> Vec<u8> {
    comment("kvm-net", &("antispoof", RULES_VERSION, BASE))
}

fn change(message: NfTablesMessage, flags: u16, what: String) -> Change {
    Change { family: BRIDGE, message, flags, what }
}

fn table_name() -> String {
    format!("bridge {TABLE}")
}

fn new_rule(chain: &str, expressions: Vec<Expression>, userdata: Vec<u8>) -> Change {
    let message = NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(TABLE.to_owned()),
            RuleAttribute::Chain(chain.to_owned()),
            RuleAttribute::Expressions(expressions),
            RuleAttribute::UserData(userdata),
        ],
    });
    change(message, NLM_F_CREATE | NLM_F_APPEND, format!("adding a rule to {} {chain}", table_name()))
}

fn chain_message(name: &str) -> ChainMessage {
    ChainMessage { attributes: vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(name.to_owned())] }
}

fn flush(chain: &str) -> Change {
    let message = NfTablesMessage::DeleteRule(RuleMessage {
        attributes: vec![RuleAttribute::Table(TABLE.to_owned()), RuleAttribute::Chain(chain.to_owned())],
    });
    change(message, 0, format!("flushing {} {chain}", table_name()))
}

fn elements(set: &str, elements: Vec<Vec<SetElementAttribute>>) -> SetElementMessage {
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.to_owned()),
            SetElementList::Set(set.to_owned()),
            SetElementList::Elements(elements.into_iter().map(ListAttribute::Element).collect()),
        ],
    }
}

fn key(value: Vec<u8>) -> SetElementAttribute {
    SetElementAttribute::Key(DataAttribute::Value(value))
}

fn add_elements(set: &str, keys: impl IntoIterator<Item = Vec<u8>>) -> Option<Change> {
    add_elements_for(set, keys, None)
}

/// As [`add_elements`], each living `timeout` milliseconds from now (and
/// from each use, in a set the packet path renews); `None`: for good.
fn add_elements_for(set: &str, keys: impl IntoIterator<Item = Vec<u8>>, timeout: Option<u64>) -> Option<Change> {
    let keys: Vec<Vec<u8>> = keys.into_iter().collect();
    if keys.is_empty() {
        return None;
    }
    let element = |k| {
        let mut element = vec![key(k)];
        element.extend(timeout.map(SetElementAttribute::Timeout));
        element
    };
    let message = NfTablesMessage::NewSetElement(elements(set, keys.into_iter().map(element).collect()));
    Some(change(message, NLM_F_CREATE, format!("adding to set {} {set}", table_name())))
}

fn delete_elements(set: &str, keys: impl IntoIterator<Item = Vec<u8>>) -> Option<Change> {
    let keys: Vec<Vec<u8>> = keys.into_iter().collect();
    if keys.is_empty() {
        return None;
    }
    let message = NfTablesMessage::DeleteSetElement(elements(set, keys.into_iter().map(|k| vec![key(k)]).collect()));
    Some(change(message, 0, format!("deleting from set {} {set}", table_name())))
}

/// The map element sending `port`'s frames to `chain`.
fn port_element(port: &str, chain: Option<&str>) -> SetElementMessage {
    let mut element = vec![key(ifname_bytes(port))];
    if let Some(chain) = chain {
        element.push(SetElementAttribute::Data(verdict(Verdict::Jump, Some(chain))));
    }
    elements(PORTS, vec![element])
}

fn admit_port(port: &str, chain: &str) -> Change {
    change(
        NfTablesMessage::NewSetElement(port_element(port, Some(chain))),
        NLM_F_CREATE,
        format!("adding {port} to map {} {PORTS}", table_name()),
    )
}

fn drop_ports<'a>(ports: impl IntoIterator<Item = &'a String>) -> Option<Change> {
    let keys: Vec<Vec<SetElementAttribute>> = ports.into_iter().map(|port| vec![key(ifname_bytes(port))]).collect();
    if keys.is_empty() {
        return None;
    }
    Some(change(
        NfTablesMessage::DeleteSetElement(elements(PORTS, keys)),
        0,
        format!("deleting ports from map {} {PORTS}", table_name()),
    ))
}

/// The keys (and data) of every element of `set`.
fn set_elements(nft: &mut Nft, set: &str) -> Result<Vec<(Vec<u8>, Option<String>)>> {
    let request = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![SetElementList::Table(TABLE.to_owned()), SetElementList::Set(set.to_owned())],
    });
    let answers = nft.dump(BRIDGE, request)?;
    let mut found = Vec::new();
    for answer in &answers {
        let Some(list) = answer.attribute(NFTA_SET_ELEM_LIST_ELEMENTS) else { continue };
        for (_, element) in wire::attributes(list).filter(|(kind, _)| *kind == NFTA_LIST_ELEM) {
            let Some(value) =
                wire::attribute(element, NFTA_SET_ELEM_KEY).and_then(|k| wire::attribute(k, NFTA_DATA_VALUE))
            else {
                continue;
            };
            let target = wire::attribute(element, NFTA_SET_ELEM_DATA)
                .and_then(|d| wire::attribute(d, NFTA_DATA_VERDICT))
                .and_then(|v| wire::attribute(v, NFTA_VERDICT_CHAIN))
                .and_then(wire::string)
                .map(str::to_owned);
            found.push((value.to_vec(), target));
        }
    }
    Ok(found)
}

fn keys_of(nft: &mut Nft, set: &str) -> Result<Vec<Vec<u8>>> {
    Ok(set_elements(nft, set)?.into_iter().map(|(key, _)| key).collect())
}

/// The ports the map sends to the network's chain.
fn admitted(nft: &mut Nft, bridge: &IfName) -> Result<BTreeSet<String>> {
    let chain = chain_name(bridge);
    Ok(set_elements(nft, PORTS)?
        .into_iter()
        .filter(|(_, target)| target.as_deref() == Some(chain.as_str()))
        .filter_map(|(key, _)| port_of_key(&key))
        .collect())
}

fn exists(nft: &mut Nft, message: NfTablesMessage) -> Result<bool> {
    Ok(nft.get(BRIDGE, message)?.is_some())
}

fn set_exists(nft: &mut Nft, name: &str) -> Result<bool> {
    let request = NfTablesMessage::GetSet(SetMessage {
        attributes: vec![SetAttribute::Table(TABLE.to_owned()), SetAttribute::Name(name.to_owned())],
    });
    exists(nft, request)
}

fn comments_of(nft: &mut Nft, chain: &str) -> Result<Vec<Vec<u8>>> {
    let request = NfTablesMessage::GetRule(RuleMessage {
        attributes: vec![RuleAttribute::Table(TABLE.to_owned()), RuleAttribute::Chain(chain.to_owned())],
    });
    let rules: Vec<Owned> = nft.dump(BRIDGE, request)?;
    Ok(rules.iter().map(|rule| rule.attribute(NFTA_RULE_USERDATA).unwrap_or_default().to_vec()).collect())
}

/// The changes that take away everything bound to `ports` (their locks,
/// their MACs' claims, their addresses), from what the sets hold now.
/// Returns whether an address binding goes.
fn forget_ports(nft: &mut Nft, bridge: &IfName, ports: &BTreeSet<String>, changes: &mut Vec<Change>) -> Result<bool> {
    if ports.is_empty() {
        return Ok(false);
    }
    let [locked, portmac, taken, bound, _, _] = Set::V4.map(|set| set.name(bridge));
    let theirs = |keys: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        keys.into_iter().filter(|key| port_of_key(key).is_some_and(|port| ports.contains(&port))).collect()
    };
    let macs = theirs(keys_of(nft, &portmac)?);
    let held: HashSet<Vec<u8>> =
        macs.iter().filter_map(|key| mac_of_key(key, IFNAME_LEN)).map(|mac| mac.to_vec()).collect();
    let locks = theirs(keys_of(nft, &locked)?);
    let addresses = theirs(keys_of(nft, &bound)?);
    let unbinds = !addresses.is_empty();
    changes.extend(delete_elements(&bound, addresses));
    changes.extend(delete_elements(&portmac, macs));
    changes.extend(delete_elements(&locked, locks));
    let still_taken: Vec<Vec<u8>> = keys_of(nft, &taken)?.into_iter().filter(|mac| held.contains(mac)).collect();
    changes.extend(delete_elements(&taken, still_taken));
    forget_ipv6(nft, bridge, ports, changes)?;
    Ok(unbinds)
}

/// The changes that take away the IPv6 addresses `ports` hold (the
/// address itself too, unless another port holds it as well).
fn forget_ipv6(nft: &mut Nft, bridge: &IfName, ports: &BTreeSet<String>, changes: &mut Vec<Change>) -> Result<()> {
    let (held, port6) = (Set::Held6.name(bridge), Set::Port6.name(bridge));
    if !set_exists(nft, &port6)? {
        return Ok(());
    }
    let (theirs, others): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
        keys_of(nft, &port6)?.into_iter().partition(|key| port_of_key(key).is_some_and(|port| ports.contains(&port)));
    let kept: HashSet<Ipv6Addr> = others.iter().filter_map(|key| ip6_of_key(key)).collect();
    let gone: BTreeSet<Vec<u8>> = theirs
        .iter()
        .filter_map(|key| ip6_of_key(key))
        .filter(|ip| !kept.contains(ip))
        .map(|ip| ip.octets().to_vec())
        .collect();
    let present: HashSet<Vec<u8>> = keys_of(nft, &held)?.into_iter().collect();
    changes.extend(delete_elements(&port6, theirs));
    changes.extend(delete_elements(&held, gone.into_iter().filter(|key| present.contains(key))));
    Ok(())
}

/// The changes that make `set` hold exactly `wanted`.
fn sync_set(nft: &mut Nft, set: &str, wanted: &BTreeSet<Vec<u8>>, changes: &mut Vec<Change>) -> Result<()> {
    let present: BTreeSet<Vec<u8>> = keys_of(nft, set)?.into_iter().collect();
    changes.extend(delete_elements(set, present.difference(wanted).cloned()));
    changes.extend(add_elements(set, wanted.difference(&present).cloned()));
    Ok(())
}

/// The `(port . MAC)` keys of every reserved MAC each of `ports` may use.
fn allowed_keys<'a>(policy: &Policy, ports: impl IntoIterator<Item = &'a String>) -> BTreeSet<Vec<u8>> {
    ports
        .into_iter()
        .flat_map(|port| policy.allowed_for(port).map(move |mac| key_of(Set::Allowed, port, &mac, None)))
        .collect()
}

/// Makes the network's filter whole for `policy`: table, base chain and
/// map, its sets and chain, a map element for each of `ports` (the
/// bridge's ports now) and none for a port that is gone (with everything
/// bound to it), the reservations as configured (a port locked to a MAC
/// reserved for other taps loses its lock). Where the sets of guests'
/// state had to be made anew (the ruleset was flushed), the bindings last
/// in force are restored from kvm-net's record, for the ports still there.
pub fn ensure(bridge: &IfName, policy: &Policy, ports: &[String]) -> Result<()> {
    let ports: BTreeSet<String> = ports.iter().cloned().collect();
    let mut unbinds = false;
    with_retries("installing kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let mut changes = Vec::new();
        table_whole(nft, &mut changes)?;
        let missing = sets_whole(nft, bridge, &mut changes)?;
        chain_whole(nft, bridge, policy, &mut changes)?;
        unbinds |= ports_whole(nft, bridge, policy, &ports, &missing, &mut changes)?;
        reservations_whole(nft, bridge, policy, &ports, &missing, &mut changes)?;
        if policy.deny && missing.iter().any(|set| set.holds_guest_state()) {
            restore(bridge, policy, &ports, &mut changes)?;
        }
        nft.commit(generation, changes)
    })
    .with_context(|| format!("installing the guest filter of bridge {bridge}"))?;
    // Under "deny", also what guests claimed by use since (IPv6).
    if unbinds || policy.deny {
        save_record(bridge)?;
    }
    Ok(())
}

/// The table, its base chain and map of ports.
fn table_whole(nft: &mut Nft, changes: &mut Vec<Change>) -> Result<()> {
    let table = NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.to_owned())] });
    if !exists(nft, table)? {
        trace(format_args!("{}: made anew", table_name()));
        let message =
            NfTablesMessage::NewTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.to_owned())] });
        changes.push(change(message, NLM_F_CREATE, format!("creating table {}", table_name())));
    }
    if comments_of(nft, BASE)? != [dispatch_comment()] {
        base_chain(nft, changes)?;
    }
    Ok(())
}

/// The network's sets; returns those made anew (empty, and not yet dumpable).
fn sets_whole(nft: &mut Nft, bridge: &IfName, changes: &mut Vec<Change>) -> Result<BTreeSet<Set>> {
    let mut missing = BTreeSet::new();
    for set in Set::ALL {
        let name = set.name(bridge);
        if set_exists(nft, &name)? {
            continue;
        }
        missing.insert(set);
        let (key_type, key_len) = set.key();
        let mut attributes = vec![
            SetAttribute::Table(TABLE.to_owned()),
            SetAttribute::Name(name.clone()),
            SetAttribute::Flags(set.flags()),
            SetAttribute::KeyType(key_type),
            SetAttribute::KeyLen(key_len as u32),
            SetAttribute::Id(2),
        ];
        if let Some(size) = set.size() {
            attributes.push(SetAttribute::Description(vec![SetDescription::Size(size)]));
        }
        changes.push(change(
            NfTablesMessage::NewSet(SetMessage { attributes }),
            NLM_F_CREATE,
            format!("creating set {} {name}", table_name()),
        ));
    }
    Ok(missing)
}

/// The network's chains, with exactly the rules `policy` calls for; the
/// IPv6 chain goes once nothing jumps to it.
fn chain_whole(nft: &mut Nft, bridge: &IfName, policy: &Policy, changes: &mut Vec<Change>) -> Result<()> {
    for spec in chain_specs(bridge, policy) {
        let present = comments_of(nft, &spec.name)?;
        if present == spec.comments {
            continue;
        }
        let chain = &spec.name;
        trace(format_args!("{} {chain}: write {} rules", table_name(), spec.rules.len()));
        changes.push(change(
            NfTablesMessage::NewChain(chain_message(chain)),
            NLM_F_CREATE,
            format!("creating chain {} {chain}", table_name()),
        ));
        if !present.is_empty() {
            changes.push(flush(chain));
        }
        for (expressions, userdata) in spec.rules.into_iter().zip(spec.comments) {
            changes.push(new_rule(chain, expressions, userdata));
        }
    }
    let chain6 = chain6_name(bridge);
    if !policy.deny && exists(nft, NfTablesMessage::GetChain(chain_message(&chain6)))? {
        changes.push(flush(&chain6));
        changes.push(delete_chain(&chain6));
    }
    Ok(())
}

fn delete_chain(chain: &str) -> Change {
    change(NfTablesMessage::DeleteChain(chain_message(chain)), 0, format!("deleting chain {} {chain}", table_name()))
}

/// A map element for each of `ports`, and none for a port that is gone
/// (a VM killed, a helper's tap) or locked to a MAC reserved for other taps,
/// with everything bound to it. Returns whether an address binding goes.
fn ports_whole(
    nft: &mut Nft,
    bridge: &IfName,
    policy: &Policy,
    ports: &BTreeSet<String>,
    missing: &BTreeSet<Set>,
    changes: &mut Vec<Change>,
) -> Result<bool> {
    let chain = chain_name(bridge);
    let admitted = admitted(nft, bridge)?;
    for port in ports.difference(&admitted) {
        trace(format_args!("{} map {PORTS}: {port} jumps to {chain}", table_name()));
        changes.push(admit_port(port, &chain));
    }
    let allowed = allowed_keys(policy, ports);
    let mut forgotten: BTreeSet<String> = admitted.difference(ports).cloned().collect();
    let locks = if missing.contains(&Set::PortMac) { Vec::new() } else { keys_of(nft, &Set::PortMac.name(bridge))? };
    for key in locks {
        let (Some(port), Some(mac)) = (port_of_key(&key), mac_of_key(&key, IFNAME_LEN)) else { continue };
        if policy.is_reserved(&mac) && !allowed.contains(&key_of(Set::Allowed, &port, &mac, None)) {
            forgotten.insert(port);
        }
    }
    if forgotten.is_empty() {
        return Ok(false);
    }
    trace(format_args!("{}: forgetting ports {forgotten:?}", table_name()));
    let unbinds = forget_ports(nft, bridge, &forgotten, changes)?;
    changes.extend(drop_ports(forgotten.iter().filter(|port| admitted.contains(*port))));
    Ok(unbinds)
}

/// The reserved MACs as configured, and which of `ports` may use each.
fn reservations_whole(
    nft: &mut Nft,
    bridge: &IfName,
    policy: &Policy,
    ports: &BTreeSet<String>,
    missing: &BTreeSet<Set>,
    changes: &mut Vec<Change>,
) -> Result<()> {
    let reserved: BTreeSet<Vec<u8>> = policy.reservations.iter().map(|r| r.mac.to_vec()).collect();
    let own: BTreeSet<Vec<u8>> = policy.own6.iter().map(|ip| ip.octets().to_vec()).collect();
    let hosts: BTreeSet<Vec<u8>> = policy.hosts6.iter().map(|(_, ip)| ip.octets().to_vec()).collect();
    let host_macs: BTreeSet<Vec<u8>> =
        policy.hosts6.iter().map(|(mac, ip)| key_of(Set::MacHost6, "", mac, Some(IpAddr::V6(*ip)))).collect();
    for (set, wanted) in [
        (Set::Reserved, reserved),
        (Set::Allowed, allowed_keys(policy, ports)),
        (Set::Own6, own),
        (Set::Host6, hosts),
        (Set::MacHost6, host_macs),
    ] {
        if missing.contains(&set) {
            changes.extend(add_elements(&set.name(bridge), wanted));
        } else {
            sync_set(nft, &set.name(bridge), &wanted, changes)?;
        }
    }
    Ok(())
}

/// The base chain and its map of ports, made anew.
fn base_chain(nft: &mut Nft, changes: &mut Vec<Change>) -> Result<()> {
    let attributes = vec![
        SetAttribute::Table(TABLE.to_owned()),
        SetAttribute::Name(PORTS.to_owned()),
        SetAttribute::Flags(SetFlags::Map),
        SetAttribute::KeyType(TYPE_IFNAME),
        SetAttribute::KeyLen(IFNAME_LEN as u32),
        SetAttribute::DataType(libc::NFT_DATA_VERDICT),
        SetAttribute::Id(1),
        SetAttribute::UserData(key_in_host_order()),
    ];
    changes.push(change(
        NfTablesMessage::NewSet(SetMessage { attributes }),
        NLM_F_CREATE,
        format!("creating map {} {PORTS}", table_name()),
    ));
    let mut attributes = chain_message(BASE).attributes;
    attributes.push(ChainAttribute::Hook(vec![
        Hook::Number(InetHookNumber::PreRouting.into()),
        Hook::Priority(u32::from_ne_bytes((-300i32).to_ne_bytes())),
    ]));
    attributes.push(ChainAttribute::Type("filter".to_owned()));
    attributes.push(ChainAttribute::Policy(1));
    changes.push(change(
        NfTablesMessage::NewChain(ChainMessage { attributes }),
        NLM_F_CREATE,
        format!("creating base chain {} {BASE}", table_name()),
    ));
    if !comments_of(nft, BASE)?.is_empty() {
        changes.push(flush(BASE));
    }
    let dispatch = vec![
        meta(MetaKey::Iifname),
        expression(Expressions::Lookup(vec![
            Lookup::Set(PORTS.to_owned()),
            Lookup::SourceRegister(Register::Reg1),
            Lookup::DestinationRegister(Register::Verdict),
        ])),
    ];
    changes.push(new_rule(BASE, dispatch, dispatch_comment()));
    Ok(())
}

/// The recorded bindings of ports still there (and not of a MAC reserved
/// for other taps), put back into sets made anew: each guest's lock and address.
fn restore(bridge: &IfName, policy: &Policy, ports: &BTreeSet<String>, changes: &mut Vec<Change>) -> Result<()> {
    let recorded: Vec<Binding> = bindings::load(bridge)?
        .into_iter()
        .filter(|b| ports.contains(&b.port))
        .filter(|b| !policy.is_reserved(&b.mac) || policy.allowed_for(&b.port).any(|mac| mac == b.mac))
        .collect();
    if recorded.is_empty() {
        return Ok(());
    }
    trace(format_args!("{}: restoring {} recorded bindings", table_name(), recorded.len()));
    let keys = |set: Set| -> BTreeSet<Vec<u8>> {
        recorded.iter().map(|b| key_of(set, &b.port, &b.mac, b.ip.map(IpAddr::V4))).collect()
    };
    for set in [Set::Locked, Set::PortMac, Set::Taken] {
        changes.extend(add_elements(&set.name(bridge), keys(set)));
    }
    changes.extend(add_elements(
        &Set::Bound.name(bridge),
        keys(Set::Bound).into_iter().filter(|k| k.len() == Set::Bound.key().1),
    ));
    let v6 = |set: Set| -> BTreeSet<Vec<u8>> {
        recorded
            .iter()
            .flat_map(|b| b.ipv6.iter().map(move |ip| key_of(set, &b.port, &b.mac, Some(IpAddr::V6(*ip)))))
            .collect()
    };
    for set in [Set::Held6, Set::Port6] {
        changes.extend(add_elements_for(&set.name(bridge), v6(set), Some(HOLD_MS)));
    }
    Ok(())
}

/// Records the bindings now in force (the bridge's lock is held).
fn save_record(bridge: &IfName) -> Result<()> {
    let bound = bindings(bridge)?.into_iter().filter(|b| b.ip.is_some() || !b.ipv6.is_empty()).collect::<Vec<_>>();
    bindings::save(bridge, &bound).with_context(|| format!("recording the guest bindings of bridge {bridge}"))
}

/// Lets `port` on (before it comes up), with nothing of an earlier port of
/// the same name bound to it, and the reserved MACs its name may use.
pub fn admit(bridge: &IfName, policy: &Policy, port: &str) -> Result<()> {
    let chain = chain_name(bridge);
    let allowed_set = Set::Allowed.name(bridge);
    let mut unbinds = false;
    with_retries("admitting a port to kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let mut changes = Vec::new();
        unbinds = forget_ports(nft, bridge, &BTreeSet::from([port.to_owned()]), &mut changes)?;
        changes.push(admit_port(port, &chain));
        let stale: Vec<Vec<u8>> =
            keys_of(nft, &allowed_set)?.into_iter().filter(|key| port_of_key(key).as_deref() == Some(port)).collect();
        let wanted = allowed_keys(policy, [&port.to_owned()]);
        changes.extend(delete_elements(&allowed_set, stale.into_iter().filter(|key| !wanted.contains(key))));
        changes.extend(add_elements(&allowed_set, wanted));
        nft.commit(generation, changes)
    })
    .with_context(|| format!("admitting {port} to the guest filter of bridge {bridge}"))?;
    if unbinds {
        save_record(bridge)?;
    }
    Ok(())
}

/// Takes `ports` out, with everything bound to them.
fn release_all(bridge: &IfName, ports: &BTreeSet<String>) -> Result<()> {
    let allowed_set = Set::Allowed.name(bridge);
    with_retries("releasing ports from kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let mut changes = Vec::new();
        forget_ports(nft, bridge, ports, &mut changes)?;
        let admitted = admitted(nft, bridge)?;
        changes.extend(drop_ports(ports.iter().filter(|port| admitted.contains(*port))));
        let theirs: Vec<Vec<u8>> = keys_of(nft, &allowed_set)?
            .into_iter()
            .filter(|key| port_of_key(key).is_some_and(|port| ports.contains(&port)))
            .collect();
        changes.extend(delete_elements(&allowed_set, theirs));
        nft.commit(generation, changes)
    })?;
    save_record(bridge)
}

/// Takes `port` out, with everything bound to it (its downscript).
pub fn release(bridge: &IfName, port: &str) -> Result<()> {
    release_all(bridge, &BTreeSet::from([port.to_owned()]))
        .with_context(|| format!("releasing {port} from the guest filter of bridge {bridge}"))
}

/// The admitted ports that are not among `present` (the bridge's ports
/// now): taps gone without a downscript.
pub fn departed(bridge: &IfName, present: &[String]) -> Result<Vec<String>> {
    let present: BTreeSet<&String> = present.iter().collect();
    Ok(with_nft(|nft| admitted(nft, bridge))?.into_iter().filter(|port| !present.contains(port)).collect())
}

/// Takes out every [`departed`] port, with everything bound to it.
/// Returns their names.
pub fn release_departed(bridge: &IfName, present: &[String]) -> Result<Vec<String>> {
    let gone = departed(bridge, present)?;
    if !gone.is_empty() {
        trace(format_args!("{}: ports gone without a downscript: {gone:?}", table_name()));
        release_all(bridge, &gone.iter().cloned().collect())
            .with_context(|| format!("releasing departed ports from the guest filter of bridge {bridge}"))?;
    }
    Ok(gone)
}

/// Binds a lease to `port`, locked to `mac` ([`bind4`], [`bind6`]).
pub fn bind(bridge: &IfName, port: &str, mac: &Mac, ip: IpAddr) -> Result<()> {
    match ip {
        IpAddr::V4(v4) => bind4(bridge, port, mac, v4),
        IpAddr::V6(v6) => bind6(bridge, port, v6),
    }
    .with_context(|| format!("binding {ip} to {} on {port} (bridge {bridge})", mac::show(mac)))
}

/// Unbinds a lease that ended ([`unbind4`], [`unbind6`]).
pub fn unbind(bridge: &IfName, mac: &Mac, ip: IpAddr) -> Result<()> {
    match ip {
        IpAddr::V4(v4) => unbind4(bridge, mac, v4),
        IpAddr::V6(v6) => unbind6(bridge, mac, v6),
    }
    .with_context(|| format!("unbinding {ip} from {} (bridge {bridge})", mac::show(mac)))
}

/// Binds a DHCPv6 lease of `ip` to `port`, as a claim of its (renewed by
/// each renewal, and by use). Refused while another port kvm-net
/// admitted holds that address.
fn bind6(bridge: &IfName, port: &str, ip: Ipv6Addr) -> Result<()> {
    let (held, port6) = (Set::Held6.name(bridge), Set::Port6.name(bridge));
    with_retries("binding a DHCPv6 lease in kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let holders: Vec<String> = keys_of(nft, &port6)?
            .iter()
            .filter(|key| ip6_of_key(key) == Some(ip))
            .filter_map(|key| port_of_key(key))
            .collect();
        let admitted = admitted(nft, bridge)?;
        if let Some(holder) = holders.iter().find(|holder| *holder != port && admitted.contains(*holder)) {
            return Err(anyhow!("{ip} is held by port {holder}, which is still attached"));
        }
        let mut changes: Vec<Change> = delete_elements(
            &port6,
            holders
                .iter()
                .filter(|holder| *holder != port)
                .map(|holder| key_of(Set::Port6, holder, &[0; 6], Some(IpAddr::V6(ip)))),
        )
        .into_iter()
        .collect();
        let lease = |set| key_of(set, port, &[0; 6], Some(IpAddr::V6(ip)));
        changes.extend(add_elements_for(&held, [lease(Set::Held6)], Some(HOLD_MS)));
        changes.extend(add_elements_for(&port6, [lease(Set::Port6)], Some(HOLD_MS)));
        nft.commit(generation, changes)
    })?;
    save_record(bridge)
}

/// Unbinds an ended DHCPv6 lease of `ip` from the port `mac` is locked to.
fn unbind6(bridge: &IfName, mac: &Mac, ip: Ipv6Addr) -> Result<()> {
    let Some(port) = port_holding(bridge, mac)? else { return Ok(()) };
    let (held, port6) = (Set::Held6.name(bridge), Set::Port6.name(bridge));
    with_retries("unbinding a DHCPv6 lease in kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let keys = keys_of(nft, &port6)?;
        let theirs = key_of(Set::Port6, &port, mac, Some(IpAddr::V6(ip)));
        if !keys.contains(&theirs) {
            return Ok(Committed::Done);
        }
        let others = keys.iter().any(|key| *key != theirs && ip6_of_key(key) == Some(ip));
        let mut changes: Vec<Change> = delete_elements(&port6, [theirs]).into_iter().collect();
        if !others {
            changes.extend(delete_elements(&held, [ip.octets().to_vec()]));
        }
        nft.commit(generation, changes)
    })?;
    save_record(bridge)
}

/// Binds `ip` to `mac` on `port` (a lease given or renewed): the MAC keeps
/// no other address. Refused while another port kvm-net admitted holds
/// that address: an address is never bound to two ports.
fn bind4(bridge: &IfName, port: &str, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
    let bound = Set::Bound.name(bridge);
    let mut changed = false;
    with_retries("binding a lease in kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let wanted = key_of(Set::Bound, port, mac, Some(IpAddr::V4(ip)));
        let present = keys_of(nft, &bound)?;
        let same_ip_or_mac: Vec<Vec<u8>> =
            present.iter().filter(|key| same_ip(key, ip) || same_mac(key, mac)).cloned().collect();
        if same_ip_or_mac == [wanted.clone()] {
            return Ok(Committed::Done);
        }
        let admitted = admitted(nft, bridge)?;
        if let Some(holder) = same_ip_or_mac
            .iter()
            .filter(|key| same_ip(key, ip) && !same_mac(key, mac))
            .filter_map(|key| port_of_key(key))
            .find(|holder| holder != port && admitted.contains(holder))
        {
            return Err(anyhow!("{ip} is bound to port {holder}, which is still attached"));
        }
        let mut changes: Vec<Change> = delete_elements(&bound, same_ip_or_mac).into_iter().collect();
        changes.extend(add_elements(&bound, [wanted.clone()]));
        changed = true;
        nft.commit(generation, changes)
    })?;
    if changed {
        save_record(bridge)?;
    }
    Ok(())
}

/// Unbinds `ip` from `mac` (a lease released or expired), wherever it is bound.
fn unbind4(bridge: &IfName, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
    let bound = Set::Bound.name(bridge);
    let mut changed = false;
    with_retries("unbinding a lease in kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let stale: Vec<Vec<u8>> =
            keys_of(nft, &bound)?.into_iter().filter(|key| same_ip(key, ip) && same_mac(key, mac)).collect();
        changed = !stale.is_empty();
        nft.commit(generation, delete_elements(&bound, stale).into_iter().collect())
    })?;
    if changed {
        save_record(bridge)?;
    }
    Ok(())
}

fn same_ip(key: &[u8], ip: Ipv4Addr) -> bool {
    ip_of_key(key) == Some(ip)
}

fn same_mac(key: &[u8], mac: &Mac) -> bool {
    mac_of_key(key, IFNAME_LEN).as_ref() == Some(mac)
}

/// The port `mac` is locked to, if any port holds it.
pub fn port_holding(bridge: &IfName, mac: &Mac) -> Result<Option<String>> {
    let portmac = Set::PortMac.name(bridge);
    with_nft(|nft| Ok(keys_of(nft, &portmac)?.into_iter().find(|key| same_mac(key, mac)).and_then(|k| port_of_key(&k))))
}

/// Whether the network's filter is there, and admits `port`.
pub fn admits(bridge: &IfName, port: &str) -> Result<bool> {
    with_nft(|nft| Ok(admitted(nft, bridge)?.contains(port)))
}

/// Each locked port's MAC and its bound addresses, for `kvm-net status`.
pub fn bindings(bridge: &IfName) -> Result<Vec<Binding>> {
    let [_, portmac, _, bound, _, _] = Set::V4.map(|set| set.name(bridge));
    let port6 = Set::Port6.name(bridge);
    with_nft(|nft| {
        let mut found: Vec<Binding> = keys_of(nft, &portmac)?
            .into_iter()
            .filter_map(|key| {
                Some(Binding {
                    port: port_of_key(&key)?,
                    mac: mac_of_key(&key, IFNAME_LEN)?,
                    ip: None,
                    ipv6: Vec::new(),
                })
            })
            .collect();
        for key in keys_of(nft, &bound)? {
            let (Some(port), Some(mac)) = (port_of_key(&key), mac_of_key(&key, IFNAME_LEN)) else { continue };
            let ip = ip_of_key(&key);
            match found.iter_mut().find(|b| b.port == port && b.mac == mac && b.ip.is_none()) {
                Some(binding) => binding.ip = ip,
                None => found.push(Binding { port, mac, ip, ipv6: Vec::new() }),
            }
        }
        if set_exists(nft, &port6)? {
            for key in keys_of(nft, &port6)? {
                let (Some(port), Some(ip)) = (port_of_key(&key), ip6_of_key(&key)) else { continue };
                if let Some(binding) = found.iter_mut().find(|b| b.port == port) {
                    binding.ipv6.push(ip);
                }
            }
        }
        Ok(found)
    })
}

/// Whether the network's chain is there with exactly the rules `policy`
/// calls for (`None`: no chain at all).
pub fn state(bridge: &IfName, policy: &Policy) -> Result<Option<bool>> {
    let chain = chain_name(bridge);
    with_nft(|nft| {
        let present = comments_of(nft, &chain)?;
        if present.is_empty() && !exists(nft, NfTablesMessage::GetChain(chain_message(&chain)))? {
            return Ok(None);
        }
        let sets = Set::ALL
            .iter()
            .try_fold(true, |all, set| Ok::<_, anyhow::Error>(all && set_exists(nft, &set.name(bridge))?))?;
        let mut whole = sets && comments_of(nft, BASE)? == [dispatch_comment()];
        for spec in chain_specs(bridge, policy) {
            whole &= comments_of(nft, &spec.name)? == spec.comments;
        }
        Ok(Some(whole))
    })
}

/// Removes the network's chain, sets and map elements, and its record; the
/// table goes with the last network that has a filter.
pub fn remove(bridge: &IfName) -> Result<()> {
    let chain = chain_name(bridge);
    with_retries("removing kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let table =
            NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.to_owned())] });
        if !exists(nft, table)? {
            return Ok(Committed::Done);
        }
        let chains: Vec<String> = nft
            .dump(
                BRIDGE,
                NfTablesMessage::GetChain(ChainMessage { attributes: vec![ChainAttribute::Table(TABLE.to_owned())] }),
            )?
            .iter()
            .filter(|c| c.string(1) == Some(TABLE))
            .filter_map(|c| c.string(3).map(str::to_owned))
            .collect();
        let mut changes = Vec::new();
        let chain6 = chain6_name(bridge);
        if chains.iter().all(|c| c == BASE || *c == chain || *c == chain6) {
            if !chains.is_empty() {
                trace(format_args!("{}: the last network with a filter is gone; deleting the table", table_name()));
                let message = NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(TABLE.to_owned())],
                });
                changes.push(change(message, 0, format!("deleting table {}", table_name())));
            }
            return nft.commit(generation, changes);
        }
        let ours = admitted(nft, bridge)?;
        changes.extend(drop_ports(&ours));
        for name in [&chain, &chain6] {
            if chains.contains(name) {
                changes.push(flush(name));
                changes.push(delete_chain(name));
            }
        }
        for set in Set::ALL {
            let name = set.name(bridge);
            if set_exists(nft, &name)? {
                let message = NfTablesMessage::DeleteSet(SetMessage {
                    attributes: vec![SetAttribute::Table(TABLE.to_owned()), SetAttribute::Name(name.clone())],
                });
                changes.push(change(message, 0, format!("deleting set {} {name}", table_name())));
            }
        }
        nft.commit(generation, changes)
    })
    .with_context(|| format!("removing the guest filter of bridge {bridge}"))?;
    bindings::forget(bridge)
}

/// Whether the bridge has a filter (its chain exists): one request.
pub fn present(bridge: &IfName) -> Result<bool> {
    with_nft(|nft| exists(nft, NfTablesMessage::GetChain(chain_message(&chain_name(bridge)))))
}

/// Whether anything of the bridge's filter is left.
pub fn leftover(bridge: &IfName) -> Result<bool> {
    Ok(present(bridge)? || with_nft(|nft| set_exists(nft, &Set::Bound.name(bridge)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_fields_in_register_order() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let key = key_of(Set::Bound, "tap0", &mac, Some(IpAddr::from([192, 168, 100, 10])));
        assert_eq!(key.len(), 28);
        assert_eq!(&key[..5], b"tap0\0");
        assert_eq!(&key[16..24], &[0x52, 0x54, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&key[24..], &[192, 168, 100, 10]);
        assert_eq!(port_of_key(&key).as_deref(), Some("tap0"));
        assert!(same_mac(&key, &mac) && same_ip(&key, Ipv4Addr::new(192, 168, 100, 10)));
        // nft's own numbers for `ifname . ether_addr . ipv4_addr`.
        assert_eq!(Set::Bound.key(), (0x0002_9247, 28));
        assert_eq!(key_of(Set::Allowed, "web1-0", &mac, None).len(), Set::Allowed.key().1);
    }

    #[test]
    fn a_reservation_names_the_taps_that_may_use_its_mac() {
        let mut network = Network::classic();
        let mut dhcp = crate::config::model::Dhcp::defaults_for(network.ipv4.expect("an address"));
        dhcp.hosts.push(crate::config::model::StaticLease {
            mac: "52:54:00:00:00:10".into(),
            ip: Ipv4Addr::new(192, 168, 100, 10),
            ipv6: None,
            name: Some("web1".into()),
            tap: glob::Pattern::new("web1-*").ok(),
        });
        network.dhcp = Some(dhcp);
        let policy = Policy::of(&network).expect("a reservation needs a filter");
        assert!(!policy.deny);
        let web1 = [0x52, 0x54, 0, 0, 0, 0x10];
        assert_eq!(policy.allowed_for("web1-0").collect::<Vec<_>>(), [web1]);
        assert_eq!(policy.allowed_for("vm-a").count(), 0);
        assert!(policy.is_reserved(&web1));
        assert!(Policy::of(&Network::classic()).is_none(), "allow without reservations: no filter");
    }

    #[test]
    fn dhcp_passes_only_about_the_ports_own_mac_and_all_else_to_the_servers_port_is_dropped() {
        let bridge = IfName::parse("br0").expect("a name");
        let rules = dhcp_rules(&bridge);
        let chaddr = payload_into(SECOND, TRANSPORT_HEADER, BOOTP_CHADDR_AT, 6);
        let portmac = lookup(&Set::PortMac.name(&bridge), Register::Reg1, false);
        for (index, rule) in rules[..2].iter().enumerate() {
            assert!(rule.contains(&chaddr) && rule.contains(&portmac), "rule {index} checks chaddr");
            assert!(
                rule.windows(2).any(|w| w == bootp_from_ethernet().as_slice()),
                "rule {index} checks the BOOTP kind"
            );
            assert_eq!(rule.last(), Some(&accept()));
        }
        // The catch-all reads no more than the port: a first fragment too
        // short to show chaddr is dropped by it.
        assert_eq!(rules[2], [dhcp_request(), vec![drop_it()]].concat());
        let reserving = reservation_rules(&bridge);
        assert_eq!(reserving.len(), 3);
        assert_eq!(reserving[2], rules[2], "the same catch-all without deny");
    }

    #[test]
    fn each_kind_of_chain_has_a_comment_per_rule_and_they_differ() {
        let bridge = IfName::parse("br0").expect("a name");
        let mut network = Network { guest_spoofing: Spoofing::Deny, ..Network::classic() };
        network.dhcp = network.ipv4.map(crate::config::model::Dhcp::defaults_for);
        let deny = Policy::of(&network).expect("deny has a filter");
        let specs = chain_specs(&bridge, &deny);
        assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["spoof6-br0", "spoof-br0"]);
        for spec in &specs {
            assert_eq!(spec.comments.len(), spec.rules.len());
        }
        let reserving = Policy { deny: false, ..deny.clone() };
        let only = chain_specs(&bridge, &reserving);
        assert_eq!(only.len(), 1);
        assert_ne!(only[0].comments[0], specs[1].comments[0]);
        // Another prefix, other IPv6 rules: the comments say so.
        let v6 = Policy { scope6: Scope { prefix: "fd00:60::/64".parse().ok(), pool: None }, ..deny };
        assert_ne!(chain_specs(&bridge, &v6)[0].comments, specs[0].comments);
        assert_eq!(chain_specs(&bridge, &v6)[1].comments, specs[1].comments);
    }

    #[test]
    fn a_networks_own_and_hosts_ipv6_addresses_come_from_its_config() {
        let mut network = Network {
            guest_spoofing: Spoofing::Deny,
            ipv6: "fd00:60::1/64".parse().ok(),
            ipv6_autoconfig: Autoconfig::Dhcpv6 {
                range: ("fd00:60::1000".parse().expect("ip"), "fd00:60::1fff".parse().expect("ip")),
            },
            ..Network::classic()
        };
        let mut dhcp = crate::config::model::Dhcp::defaults_for(network.ipv4.expect("an address"));
        dhcp.hosts.push(crate::config::model::StaticLease {
            mac: "52:54:00:00:60:10".into(),
            ip: Ipv4Addr::new(192, 168, 100, 10),
            ipv6: "fd00:60::10".parse().ok(),
            name: None,
            tap: None,
        });
        network.dhcp = Some(dhcp);
        let link_local: Ipv6Addr = "fe80::1".parse().expect("ip");
        let policy = Policy::of(&network).expect("a filter").with_own(&[link_local, link_local]);
        let own: Vec<String> = policy.own6.iter().map(ToString::to_string).collect();
        assert_eq!(own, ["fd00:60::1", "fd00:60::", "fe80::1"]);
        assert_eq!(policy.hosts6, [([0x52, 0x54, 0, 0, 0x60, 0x10], "fd00:60::10".parse().expect("ip"))]);
        assert_eq!(policy.scope6.prefix, "fd00:60::/64".parse().ok());
        assert!(policy.scope6.pool.is_some());
        let port6 = key_of(Set::Port6, "tap0", &[0; 6], Some(IpAddr::V6(link_local)));
        assert_eq!(
            (port6.len(), ip6_of_key(&port6), port_of_key(&port6).as_deref()),
            (32, Some(link_local), Some("tap0"))
        );
        assert_eq!(Set::Port6.key(), ((41 << 6) | 8, 32));
    }
}
