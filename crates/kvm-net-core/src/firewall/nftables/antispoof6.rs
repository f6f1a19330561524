//! The guest filter's IPv6 rules: the chain `spoof6-BRIDGE`, which the
//! network's chain jumps to for every IPv6 frame of a port under
//! `guest_spoofing = "deny"` (after its MAC lock, and after router
//! advertisements, redirects and DHCPv6 server replies are dropped).
//!
//! An address belongs to the first port seen using it, as long as it keeps
//! using it (first come, first served, in the spirit of RFC 6620: privacy
//! and stable-privacy addresses work, EUI-64 or not). A port's frames pass
//! only from the unspecified address (duplicate address detection, router
//! solicitations, MLD reports), from its own link-local addresses and from
//! addresses of the network's prefix; never from an address another port
//! holds, the network's own (the bridge's, its subnet-router anycast), a
//! `dhcp.hosts` entry's `ipv6` but from that entry's MAC, or (DHCPv6) an
//! address of the leased range the port holds no lease of. A neighbour
//! advertisement is judged by its target the same way, so no guest can
//! answer for another's address or the gateway's, and a solicitation's or
//! an advertisement's link-layer address must be the port's own MAC, so no
//! guest can point its address at another's MAC. Claims live in two sets
//! filled from the packet path (`held6-`: the address; `port6-`: port and
//! address), each use renewing them for [`HOLD_MS`]; the lease hook adds
//! a DHCPv6 lease the same way, and a port's claims go with it.

use std::net::Ipv6Addr;

use ipnetwork::Ipv6Network;
use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{Bitwise, DataAttribute, Expressions, MetaKey, Operator, Register};

use super::antispoof::{accept, drop_it, lookup, port_name, source_mac};
use super::numbers::*;
use super::render::{
    cmp, expression, meta, payload_into, raw, u32_attribute, Expression, NETWORK_HEADER, TRANSPORT_HEADER,
};

/// How long an address stays a port's after its last use (or lease
/// renewal), in milliseconds: a day, so that a guest that is merely quiet
/// keeps its addresses, while a departed one's go with its tap at once.
pub const HOLD_MS: u64 = 24 * 60 * 60 * 1000;

/// ICMPv6 types the chain looks at.
const ROUTER_SOLICITATION: u8 = 133;
const NEIGHBOUR_SOLICITATION: u8 = 135;
const NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const MLD2_REPORT: u8 = 143;

/// Neighbour discovery's link-layer address options (RFC 4861, 4.6.1),
/// and the bytes of one for Ethernet.
const SOURCE_LINK_LAYER: u8 = 1;
const TARGET_LINK_LAYER: u8 = 2;
const LINK_LAYER_OPTION: u32 = 8;

/// The names of the sets the rules use.
pub struct Sets6 {
    /// Addresses some port holds (`ipv6_addr`).
    pub held: String,
    /// Which port holds which (`ifname . ipv6_addr`).
    pub port: String,
    /// The network's own addresses (`ipv6_addr`).
    pub own: String,
    /// `dhcp.hosts` addresses (`ipv6_addr`), and the MAC each is for (`ether_addr . ipv6_addr`).
    pub host: String,
    /// See [`Sets6::host`].
    pub host_mac: String,
    /// Each locked port's MAC (`ifname . ether_addr`), which its
    /// link-layer address options must give.
    pub port_mac: String,
}

/// What the rules compare addresses with, besides the sets: the
/// network's prefix (none: link-local only) and its DHCPv6 range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `ipv6`'s subnet.
    pub prefix: Option<Ipv6Network>,
    /// `ipv6_autoconfig = "dhcpv6"`: the leased range.
    pub pool: Option<(Ipv6Addr, Ipv6Addr)>,
}

/// Where the address a rule judges is: the source, the target of a
/// neighbour advertisement, or the target of duplicate address detection
/// (a neighbour solicitation from `::`).
#[derive(Clone, Copy)]
enum Field {
    Source,
    Target,
    Probed,
}

impl Field {
    /// Loads the address into `register`.
    fn load(self, register: Register) -> Expression {
        match self {
            Field::Source => payload_into(register, NETWORK_HEADER, 8, 16),
            Field::Target | Field::Probed => payload_into(register, TRANSPORT_HEADER, 8, 16),
        }
    }

    /// What a frame must be for the field to be there.
    fn only(self) -> Vec<Expression> {
        match self {
            Field::Source => Vec::new(),
            Field::Target => icmpv6(NEIGHBOUR_ADVERTISEMENT),
            Field::Probed => [unspecified(), icmpv6(NEIGHBOUR_SOLICITATION)].concat(),
        }
    }

    /// What becomes of a frame whose address is not the port's to claim:
    /// dropped, but for a probe, which the address's holder must see to
    /// defend it (and which claims nothing then).
    fn refused(self) -> Expression {
        match self {
            Field::Source | Field::Target => drop_it(),
            Field::Probed => accept(),
        }
    }
}

/// The source is `::`.
fn unspecified() -> Vec<Expression> {
    vec![Field::Source.load(Register::Reg1), cmp(Operator::Equal, vec![0; 16])]
}

/// An ICMPv6 message of type `kind`.
fn icmpv6(kind: u8) -> Vec<Expression> {
    vec![
        meta(MetaKey::L4Proto),
        cmp(Operator::Equal, vec![libc::IPPROTO_ICMPV6 as u8]),
        payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 1),
        cmp(Operator::Equal, vec![kind]),
    ]
}

/// The chain, in order: duplicate address detection claims the address
/// it probes for, as the first use does (RFC 6620's tentative binding), so
/// that no guest watching the probe can take the address before its prober
/// sends from it.
pub fn rules(sets: &Sets6, scope: &Scope) -> Vec<Vec<Expression>> {
    let mut rules = judged(Field::Probed, sets, scope);
    rules.push([icmpv6(NEIGHBOUR_SOLICITATION).as_slice(), &unspecified(), &[accept()]].concat());
    rules.extend(unspecified_source());
    for field in [Field::Source, Field::Target] {
        rules.extend(judged(field, sets, scope));
    }
    rules.extend(link_layer_options(sets));
    rules.push(vec![accept()]);
    rules
}

/// Neighbour discovery from a port's own address: what neighbour tables
/// take the address's MAC from (RFC 4861's link-layer address options)
/// is the port's own MAC, so that no guest can point its address at
/// another guest's MAC and have the host (or a guest) send its traffic
/// there. At most the one option each message carries from a host on
/// Ethernet, of its kind and length; the kernel reads every option, so a
/// second one would hide the address it takes.
fn link_layer_options(sets: &Sets6) -> Vec<Vec<Expression>> {
    let mut rules = Vec::new();
    for (kind, options_at, option) in [
        (NEIGHBOUR_SOLICITATION, 24, SOURCE_LINK_LAYER),
        (NEIGHBOUR_ADVERTISEMENT, 24, TARGET_LINK_LAYER),
        (ROUTER_SOLICITATION, 8, SOURCE_LINK_LAYER),
    ] {
        // Anything after one option (a message that short does not match).
        rules.push(
            [
                icmpv6(kind),
                vec![
                    payload_into(Register::Reg1, TRANSPORT_HEADER, options_at + LINK_LAYER_OPTION, 1),
                    cmp(Operator::GreatherThanEqual, vec![0]),
                    drop_it(),
                ],
            ]
            .concat(),
        );
        // An option, but not a link-layer address for Ethernet.
        rules.push(
            [
                icmpv6(kind),
                vec![
                    payload_into(Register::Reg1, TRANSPORT_HEADER, options_at, 2),
                    cmp(Operator::NotEqual, vec![option, 1]),
                    drop_it(),
                ],
            ]
            .concat(),
        );
        // A MAC not the port's.
        rules.push(
            [
                icmpv6(kind),
                vec![
                    port_name(),
                    payload_into(Register::Reg2, TRANSPORT_HEADER, options_at + 2, 6),
                    lookup(&sets.port_mac, Register::Reg1, true),
                    drop_it(),
                ],
            ]
            .concat(),
        );
    }
    rules
}

/// From `::`: only what a host sends before it has an address (a probe
/// passed above).
fn unspecified_source() -> Vec<Vec<Expression>> {
    let mut rules: Vec<Vec<Expression>> = [ROUTER_SOLICITATION, MLD2_REPORT]
        .into_iter()
        .map(|kind| [unspecified(), icmpv6(kind), vec![accept()]].concat())
        .collect();
    rules.push([unspecified(), vec![drop_it()]].concat());
    rules
}

/// The port's name and the field: `ifname . ipv6_addr`.
fn port_and(field: Field) -> Vec<Expression> {
    vec![port_name(), field.load(Register::Reg2)]
}

/// The field's address, and whether the port holds it.
fn not_the_ports(field: Field, sets: &Sets6) -> Vec<Expression> {
    [port_and(field), vec![lookup(&sets.port, Register::Reg1, true)]].concat()
}

/// The rules that judge one address field, then claim it for the port.
fn judged(field: Field, sets: &Sets6, scope: &Scope) -> Vec<Vec<Expression>> {
    let only = field.only();
    let load = || field.load(Register::Reg1);
    let refused = field.refused();
    let mut rules = vec![
        // The network's own addresses.
        vec![load(), lookup(&sets.own, Register::Reg1, false), refused.clone()],
        // Another port's.
        [vec![load(), lookup(&sets.held, Register::Reg1, false)], not_the_ports(field, sets), vec![refused.clone()]]
            .concat(),
    ];
    if let Some((first, last)) = scope.pool {
        // The leased range: only a lease of the port's.
        rules.push([vec![load(), in_range(first, last)], not_the_ports(field, sets), vec![refused.clone()]].concat());
    }
    // A dhcp.hosts address, but from its entry's MAC.
    rules.push(vec![
        load(),
        lookup(&sets.host, Register::Reg1, false),
        source_mac(Register::Reg1),
        field.load(Register::Reg32_02),
        lookup(&sets.host_mac, Register::Reg1, true),
        refused.clone(),
    ]);
    // Neither link-local nor of the network's prefix.
    let mut outside = vec![load(), masked(16, 10), cmp(Operator::NotEqual, link_local_prefix())];
    if let Some(prefix) = scope.prefix {
        outside.extend([
            load(),
            masked(16, prefix.prefix()),
            cmp(Operator::NotEqual, prefix.network().octets().to_vec()),
        ]);
    }
    outside.push(refused.clone());
    rules.push(outside);
    // The port's now (or still): held for another day.
    rules.push(vec![
        load(),
        renew(&sets.held, Register::Reg1),
        port_name(),
        field.load(Register::Reg2),
        renew(&sets.port, Register::Reg1),
    ]);
    // A claim the sets had no room for.
    rules.push([not_the_ports(field, sets), vec![refused]].concat());
    rules.into_iter().map(|rule| [only.clone(), rule].concat()).collect()
}

/// fe80::/10's first bytes.
fn link_local_prefix() -> Vec<u8> {
    let mut prefix = vec![0; 16];
    prefix[..2].copy_from_slice(&[0xfe, 0x80]);
    prefix
}

/// The first `bits` bits of `len` bytes set: a prefix's mask.
fn mask(len: usize, bits: u8) -> Vec<u8> {
    (0..len).map(|index| (0xff00u16 >> usize::from(bits).saturating_sub(index * 8).min(8)) as u8).collect()
}

/// Register 1 masked to its first `bits` bits (of `len` bytes).
fn masked(len: usize, bits: u8) -> Expression {
    let length = u32::try_from(len).unwrap_or(u32::MAX);
    expression(Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(length),
        Bitwise::Mask(DataAttribute::Value(mask(len, bits))),
        Bitwise::Xor(DataAttribute::Value(vec![0; len])),
    ]))
}

/// Register 1 is within `first`..=`last` (nft's `range` expression).
fn in_range(first: Ipv6Addr, last: Ipv6Addr) -> Expression {
    let value = |address: Ipv6Addr| -> Vec<u8> {
        // One nested NFTA_DATA_VALUE: length and type (host order), then the bytes.
        let mut nested = Vec::with_capacity(20);
        nested.extend(20u16.to_ne_bytes());
        nested.extend(NFTA_DATA_VALUE.to_ne_bytes());
        nested.extend(address.octets());
        nested
    };
    raw(
        "range",
        vec![
            u32_attribute(NFTA_RANGE_SREG, Register::Reg1.into()),
            u32_attribute(NFTA_RANGE_OP, libc::NFT_RANGE_EQ as u32),
            DefaultNla::new(NFTA_RANGE_FROM_DATA, value(first)),
            DefaultNla::new(NFTA_RANGE_TO_DATA, value(last)),
        ],
    )
}

/// Adds the key in `register` to `set`, or renews it there, for [`HOLD_MS`].
fn renew(set: &str, register: Register) -> Expression {
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    raw(
        "dynset",
        vec![
            DefaultNla::new(NFTA_DYNSET_SET_NAME, name),
            u32_attribute(NFTA_DYNSET_OP, libc::NFT_DYNSET_OP_UPDATE as u32),
            u32_attribute(NFTA_DYNSET_SREG_KEY, register.into()),
            DefaultNla::new(NFTA_DYNSET_TIMEOUT, HOLD_MS.to_be_bytes().to_vec()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_exactly_the_prefix() {
        assert_eq!(mask(16, 10)[..3], [0xff, 0xc0, 0]);
        assert_eq!(mask(16, 64), [[0xff; 8], [0; 8]].concat());
        assert_eq!(mask(16, 128), vec![0xff; 16]);
        assert_eq!(mask(16, 0), vec![0; 16]);
        assert_eq!(mask(16, 121)[15], 0x80);
    }

    #[test]
    fn every_judging_rule_of_a_target_reads_only_neighbour_advertisements() {
        let sets = Sets6 {
            held: "held6-br0".into(),
            port: "port6-br0".into(),
            own: "own6-br0".into(),
            host: "host6-br0".into(),
            host_mac: "machost6-br0".into(),
            port_mac: "portmac-br0".into(),
        };
        let scope = Scope { prefix: "fd00:60::/64".parse().ok(), pool: None };
        let target = judged(Field::Target, &sets, &scope);
        assert!(target.iter().all(|rule| rule.starts_with(&icmpv6(NEIGHBOUR_ADVERTISEMENT))));
        let with_pool =
            Scope { pool: Some(("fd00:60::1000".parse().expect("ip"), "fd00:60::1fff".parse().expect("ip"))), ..scope };
        assert_eq!(judged(Field::Source, &sets, &with_pool).len(), judged(Field::Source, &sets, &scope).len() + 1);
        assert_eq!(rules(&sets, &scope).last(), Some(&vec![accept()]));
    }
}
