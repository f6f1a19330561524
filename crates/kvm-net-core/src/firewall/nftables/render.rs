//! The plan's rules as nf_tables expressions (what `nft --debug=netlink`
//! shows), and the comment each rule carries: `kvm-net:BRIDGE` and a
//! fingerprint of its expressions, which is how a later run tells its own,
//! unchanged rules from anything else in its chains.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::IpNetwork;
use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute, Lookup, Meta, MetaKey,
    Operator, Payload, Register, Verdict, VerdictAttribute,
};

use super::numbers::*;
use crate::firewall::plan::{Action, Match, PortMapping, PortRange, Rule};
use crate::ifname::{IfName, MAX_IFNAME_LEN};

/// One expression of a rule, as the rule message lists it.
pub type Expression = ListAttribute<ExpressionAttribute>;

/// `NF_DROP` and `NF_ACCEPT`, the verdict codes the crate does not name, as it carries them.
pub(super) const NF_DROP: u32 = libc::NF_DROP as u32;
pub(super) const NF_ACCEPT: u32 = libc::NF_ACCEPT as u32;
/// Where a payload expression reads: the link layer, network and transport headers.
pub(super) const LINK_HEADER: u32 = libc::NFT_PAYLOAD_LL_HEADER as u32;
pub(super) const NETWORK_HEADER: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
pub(super) const TRANSPORT_HEADER: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;

pub(super) fn expression(expressions: Expressions) -> Expression {
    expressions.into()
}

pub(super) fn raw(name: &str, attributes: Vec<DefaultNla>) -> Expression {
    Expressions::Other { expression_type: name.to_owned(), attributes }.into()
}

pub(super) fn u32_attribute(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

pub(super) fn cmp(operator: Operator, data: Vec<u8>) -> Expression {
    expression(Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(operator),
        Cmp::Data(DataAttribute::Value(data)),
    ]))
}

fn equality(negate: bool) -> Operator {
    if negate {
        Operator::NotEqual
    } else {
        Operator::Equal
    }
}

pub(super) fn meta(key: MetaKey) -> Expression {
    expression(Expressions::Meta(vec![Meta::DestinationRegister(Register::Reg1), Meta::Key(key)]))
}

fn payload(base: u32, offset: u32, len: u32) -> Expression {
    payload_into(Register::Reg1, base, offset, len)
}

pub(super) fn payload_into(register: Register, base: u32, offset: u32, len: u32) -> Expression {
    expression(Expressions::Payload(vec![
        Payload::DestinationRegister(register),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ]))
}

fn bitwise(mask: Vec<u8>) -> Expression {
    let xor = vec![0; mask.len()];
    let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
    expression(Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(len),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ]))
}

/// An interface name as nf_tables compares it: IFNAMSIZ bytes, NUL-padded.
pub fn ifname_key(name: &IfName) -> Vec<u8> {
    let mut key = vec![0; MAX_IFNAME_LEN + 1];
    key[..name.as_str().len()].copy_from_slice(name.as_str().as_bytes());
    key
}

/// Loads an address of the network header and compares it with `net`.
fn address(offset_v4: u32, offset_v6: u32, net: &IpNetwork, negate: bool) -> Vec<Expression> {
    let (offset, bytes, mask): (u32, Vec<u8>, Vec<u8>) = match net {
        IpNetwork::V4(v4) => (offset_v4, v4.network().octets().to_vec(), v4.mask().octets().to_vec()),
        IpNetwork::V6(v6) => (offset_v6, v6.network().octets().to_vec(), v6.mask().octets().to_vec()),
    };
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let mut expressions = vec![payload(NETWORK_HEADER, offset, len)];
    if mask.iter().any(|b| *b != 0xff) {
        expressions.push(bitwise(mask));
    }
    expressions.push(cmp(equality(negate), bytes));
    expressions
}

fn match_expressions(condition: &Match) -> Vec<Expression> {
    match condition {
        Match::InIface { name, negate } => vec![meta(MetaKey::Iifname), cmp(equality(*negate), ifname_key(name))],
        Match::OutIface { name, negate } => vec![meta(MetaKey::Oifname), cmp(equality(*negate), ifname_key(name))],
        // Source: IPv4 offset 12, IPv6 offset 8; destination: 16 and 24.
        Match::Source { net, negate } => address(12, 8, net, *negate),
        Match::Destination { net, negate } => address(16, 24, net, *negate),
        Match::Protocol { protocol, destination_port } => {
            let mut expressions = vec![meta(MetaKey::L4Proto), cmp(Operator::Equal, vec![protocol.number()])];
            if let Some(ports) = destination_port {
                expressions.push(payload(TRANSPORT_HEADER, 2, 2));
                if ports.is_single() {
                    expressions.push(cmp(Operator::Equal, ports.first.to_be_bytes().to_vec()));
                } else {
                    // Big-endian bytes compare as the numbers do.
                    expressions.push(cmp(Operator::GreatherThanEqual, ports.first.to_be_bytes().to_vec()));
                    expressions.push(cmp(Operator::LessThanEqual, ports.last.to_be_bytes().to_vec()));
                }
            }
            expressions
        }
        Match::SourcePort { protocol, ports } => vec![
            meta(MetaKey::L4Proto),
            cmp(Operator::Equal, vec![protocol.number()]),
            payload(TRANSPORT_HEADER, 0, 2),
            // Big-endian bytes compare as the numbers do.
            cmp(Operator::GreatherThanEqual, ports.first.to_be_bytes().to_vec()),
            cmp(Operator::LessThanEqual, ports.last.to_be_bytes().to_vec()),
        ],
        Match::Icmpv6 { kind } => vec![
            meta(MetaKey::L4Proto),
            cmp(Operator::Equal, vec![libc::IPPROTO_ICMPV6 as u8]),
            payload(TRANSPORT_HEADER, 0, 1),
            cmp(Operator::Equal, vec![*kind]),
        ],
        Match::LocalDestination => vec![
            raw(
                "fib",
                vec![
                    u32_attribute(NFTA_FIB_DREG, Register::Reg1.into()),
                    u32_attribute(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE),
                    u32_attribute(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR),
                ],
            ),
            // The address type is a host-order u32.
            cmp(Operator::Equal, u32::from(libc::RTN_LOCAL).to_ne_bytes().to_vec()),
        ],
        Match::Dnat { negate } => vec![
            raw(
                "ct",
                vec![
                    u32_attribute(NFTA_CT_DREG, Register::Reg1.into()),
                    u32_attribute(NFTA_CT_KEY, libc::NFT_CT_STATUS as u32),
                ],
            ),
            bitwise(IPS_DST_NAT.to_ne_bytes().to_vec()),
            cmp(if *negate { Operator::Equal } else { Operator::NotEqual }, vec![0; 4]),
        ],
        Match::EstablishedOrRelated { negate } => vec![
            raw(
                "ct",
                vec![
                    u32_attribute(NFTA_CT_DREG, Register::Reg1.into()),
                    u32_attribute(NFTA_CT_KEY, libc::NFT_CT_STATE as u32),
                ],
            ),
            bitwise(CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec()),
            // Established or related: the masked state is not zero.
            cmp(if *negate { Operator::Equal } else { Operator::NotEqual }, vec![0; 4]),
        ],
    }
}

/// A verdict, loaded into the verdict register.
pub fn verdict(code: Verdict, chain: Option<&str>) -> DataAttribute {
    let mut attributes = vec![VerdictAttribute::Code(code)];
    if let Some(chain) = chain {
        attributes.push(VerdictAttribute::Chain(chain.to_owned()));
    }
    DataAttribute::Verdict(attributes)
}

pub(super) fn set_verdict(code: Verdict) -> Expression {
    expression(Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(verdict(code, None)),
    ]))
}

/// Loads `value` into `register`.
fn load(register: Register, value: Vec<u8>) -> Expression {
    expression(Expressions::Immediate(vec![
        Immediate::DestinationRegister(register),
        Immediate::Data(DataAttribute::Value(value)),
    ]))
}

/// A port forward: the guest's address into register 1, its port (if it
/// changes) into register 2, then `dnat`. A range mapped one to one looks
/// the port up in an anonymous map (nft's `dnat to IP:FIRST-LAST` would be
/// a pool: any port of the range).
fn dnat_expressions(to: IpAddr, ports: &PortMapping, maps: &mut Vec<AnonymousMap>) -> Vec<Expression> {
    let mut expressions = Vec::new();
    let (family, address) = match to {
        IpAddr::V4(v4) => (libc::NFPROTO_IPV4, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::NFPROTO_IPV6, v6.octets().to_vec()),
    };
    let mut nat = vec![
        u32_attribute(NFTA_NAT_TYPE, libc::NFT_NAT_DNAT as u32),
        u32_attribute(NFTA_NAT_FAMILY, family as u32),
        u32_attribute(NFTA_NAT_REG_ADDR_MIN, Register::Reg1.into()),
    ];
    match ports {
        PortMapping::Same => {}
        PortMapping::To(port) => expressions.push(load(Register::Reg2, port.to_be_bytes().to_vec())),
        PortMapping::Shift { from, to } => {
            let map = AnonymousMap::ports(*from, *to);
            expressions.push(payload_into(Register::Reg2, TRANSPORT_HEADER, 2, 2));
            expressions.push(expression(Expressions::Lookup(vec![
                Lookup::Set(ANONYMOUS_MAP.to_owned()),
                Lookup::SetId(map.id),
                Lookup::SourceRegister(Register::Reg2),
                Lookup::DestinationRegister(Register::Reg2),
            ])));
            maps.push(map);
        }
    }
    if *ports != PortMapping::Same {
        nat.push(u32_attribute(NFTA_NAT_REG_PROTO_MIN, Register::Reg2.into()));
        nat.push(u32_attribute(NFTA_NAT_REG_PROTO_MAX, Register::Reg2.into()));
    }
    expressions.push(load(Register::Reg1, address));
    expressions.push(raw("nat", nat));
    expressions
}

/// The name an anonymous set is created with: the kernel numbers it.
pub const ANONYMOUS_MAP: &str = "__map%d";

/// An anonymous map a rule looks up: made in the rule's batch (and found
/// there by its ID), bound to the rule, and gone with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnonymousMap {
    /// Its ID in the batch.
    pub id: u32,
    /// nft's data type of its keys and its values (`inet_service`).
    pub data_type: u32,
    /// The length of its keys and values, in bytes.
    pub len: u32,
    /// Its elements: key, value.
    pub elements: Vec<(Vec<u8>, Vec<u8>)>,
}

impl AnonymousMap {
    /// Each port of `from` to the port at the same place in `to`.
    fn ports(from: PortRange, to: PortRange) -> Self {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1 << 16);
        let elements = (from.first..=from.last)
            .zip(to.first..=to.last)
            .map(|(host, guest)| (host.to_be_bytes().to_vec(), guest.to_be_bytes().to_vec()))
            .collect();
        Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), data_type: TYPE_INET_SERVICE, len: 2, elements }
    }
}

fn action_expressions(action: &Action, maps: &mut Vec<AnonymousMap>) -> Vec<Expression> {
    match action {
        Action::Dnat { to, ports } => dnat_expressions(*to, ports, maps),
        Action::Accept => vec![set_verdict(Verdict::Other(NF_ACCEPT))],
        Action::Drop => vec![set_verdict(Verdict::Other(NF_DROP))],
        Action::Return => vec![set_verdict(Verdict::Return)],
        Action::Masquerade { ports: None } => vec![raw("masq", Vec::new())],
        Action::Masquerade { ports: Some((low, high)) } => {
            vec![
                load(Register::Reg1, low.to_be_bytes().to_vec()),
                load(Register::Reg2, high.to_be_bytes().to_vec()),
                raw(
                    "masq",
                    vec![
                        u32_attribute(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED),
                        u32_attribute(NFTA_MASQ_REG_PROTO_MIN, Register::Reg1.into()),
                        u32_attribute(NFTA_MASQ_REG_PROTO_MAX, Register::Reg2.into()),
                    ],
                ),
            ]
        }
        // nf_tables has no checksum-filling target: the plan's Checksum chains are not rendered.
        Action::ChecksumFill => Vec::new(),
    }
}

/// A rule's expressions: its matches, then its action; the anonymous maps
/// it looks up go into `maps`, to be made in the same batch before it.
pub fn rule_expressions(rule: &Rule, maps: &mut Vec<AnonymousMap>) -> Vec<Expression> {
    rule.matches.iter().flat_map(match_expressions).chain(action_expressions(&rule.action, maps)).collect()
}

/// `iifname vmap @MAP` (or `oifname`): the dispatch from a base chain to
/// each bridge's chain through a verdict map keyed by interface name.
pub fn dispatch_expressions(key: MetaKey, map: &str) -> Vec<Expression> {
    vec![
        meta(key),
        expression(Expressions::Lookup(vec![
            Lookup::Set(map.to_owned()),
            Lookup::SourceRegister(Register::Reg1),
            Lookup::DestinationRegister(Register::Verdict),
        ])),
    ]
}

/// Bumped whenever the expressions a plan renders to change, so that rules
/// written by an earlier kvm-net no longer pass for current ones.
const RENDERING: u32 = 1;

/// FNV-1a: tiny, and stable across releases and platforms (unlike std's
/// default hasher, whose algorithm is not specified).
struct Fnv(u32);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        u64::from(self.0)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u32::from(*byte)).wrapping_mul(0x0100_0193);
        }
    }
}

/// The user data of a rule: `nft` shows it as `comment "TAG FINGERPRINT"`,
/// the fingerprint a hash of what the rule is (the plan's rule, or a
/// dispatch). Comparing these is how kvm-net tells its own, unchanged rules
/// from anything else, without decoding the kernel's expressions.
pub fn comment(tag: &str, what: &impl Hash) -> Vec<u8> {
    let mut hasher = Fnv(0x811c_9dc5);
    RENDERING.hash(&mut hasher);
    what.hash(&mut hasher);
    let mut text = format!("{tag} {:08x}", hasher.0).into_bytes();
    text.push(0);
    let mut data = vec![UDATA_COMMENT, u8::try_from(text.len()).unwrap_or(u8::MAX)];
    data.extend(text);
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::plan::Protocol;

    #[test]
    fn a_source_port_range_is_the_protocol_then_the_ports_bounds() {
        let ports = PortRange { first: 1024, last: 5999 };
        let expressions = match_expressions(&Match::SourcePort { protocol: Protocol::Udp, ports });
        assert_eq!(
            expressions,
            vec![
                meta(MetaKey::L4Proto),
                cmp(Operator::Equal, vec![17]),
                payload(TRANSPORT_HEADER, 0, 2),
                cmp(Operator::GreatherThanEqual, 1024u16.to_be_bytes().to_vec()),
                cmp(Operator::LessThanEqual, 5999u16.to_be_bytes().to_vec()),
            ]
        );
    }

    #[test]
    fn a_masquerade_with_ports_loads_both_ends_then_masquerades_from_them() {
        let mut maps = Vec::new();
        let rule = Rule { matches: Vec::new(), action: Action::Masquerade { ports: Some((6001, 65535)) } };
        let expressions = rule_expressions(&rule, &mut maps);
        assert_eq!(expressions.len(), 3, "{expressions:?}");
        assert_eq!(expressions[0], load(Register::Reg1, 6001u16.to_be_bytes().to_vec()));
        assert_eq!(expressions[1], load(Register::Reg2, 65535u16.to_be_bytes().to_vec()));
        assert!(maps.is_empty(), "no anonymous map for a masquerade");
        let plain =
            rule_expressions(&Rule { matches: Vec::new(), action: Action::Masquerade { ports: None } }, &mut maps);
        assert_eq!(plain, vec![raw("masq", Vec::new())]);
    }

    #[test]
    fn a_range_forwarded_one_to_one_looks_each_port_up_in_a_map_of_its_own() {
        let mut maps = Vec::new();
        let (from, to) = (PortRange { first: 8000, last: 8002 }, PortRange { first: 9000, last: 9002 });
        let rule = Rule {
            matches: Vec::new(),
            action: Action::Dnat { to: IpAddr::from([192, 168, 100, 10]), ports: PortMapping::Shift { from, to } },
        };
        let expressions = rule_expressions(&rule, &mut maps);
        assert_eq!(maps.len(), 1);
        let pairs: Vec<(u16, u16)> = maps[0]
            .elements
            .iter()
            .map(|(k, v)| (u16::from_be_bytes([k[0], k[1]]), u16::from_be_bytes([v[0], v[1]])))
            .collect();
        assert_eq!(pairs, [(8000, 9000), (8001, 9001), (8002, 9002)]);
        assert_eq!(expressions[0], payload_into(Register::Reg2, TRANSPORT_HEADER, 2, 2), "the port sent to, first");
        assert_eq!(expressions.last(), Some(&raw("nat", expected_nat_attributes())));
    }

    fn expected_nat_attributes() -> Vec<DefaultNla> {
        vec![
            u32_attribute(NFTA_NAT_TYPE, libc::NFT_NAT_DNAT as u32),
            u32_attribute(NFTA_NAT_FAMILY, libc::NFPROTO_IPV4 as u32),
            u32_attribute(NFTA_NAT_REG_ADDR_MIN, Register::Reg1.into()),
            u32_attribute(NFTA_NAT_REG_PROTO_MIN, Register::Reg2.into()),
            u32_attribute(NFTA_NAT_REG_PROTO_MAX, Register::Reg2.into()),
        ]
    }

    #[test]
    fn interface_names_are_padded_to_ifnamsiz() {
        let key = ifname_key(&IfName::parse("br0").expect("valid"));
        assert_eq!(key.len(), 16);
        assert_eq!(&key[..4], b"br0\0");
    }

    #[test]
    fn comments_are_nft_comments_and_tell_rules_apart() {
        let accept = Rule { matches: Vec::new(), action: Action::Accept };
        let drop = Rule { matches: Vec::new(), action: Action::Drop };
        let a = comment("kvm-net:br0", &accept);
        assert_eq!((a[0], usize::from(a[1])), (UDATA_COMMENT, a.len() - 2));
        assert!(a[2..].starts_with(b"kvm-net:br0 "));
        assert_eq!(a.last(), Some(&0));
        assert_ne!(a, comment("kvm-net:br0", &drop));
        assert_eq!(a, comment("kvm-net:br0", &accept));
        // Stable: a fingerprint written by one run is recognised by the next.
        assert_eq!(&a[2..a.len() - 1], b"kvm-net:br0 07b13f04");
    }
}
