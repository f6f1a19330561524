//! `guest_spoofing = "deny"`: guests that cannot impersonate each other, in
//! nf_tables' bridge family (`table bridge kvm_net`), whichever backend
//! writes the network's other rules. One base chain at bridge prerouting,
//! priority -300, sees every frame a port sends before the bridge learns its
//! source (a dropped frame never moves the forwarding database), bridged or
//! bound for the host alike, with or without br_netfilter. It dispatches by
//! port name (`iifname vmap @ports`: only ports kvm-net attached) to the
//! network's chain `spoof-BRIDGE`, which
//!
//! - locks each port to the first MAC it sends from (a set filled from the
//!   packet path: no daemon), unless another port holds that MAC already;
//! - lets IPv4 and ARP through only from the address the network's DHCP
//!   server leased to that MAC on that port (`bound-BRIDGE`, filled by the
//!   lease hook, [`crate::lease`]), plus what a client needs before it has a
//!   lease (DHCP from 0.0.0.0, RFC 5227 ARP probes);
//! - drops DHCP and DHCPv6 server replies, router advertisements and
//!   redirects from guests, and every other kind of frame but IPv6 (link-local
//!   and neighbour discovery keep working) and RARP (QEMU's announcement after
//!   a migration).
//!
//! A port's elements go when it is detached, and before a port of the same
//! name is admitted (tap names are reused).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use netlink_packet_core::DefaultNla;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, Expressions, Hook, InetHookNumber, ListAttribute, Lookup, MetaKey,
    NfTablesMessage, Operator, Register, RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage, Verdict,
};
use netlink_packet_netfilter::NetfilterProtoFamily;

use super::render::{
    cmp, comment, expression, meta, payload_into, raw, set_verdict, u32_attribute, verdict, Expression, NETWORK_HEADER,
    NF_ACCEPT, NF_DROP, TRANSPORT_HEADER,
};
use super::socket::{with_nft, Change, Committed, Nft, Owned};
use super::{key_in_host_order, with_retries, TABLE};
use crate::ifname::IfName;
use crate::trace::trace;
use crate::wire::{self, NLM_F_APPEND, NLM_F_CREATE};

/// nf_tables' bridge family.
const BRIDGE: NetfilterProtoFamily = NetfilterProtoFamily::Bridge;
/// The base chain, and the map of ports it dispatches through.
const BASE: &str = "prerouting";
const PORTS: &str = "ports";
/// Bumped whenever the chain's rules change, so that an older kvm-net's are rewritten.
const RULES_VERSION: u32 = 1;

/// nft's data types (for `nft list`): interface names, MAC and IPv4 addresses.
const TYPE_IFNAME: u32 = 41;
const TYPE_ETHERADDR: u32 = 9;
const TYPE_IPADDR: u32 = 7;
/// How nft numbers a concatenation of data types.
const TYPE_BITS: u32 = 6;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// Field lengths in a concatenated key: each field takes whole 32-bit registers.
const IFNAME_LEN: usize = 16;
const MAC_LEN: usize = 8;
const IPV4_LEN: usize = 4;
/// `NFT_PAYLOAD_LL_HEADER`.
const LINK_HEADER: u32 = 0;
/// `NFT_LOOKUP_F_INV`.
const LOOKUP_INVERTED: u32 = 1;
/// The `dynset` expression (the crate has none): `add @SET { KEY }` from the packet path.
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFT_DYNSET_OP_ADD: u32 = 0;
/// Attributes of set element dumps.
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_RULE_USERDATA: u16 = 7;
/// Ether types, ports and ICMPv6 types the chain looks at.
const ETH_IP: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ETH_RARP: u16 = 0x8035;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const DHCP_SERVER: u16 = 67;
const DHCP_CLIENT: u16 = 68;
const DHCPV6_SERVER: u16 = 547;
const ROUTER_ADVERTISEMENT: u8 = 134;
const REDIRECT: u8 = 137;

/// The per-network sets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Set {
    /// Ports whose MAC is locked (`ifname`).
    Locked,
    /// Each locked port's MAC (`ifname . ether_addr`).
    PortMac,
    /// MACs some port holds (`ether_addr`).
    Taken,
    /// Addresses leased to a MAC on a port (`ifname . ether_addr . ipv4_addr`).
    Bound,
}

impl Set {
    const ALL: [Set; 4] = [Set::Locked, Set::PortMac, Set::Taken, Set::Bound];

    fn name(self, bridge: &IfName) -> String {
        let prefix = match self {
            Set::Locked => "locked",
            Set::PortMac => "portmac",
            Set::Taken => "taken",
            Set::Bound => "bound",
        };
        format!("{prefix}-{bridge}")
    }

    /// nft's type number and the key length.
    fn key(self) -> (u32, usize) {
        let concat = |types: &[u32]| types.iter().fold(0, |all, t| (all << TYPE_BITS) | t);
        match self {
            Set::Locked => (TYPE_IFNAME, IFNAME_LEN),
            Set::PortMac => (concat(&[TYPE_IFNAME, TYPE_ETHERADDR]), IFNAME_LEN + MAC_LEN),
            Set::Taken => (TYPE_ETHERADDR, 6),
            Set::Bound => (concat(&[TYPE_IFNAME, TYPE_ETHERADDR, TYPE_IPADDR]), IFNAME_LEN + MAC_LEN + IPV4_LEN),
        }
    }

    /// Filled from the packet path (`flags dynamic`), or only by kvm-net.
    fn flags(self) -> SetFlags {
        match self {
            Set::Bound => SetFlags::empty(),
            _ => SetFlags::Eval,
        }
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// What binds a guest to its port, as the sets have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The port (tap) name.
    pub port: String,
    /// The MAC the port is locked to.
    pub mac: Mac,
    /// The address leased to that MAC on that port, if any.
    pub ip: Option<Ipv4Addr>,
}

fn chain_name(bridge: &IfName) -> String {
    format!("spoof-{bridge}")
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
fn key_of(set: Set, port: &str, mac: Option<&Mac>, ip: Option<Ipv4Addr>) -> Vec<u8> {
    match set {
        Set::Locked => ifname_bytes(port),
        Set::Taken => mac.map_or_else(Vec::new, |m| m.to_vec()),
        Set::PortMac => [ifname_bytes(port), mac.map_or_else(Vec::new, mac_bytes)].concat(),
        Set::Bound => [
            ifname_bytes(port),
            mac.map_or_else(Vec::new, mac_bytes),
            ip.map_or_else(Vec::new, |ip| ip.octets().to_vec()),
        ]
        .concat(),
    }
}

/// The name a key starts with (`Locked`, `PortMac`, `Bound`).
fn port_of_key(key: &[u8]) -> Option<String> {
    let name = key.get(..IFNAME_LEN)?;
    let end = name.iter().position(|b| *b == 0).unwrap_or(IFNAME_LEN);
    std::str::from_utf8(&name[..end]).ok().map(str::to_owned)
}

fn mac_of_key(key: &[u8], at: usize) -> Option<Mac> {
    key.get(at..at + 6).and_then(|m| <Mac>::try_from(m).ok())
}

// The chain's rules, one expression builder each.

fn ether_type(kind: u16) -> Vec<Expression> {
    vec![payload_into(Register::Reg1, LINK_HEADER, 12, 2), cmp(Operator::Equal, kind.to_be_bytes().to_vec())]
}

fn l4proto(number: u8) -> Vec<Expression> {
    vec![meta(MetaKey::L4Proto), cmp(Operator::Equal, vec![number])]
}

fn lookup(set: &str, register: Register, inverted: bool) -> Expression {
    let mut attributes = vec![Lookup::Set(set.to_owned()), Lookup::SourceRegister(register)];
    if inverted {
        attributes.push(Lookup::Flags(LOOKUP_INVERTED));
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
            u32_attribute(NFTA_DYNSET_OP, NFT_DYNSET_OP_ADD),
            u32_attribute(NFTA_DYNSET_SREG_KEY, register.into()),
        ],
    )
}

/// The port's name into register 1 (16 bytes).
fn port_name() -> Expression {
    meta(MetaKey::Iifname)
}

/// The frame's source MAC into `register`.
fn source_mac(register: Register) -> Expression {
    payload_into(register, LINK_HEADER, 6, 6)
}

fn accept() -> Expression {
    set_verdict(Verdict::Other(NF_ACCEPT))
}

fn drop_it() -> Expression {
    set_verdict(Verdict::Other(NF_DROP))
}

/// `spoof-BRIDGE`, in order.
fn chain_rules(bridge: &IfName) -> Vec<Vec<Expression>> {
    let [locked, portmac, taken, bound] = Set::ALL.map(|set| set.name(bridge));
    // A concatenation's second field starts at register 2 (after the 16-byte
    // name), its third at 32-bit register 6 (after the 8-byte MAC).
    let (second, third) = (Register::Reg2, Register::Reg32_06);
    let mut rules = vec![
        // A port's first frame, from a MAC another port holds.
        vec![
            port_name(),
            lookup(&locked, Register::Reg1, true),
            source_mac(Register::Reg1),
            lookup(&taken, Register::Reg1, false),
            drop_it(),
        ],
        // A port's first frame: lock the port to its MAC.
        vec![
            port_name(),
            lookup(&locked, Register::Reg1, true),
            port_name(),
            add_to(&locked, Register::Reg1),
            port_name(),
            source_mac(second),
            add_to(&portmac, Register::Reg1),
            source_mac(Register::Reg1),
            add_to(&taken, Register::Reg1),
        ],
        // Any other MAC than the port's.
        vec![port_name(), source_mac(second), lookup(&portmac, Register::Reg1, true), drop_it()],
    ];
    // Servers no guest may be: DHCP, DHCPv6, router advertisements, redirects.
    let source_port = |port: u16| {
        vec![payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 2), cmp(Operator::Equal, port.to_be_bytes().to_vec())]
    };
    let icmpv6_type =
        |kind: u8| vec![payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 1), cmp(Operator::Equal, vec![kind])];
    rules.push([ether_type(ETH_IP), l4proto(UDP), source_port(DHCP_SERVER), vec![drop_it()]].concat());
    rules.push([ether_type(ETH_IPV6), l4proto(UDP), source_port(DHCPV6_SERVER), vec![drop_it()]].concat());
    for kind in [ROUTER_ADVERTISEMENT, REDIRECT] {
        rules.push([ether_type(ETH_IPV6), l4proto(ICMPV6), icmpv6_type(kind), vec![drop_it()]].concat());
    }
    // IPv4: a DHCP client without an address yet, or from the leased address.
    let ports = [DHCP_CLIENT.to_be_bytes(), DHCP_SERVER.to_be_bytes()].concat();
    rules.push(
        [
            ether_type(ETH_IP),
            vec![
                payload_into(Register::Reg1, NETWORK_HEADER, 12, 4),
                cmp(Operator::Equal, vec![0; 4]),
                payload_into(Register::Reg1, NETWORK_HEADER, 16, 4),
                cmp(Operator::Equal, vec![0xff; 4]),
            ],
            l4proto(UDP),
            vec![payload_into(Register::Reg1, TRANSPORT_HEADER, 0, 4), cmp(Operator::Equal, ports), accept()],
        ]
        .concat(),
    );
    rules.push(
        [
            ether_type(ETH_IP),
            vec![
                port_name(),
                source_mac(second),
                payload_into(third, NETWORK_HEADER, 12, 4),
                lookup(&bound, Register::Reg1, false),
                accept(),
            ],
        ]
        .concat(),
    );
    rules.push([ether_type(ETH_IP), vec![drop_it()]].concat());
    // ARP: a probe (sender address 0.0.0.0) from the port's MAC, or from the leased address.
    let sender_mac = |register| payload_into(register, NETWORK_HEADER, 8, 6);
    rules.push(
        [
            ether_type(ETH_ARP),
            vec![
                payload_into(Register::Reg1, NETWORK_HEADER, 14, 4),
                cmp(Operator::Equal, vec![0; 4]),
                port_name(),
                sender_mac(second),
                lookup(&portmac, Register::Reg1, false),
                accept(),
            ],
        ]
        .concat(),
    );
    rules.push(
        [
            ether_type(ETH_ARP),
            vec![
                port_name(),
                sender_mac(second),
                payload_into(third, NETWORK_HEADER, 14, 4),
                lookup(&bound, Register::Reg1, false),
                accept(),
            ],
        ]
        .concat(),
    );
    rules.push([ether_type(ETH_ARP), vec![drop_it()]].concat());
    // IPv6 (link-local, neighbour discovery; servers dropped above) and RARP.
    rules.push([ether_type(ETH_IPV6), vec![accept()]].concat());
    rules.push([ether_type(ETH_RARP), vec![accept()]].concat());
    rules.push(vec![drop_it()]);
    rules
}

/// The comment each rule of the chain carries: the bridge, and which rule.
fn rule_comments(bridge: &IfName) -> Vec<Vec<u8>> {
    let tag = format!("kvm-net:{bridge}");
    (0..chain_rules(bridge).len()).map(|index| comment(&tag, &("antispoof", RULES_VERSION, index))).collect()
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

fn add_elements(set: &str, keys: Vec<Vec<u8>>) -> Option<Change> {
    if keys.is_empty() {
        return None;
    }
    let message = NfTablesMessage::NewSetElement(elements(set, keys.into_iter().map(|k| vec![key(k)]).collect()));
    Some(change(message, NLM_F_CREATE, format!("adding to set {} {set}", table_name())))
}

fn delete_elements(set: &str, keys: Vec<Vec<u8>>) -> Option<Change> {
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

/// The changes that take away everything bound to `port` (its lock, its
/// MAC's claim, its addresses), from what the sets hold now.
fn forget_port(nft: &mut Nft, bridge: &IfName, port: &str, changes: &mut Vec<Change>) -> Result<()> {
    let [locked, portmac, taken, bound] = Set::ALL.map(|set| set.name(bridge));
    let ours = |entries: Vec<(Vec<u8>, Option<String>)>| -> Vec<Vec<u8>> {
        entries.into_iter().map(|(key, _)| key).filter(|key| port_of_key(key).as_deref() == Some(port)).collect()
    };
    let macs = ours(set_elements(nft, &portmac)?);
    let held: Vec<Vec<u8>> =
        macs.iter().filter_map(|key| mac_of_key(key, IFNAME_LEN)).map(|mac| mac.to_vec()).collect();
    let locks = ours(set_elements(nft, &locked)?);
    let bindings = ours(set_elements(nft, &bound)?);
    changes.extend(delete_elements(&bound, bindings));
    changes.extend(delete_elements(&portmac, macs));
    changes.extend(delete_elements(&locked, locks));
    let still_taken: HashSet<Vec<u8>> = set_elements(nft, &taken)?.into_iter().map(|(key, _)| key).collect();
    changes.extend(delete_elements(&taken, held.into_iter().filter(|mac| still_taken.contains(mac)).collect()));
    Ok(())
}

/// Makes the network's filter whole: table, base chain and map, its sets
/// and chain, and a map element for each of `ports` (the bridge's ports
/// now). Where the sets had to be made anew (the ruleset was flushed),
/// what `known` says is put back: each leased guest's lock and address.
pub fn ensure(bridge: &IfName, ports: &[String], mut known: impl FnMut() -> Result<Vec<Binding>>) -> Result<()> {
    let chain = chain_name(bridge);
    with_retries("installing kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let mut changes = Vec::new();
        let table =
            NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.to_owned())] });
        if !exists(nft, table)? {
            trace(format_args!("{}: made anew", table_name()));
            let message =
                NfTablesMessage::NewTable(TableMessage { attributes: vec![TableAttribute::Name(TABLE.to_owned())] });
            changes.push(change(message, NLM_F_CREATE, format!("creating table {}", table_name())));
        }
        if comments_of(nft, BASE)? != [dispatch_comment()] {
            let attributes = vec![
                SetAttribute::Table(TABLE.to_owned()),
                SetAttribute::Name(PORTS.to_owned()),
                SetAttribute::Flags(SetFlags::Map),
                SetAttribute::KeyType(TYPE_IFNAME),
                SetAttribute::KeyLen(IFNAME_LEN as u32),
                SetAttribute::DataType(NFT_DATA_VERDICT),
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
        }
        let mut made_anew = false;
        for set in Set::ALL {
            let name = set.name(bridge);
            if set_exists(nft, &name)? {
                continue;
            }
            made_anew = true;
            let (key_type, key_len) = set.key();
            let attributes = vec![
                SetAttribute::Table(TABLE.to_owned()),
                SetAttribute::Name(name.clone()),
                SetAttribute::Flags(set.flags()),
                SetAttribute::KeyType(key_type),
                SetAttribute::KeyLen(key_len as u32),
                SetAttribute::Id(2),
            ];
            changes.push(change(
                NfTablesMessage::NewSet(SetMessage { attributes }),
                NLM_F_CREATE,
                format!("creating set {} {name}", table_name()),
            ));
        }
        let wanted = rule_comments(bridge);
        let present = comments_of(nft, &chain)?;
        if present != wanted {
            trace(format_args!("{} {chain}: write {} rules", table_name(), wanted.len()));
            changes.push(change(
                NfTablesMessage::NewChain(chain_message(&chain)),
                NLM_F_CREATE,
                format!("creating chain {} {chain}", table_name()),
            ));
            if !present.is_empty() {
                changes.push(flush(&chain));
            }
            for (expressions, userdata) in chain_rules(bridge).into_iter().zip(wanted) {
                changes.push(new_rule(&chain, expressions, userdata));
            }
        }
        let admitted: HashSet<String> = set_elements(nft, PORTS)?
            .into_iter()
            .filter(|(_, target)| target.as_deref() == Some(chain.as_str()))
            .filter_map(|(key, _)| port_of_key(&key))
            .collect();
        for port in ports.iter().filter(|port| !admitted.contains(*port)) {
            trace(format_args!("{} map {PORTS}: {port} jumps to {chain}", table_name()));
            changes.push(change(
                NfTablesMessage::NewSetElement(port_element(port, Some(&chain))),
                NLM_F_CREATE,
                format!("adding {port} to map {} {PORTS}", table_name()),
            ));
        }
        if made_anew {
            let [locked, portmac, taken, bound] = Set::ALL.map(|set| set.name(bridge));
            let bindings = known()?;
            let key = |set, b: &Binding| key_of(set, &b.port, Some(&b.mac), b.ip);
            changes.extend(add_elements(&locked, bindings.iter().map(|b| key(Set::Locked, b)).collect()));
            changes.extend(add_elements(&portmac, bindings.iter().map(|b| key(Set::PortMac, b)).collect()));
            changes.extend(add_elements(&taken, bindings.iter().map(|b| key(Set::Taken, b)).collect()));
            changes.extend(add_elements(
                &bound,
                bindings.iter().filter(|b| b.ip.is_some()).map(|b| key(Set::Bound, b)).collect(),
            ));
        }
        nft.commit(generation, changes)
    })
    .with_context(|| format!("installing the guest filter of bridge {bridge}"))
}

/// Lets `port` on (before it comes up), with nothing of an earlier port of
/// the same name bound to it.
pub fn admit(bridge: &IfName, port: &str) -> Result<()> {
    let chain = chain_name(bridge);
    with_retries("admitting a port to kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let mut changes = Vec::new();
        forget_port(nft, bridge, port, &mut changes)?;
        changes.push(change(
            NfTablesMessage::NewSetElement(port_element(port, Some(&chain))),
            NLM_F_CREATE,
            format!("adding {port} to map {} {PORTS}", table_name()),
        ));
        nft.commit(generation, changes)
    })
    .with_context(|| format!("admitting {port} to the guest filter of bridge {bridge}"))
}

/// Takes `port` out, with everything bound to it.
pub fn release(bridge: &IfName, port: &str) -> Result<()> {
    with_retries("releasing a port from kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let mut changes = Vec::new();
        forget_port(nft, bridge, port, &mut changes)?;
        if set_elements(nft, PORTS)?.iter().any(|(key, _)| port_of_key(key).as_deref() == Some(port)) {
            changes.push(change(
                NfTablesMessage::DeleteSetElement(port_element(port, None)),
                0,
                format!("deleting {port} from map {} {PORTS}", table_name()),
            ));
        }
        nft.commit(generation, changes)
    })
    .with_context(|| format!("releasing {port} from the guest filter of bridge {bridge}"))
}

/// Binds `ip` to `mac` on `port` (a lease given or renewed): no other port
/// or MAC keeps that address, and the MAC keeps no other.
pub fn bind(bridge: &IfName, port: &str, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
    let bound = Set::Bound.name(bridge);
    with_retries("binding a lease in kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let wanted = key_of(Set::Bound, port, Some(mac), Some(ip));
        let present: Vec<Vec<u8>> = set_elements(nft, &bound)?.into_iter().map(|(key, _)| key).collect();
        if present.contains(&wanted) && present.iter().filter(|key| same_ip(key, ip) || same_mac(key, mac)).count() == 1
        {
            return Ok(Committed::Done);
        }
        let stale = present.into_iter().filter(|key| same_ip(key, ip) || same_mac(key, mac)).collect();
        let mut changes: Vec<Change> = delete_elements(&bound, stale).into_iter().collect();
        changes.extend(add_elements(&bound, vec![wanted.clone()]));
        nft.commit(generation, changes)
    })
    .with_context(|| format!("binding {ip} to {} on {port} (bridge {bridge})", show_mac(mac)))
}

/// Unbinds `ip` from `mac` (a lease released or expired), wherever it is bound.
pub fn unbind(bridge: &IfName, mac: &Mac, ip: Ipv4Addr) -> Result<()> {
    let bound = Set::Bound.name(bridge);
    with_retries("unbinding a lease in kvm-net's bridge filter", |nft| {
        let generation = nft.generation()?;
        let stale = set_elements(nft, &bound)?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| same_ip(key, ip) && same_mac(key, mac))
            .collect();
        nft.commit(generation, delete_elements(&bound, stale).into_iter().collect())
    })
    .with_context(|| format!("unbinding {ip} from {} (bridge {bridge})", show_mac(mac)))
}

fn same_ip(key: &[u8], ip: Ipv4Addr) -> bool {
    key.get(IFNAME_LEN + MAC_LEN..) == Some(&ip.octets()[..])
}

fn same_mac(key: &[u8], mac: &Mac) -> bool {
    mac_of_key(key, IFNAME_LEN).as_ref() == Some(mac)
}

/// A MAC as people write it.
pub fn show_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The port `mac` is locked to, if any port holds it.
pub fn port_holding(bridge: &IfName, mac: &Mac) -> Result<Option<String>> {
    let portmac = Set::PortMac.name(bridge);
    with_nft(|nft| {
        Ok(set_elements(nft, &portmac)?
            .into_iter()
            .map(|(key, _)| key)
            .find(|key| same_mac(key, mac))
            .and_then(|key| port_of_key(&key)))
    })
}

/// Whether the network's filter is there, and admits `port`.
pub fn admits(bridge: &IfName, port: &str) -> Result<bool> {
    let chain = chain_name(bridge);
    with_nft(|nft| {
        Ok(set_elements(nft, PORTS)?.into_iter().any(|(key, target)| {
            target.as_deref() == Some(chain.as_str()) && port_of_key(&key).as_deref() == Some(port)
        }))
    })
}

/// Each locked port's MAC and its bound addresses, for `kvm-net status`.
pub fn bindings(bridge: &IfName) -> Result<Vec<Binding>> {
    let [_, portmac, _, bound] = Set::ALL.map(|set| set.name(bridge));
    with_nft(|nft| {
        let mut found: Vec<Binding> = set_elements(nft, &portmac)?
            .into_iter()
            .filter_map(|(key, _)| {
                Some(Binding { port: port_of_key(&key)?, mac: mac_of_key(&key, IFNAME_LEN)?, ip: None })
            })
            .collect();
        for (key, _) in set_elements(nft, &bound)? {
            let (Some(port), Some(mac)) = (port_of_key(&key), mac_of_key(&key, IFNAME_LEN)) else { continue };
            let ip = key.get(IFNAME_LEN + MAC_LEN..).and_then(|o| <[u8; 4]>::try_from(o).ok()).map(Ipv4Addr::from);
            match found.iter_mut().find(|b| b.port == port && b.mac == mac && b.ip.is_none()) {
                Some(binding) => binding.ip = ip,
                None => found.push(Binding { port, mac, ip }),
            }
        }
        Ok(found)
    })
}

/// Whether the network's chain is there with exactly its rules (`None`: no chain at all).
pub fn state(bridge: &IfName) -> Result<Option<bool>> {
    let chain = chain_name(bridge);
    with_nft(|nft| {
        let present = comments_of(nft, &chain)?;
        if present.is_empty() && !exists(nft, NfTablesMessage::GetChain(chain_message(&chain)))? {
            return Ok(None);
        }
        let sets = Set::ALL
            .iter()
            .try_fold(true, |all, set| Ok::<_, anyhow::Error>(all && set_exists(nft, &set.name(bridge))?))?;
        Ok(Some(sets && present == rule_comments(bridge) && comments_of(nft, BASE)? == [dispatch_comment()]))
    })
}

/// Removes the network's chain, sets and map elements; the table goes with
/// the last network that has a filter.
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
        if chains.iter().all(|c| c == BASE || *c == chain) {
            if !chains.is_empty() {
                trace(format_args!("{}: the last network with a filter is gone; deleting the table", table_name()));
                let message = NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(TABLE.to_owned())],
                });
                changes.push(change(message, 0, format!("deleting table {}", table_name())));
            }
            return nft.commit(generation, changes);
        }
        let ours: Vec<Vec<u8>> = set_elements(nft, PORTS)?
            .into_iter()
            .filter(|(_, target)| target.as_deref() == Some(chain.as_str()))
            .map(|(key, _)| key)
            .collect();
        if !ours.is_empty() {
            let message =
                NfTablesMessage::DeleteSetElement(elements(PORTS, ours.into_iter().map(|k| vec![key(k)]).collect()));
            changes.push(change(message, 0, format!("deleting {bridge}'s ports from map {} {PORTS}", table_name())));
        }
        if chains.contains(&chain) {
            changes.push(flush(&chain));
            changes.push(change(
                NfTablesMessage::DeleteChain(chain_message(&chain)),
                0,
                format!("deleting chain {} {chain}", table_name()),
            ));
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
    .with_context(|| format!("removing the guest filter of bridge {bridge}"))
}

/// Whether the bridge has a filter (its chain exists): one request.
pub fn present(bridge: &IfName) -> Result<bool> {
    with_nft(|nft| exists(nft, NfTablesMessage::GetChain(chain_message(&chain_name(bridge)))))
}

/// Whether anything of the bridge's filter is left.
pub fn leftover(bridge: &IfName) -> Result<bool> {
    Ok(state(bridge)?.is_some() || with_nft(|nft| set_exists(nft, &Set::Bound.name(bridge)))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_fields_in_register_order() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let key = key_of(Set::Bound, "tap0", Some(&mac), Some(Ipv4Addr::new(192, 168, 100, 10)));
        assert_eq!(key.len(), 28);
        assert_eq!(&key[..5], b"tap0\0");
        assert_eq!(&key[16..24], &[0x52, 0x54, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&key[24..], &[192, 168, 100, 10]);
        assert_eq!(port_of_key(&key).as_deref(), Some("tap0"));
        assert!(same_mac(&key, &mac) && same_ip(&key, Ipv4Addr::new(192, 168, 100, 10)));
        // nft's own numbers for `ifname . ether_addr . ipv4_addr`.
        assert_eq!(Set::Bound.key(), (0x0002_9247, 28));
    }
}
