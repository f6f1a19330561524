//! The rules a network needs, as typed data: what to match and what to do,
//! per family and kind of chain. Each backend renders the same plan in its
//! own form (iptables text, nf_tables expressions).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv6Network};

use crate::config::model::{Forward, Mode, Network};
use crate::ifname::IfName;
pub use crate::ports::{PortRange, Protocol};

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (`iptables`, `ip` tables).
    V4,
    /// IPv6 (`ip6tables`, `ip6` tables).
    V6,
}

impl Family {
    /// `ipv4` or `ipv6`, as status and messages say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn of(network: &IpNetwork) -> Self {
        if network.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What a chain of kvm-net's is for, which decides where it is hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Masquerade guests' traffic leaving the host (postrouting, NAT).
    Masquerade,
    /// Accept guests' traffic through the host (forward).
    Forward,
    /// What must never be forwarded to or from the bridge (isolated: all;
    /// nat: new connections in). Hooked before the filter stage (iptables'
    /// mangle table; priority mangle in nf_tables): a drop there is final,
    /// so no accept of another network's, or anyone's, can undo it whatever
    /// order networks started in.
    Guard,
    /// DHCP and DNS from guests to the bridge's dnsmasq (input).
    Input,
    /// Checksums of DHCP replies, which guests using vhost-net otherwise
    /// drop (iptables' CHECKSUM target; nf_tables has no equivalent).
    Checksum,
    /// Port forwards of connections arriving for the host (prerouting, NAT).
    DnatIn,
    /// Port forwards of connections the host itself makes to its own
    /// addresses (output, NAT).
    DnatLocal,
}

impl Kind {
    /// Every kind, in the order chains are set up.
    pub const ALL: [Kind; 7] =
        [Kind::Masquerade, Kind::Forward, Kind::Guard, Kind::Input, Kind::Checksum, Kind::DnatIn, Kind::DnatLocal];
}

/// One condition of a rule; `negate` inverts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Match {
    /// The packet came in on this interface.
    InIface { name: IfName, negate: bool },
    /// The packet goes out on this interface.
    OutIface { name: IfName, negate: bool },
    /// Its source address is in this network.
    Source { net: IpNetwork, negate: bool },
    /// Its destination address is in this network.
    Destination { net: IpNetwork, negate: bool },
    /// Its transport protocol, and destination port (or ports) if given.
    Protocol { protocol: Protocol, destination_port: Option<PortRange> },
    /// Its transport protocol, and a source port in this range.
    SourcePort { protocol: Protocol, ports: PortRange },
    /// An ICMPv6 message of this type (133: a router solicitation).
    Icmpv6 { kind: u8 },
    /// Its connection is established or related (a reply, not a new connection).
    EstablishedOrRelated { negate: bool },
    /// It is addressed to one of the host's own addresses (the kernel's
    /// routing table says `local`).
    LocalDestination,
    /// Its connection's destination was rewritten (a port forward's).
    Dnat { negate: bool },
}

/// Which guest ports a port forward's connections go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortMapping {
    /// The ports they were sent to.
    Same,
    /// This port.
    To(u16),
    /// The port at the same place in `to` as the one they were sent to in `from`.
    Shift { from: PortRange, to: PortRange },
}

impl PortMapping {
    /// How a forward's host ports map to its guest ports.
    pub fn of(forward: &Forward) -> Self {
        if forward.guest_ports == forward.host_ports {
            PortMapping::Same
        } else if forward.guest_ports.is_single() {
            PortMapping::To(forward.guest_ports.first)
        } else {
            PortMapping::Shift { from: forward.host_ports, to: forward.guest_ports }
        }
    }
}

/// What a rule does with a packet that matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let it through this chain's hook.
    Accept,
    /// Drop it, for good.
    Drop,
    /// Stop looking in this chain.
    Return,
    /// Rewrite its source to the outgoing interface's address; with a port
    /// range, source ports come from it.
    Masquerade { ports: Option<(u16, u16)> },
    /// Fill in its checksum (DHCP replies to vhost-net guests).
    ChecksumFill,
    /// Send its connection to `to` (a port forward), of the chain's family.
    Dnat { to: IpAddr, ports: PortMapping },
}

/// One rule: all matches, then the action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Conditions, all of which must hold.
    pub matches: Vec<Match>,
    /// What to do then.
    pub action: Action,
}

/// One chain of kvm-net's for a bridge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Its family.
    pub family: Family,
    /// What it is for.
    pub kind: Kind,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// Everything kvm-net's firewall holds for one bridge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    /// The bridge the rules are for (and named after).
    pub bridge: IfName,
    /// Its chains; kinds and families not listed have none.
    pub chains: Vec<Chain>,
}

impl Plan {
    /// The chain of `family` and `kind`, if the plan has one.
    pub fn chain(&self, family: Family, kind: Kind) -> Option<&Chain> {
        self.chains.iter().find(|c| c.family == family && c.kind == kind)
    }
}

fn rule(matches: Vec<Match>, action: Action) -> Rule {
    Rule { matches, action }
}

fn in_iface(bridge: &IfName) -> Match {
    Match::InIface { name: bridge.clone(), negate: false }
}

fn out_iface(bridge: &IfName) -> Match {
    Match::OutIface { name: bridge.clone(), negate: false }
}

fn not_in_iface(bridge: &IfName) -> Match {
    Match::InIface { name: bridge.clone(), negate: true }
}

fn not_out_iface(bridge: &IfName) -> Match {
    Match::OutIface { name: bridge.clone(), negate: true }
}

fn source(net: IpNetwork) -> Match {
    Match::Source { net, negate: false }
}

fn destination(net: IpNetwork) -> Match {
    Match::Destination { net, negate: false }
}

/// The rules a managed network needs, by mode (libvirt's rule sets, so that
/// guests behave as on its networks), with its port forwards and guest
/// isolation. Bridged networks need none.
pub fn plan(network: &Network) -> Plan {
    let mut chains = Vec::new();
    match network.mode {
        Mode::Bridged | Mode::Ovs => {}
        Mode::Nat | Mode::Routed => {
            for subnet in network.subnets() {
                forwarding_chains(network, subnet, &mut chains);
            }
        }
        Mode::Isolated => isolated_chains(network, &mut chains),
    }
    service_chains(network, &mut chains);
    chains.retain(|chain| !chain.rules.is_empty());
    Plan { bridge: network.bridge.clone(), chains }
}

/// A port forward to a guest's address of one family.
struct Forwarded<'a> {
    forward: &'a Forward,
    guest: IpAddr,
}

/// The network's port forwards that go to a guest's address of `family`:
/// all of them in IPv4; in IPv6 those whose guest has an IPv6 address and
/// that listen on every address of the host.
fn forwards_of(network: &Network, family: Family) -> Vec<Forwarded<'_>> {
    network
        .forwards
        .iter()
        .filter_map(|forward| {
            let guest = match family {
                Family::V4 => Some(IpAddr::V4(forward.guest)),
                // A forward to one IPv4 address of the host listens on no IPv6 one.
                Family::V6 => forward.guest6.filter(|_| forward.host_address.is_none()).map(IpAddr::V6),
            }?;
            Some(Forwarded { forward, guest })
        })
        .collect()
}

/// A nat or routed network's chains for one of its subnets: masquerade
/// (nat), forward, guard, and its port forwards to guests' addresses of
/// the subnet's family.
fn forwarding_chains(network: &Network, subnet: IpNetwork, chains: &mut Vec<Chain>) {
    let bridge = &network.bridge;
    let family = Family::of(&subnet);
    let nat = network.mode == Mode::Nat;
    let forwarded = forwards_of(network, family);
    let forwards: Vec<Forward> = forwarded.iter().map(|f| f.forward.clone()).collect();
    let forwards = &forwards[..];
    let mut masquerade: Vec<Rule> = forwards.first().map(|_| hairpin(subnet, bridge)).into_iter().collect();
    if nat {
        masquerade.extend(masquerade_rules(subnet, forwards));
    }
    let mut inward = vec![destination(subnet), out_iface(bridge)];
    if nat {
        // Replies only: NAT hides the guests from the outside.
        inward.push(Match::EstablishedOrRelated { negate: false });
    }
    let mut forward = vec![rule(vec![source(subnet), in_iface(bridge)], Action::Accept), rule(inward, Action::Accept)];
    if !network.isolate_guests {
        forward.push(rule(vec![in_iface(bridge), out_iface(bridge)], Action::Accept));
    }
    forward.extend(forwarded.iter().map(|f| rule(forwarded_to_guest(f, bridge), Action::Accept)));
    let mut guard = isolation(network);
    if nat {
        // Closed to new connections from outside the bridge, as libvirt's
        // NAT networks are; replies pass, and exactly the connections a port
        // forward sent here.
        guard.extend(forwarded.iter().map(|f| rule(forwarded_to_guest(f, bridge), Action::Return)));
        guard.push(rule(
            vec![not_in_iface(bridge), out_iface(bridge), Match::EstablishedOrRelated { negate: true }],
            Action::Drop,
        ));
    }
    let dnat: Vec<Rule> = forwarded.iter().map(dnat_rule).collect();
    chains.extend([
        Chain { family, kind: Kind::Masquerade, rules: masquerade },
        Chain { family, kind: Kind::Forward, rules: forward },
        Chain { family, kind: Kind::Guard, rules: guard },
        Chain { family, kind: Kind::DnatIn, rules: dnat.clone() },
        Chain { family, kind: Kind::DnatLocal, rules: dnat },
    ]);
}

/// An isolated network's chains, in both families always: an isolated
/// bridge must not leak even where another network turned forwarding on.
/// Guests still reach each other where bridged frames go through the
/// firewall (br_netfilter), unless isolated from each other too.
fn isolated_chains(network: &Network, chains: &mut Vec<Chain>) {
    let bridge = &network.bridge;
    for family in [Family::V4, Family::V6] {
        if !network.isolate_guests {
            let between = vec![rule(vec![in_iface(bridge), out_iface(bridge)], Action::Accept)];
            chains.push(Chain { family, kind: Kind::Forward, rules: between });
        }
        let mut guard = isolation(network);
        guard.push(rule(vec![in_iface(bridge), not_out_iface(bridge)], Action::Drop));
        guard.push(rule(vec![not_in_iface(bridge), out_iface(bridge)], Action::Drop));
        chains.push(Chain { family, kind: Kind::Guard, rules: guard });
    }
}

/// DHCP (and DNS) from the bridge to the network's dnsmasq, and the
/// checksums of its replies; in IPv6, router solicitations and DHCPv6
/// where it advertises, and DNS to the bridge's IPv6 address.
fn service_chains(network: &Network, chains: &mut Vec<Chain>) {
    let bridge = &network.bridge;
    let service = |protocol, port| {
        rule(
            vec![in_iface(bridge), Match::Protocol { protocol, destination_port: Some(PortRange::single(port)) }],
            Action::Accept,
        )
    };
    let dns = network.dhcp.as_ref().is_some_and(|dhcp| dhcp.dns);
    let dns_rules = || if dns { vec![service(Protocol::Udp, 53), service(Protocol::Tcp, 53)] } else { Vec::new() };
    if network.ipv6.is_some() {
        let mut accept = Vec::new();
        if network.ipv6_autoconfig.advertises() {
            accept.push(rule(vec![in_iface(bridge), Match::Icmpv6 { kind: ROUTER_SOLICITATION }], Action::Accept));
            accept.push(service(Protocol::Udp, DHCPV6_SERVER));
        }
        accept.extend(dns_rules());
        chains.push(Chain { family: Family::V6, kind: Kind::Input, rules: accept });
    }
    if network.dhcp.is_none() {
        return;
    }
    let mut accept = vec![service(Protocol::Udp, 67)];
    accept.extend(dns_rules());
    let replies = Match::Protocol { protocol: Protocol::Udp, destination_port: Some(PortRange::single(68)) };
    chains.extend([
        Chain { family: Family::V4, kind: Kind::Input, rules: accept },
        Chain {
            family: Family::V4,
            kind: Kind::Checksum,
            rules: vec![rule(vec![out_iface(bridge), replies], Action::ChecksumFill)],
        },
    ]);
}

/// ICMPv6's router solicitation, which guests send to hurry the first advertisement.
const ROUTER_SOLICITATION: u8 = 133;
/// The port a DHCPv6 server listens on.
const DHCPV6_SERVER: u16 = 547;

/// With `isolate_guests`: guests routed to each other through the host are
/// dropped (the bridge's port isolation stops them on the bridge itself),
/// but for a port forward's connections, which the host sent there.
fn isolation(network: &Network) -> Vec<Rule> {
    let bridge = &network.bridge;
    if !network.isolate_guests {
        return Vec::new();
    }
    vec![rule(vec![in_iface(bridge), out_iface(bridge), Match::Dnat { negate: true }], Action::Drop)]
}

/// A port forward's connections on their way to the guest: to its address
/// and ports, out of the bridge, sent there by the forward.
fn forwarded_to_guest(forwarded: &Forwarded<'_>, bridge: &IfName) -> Vec<Match> {
    let forward = forwarded.forward;
    vec![
        Match::Destination { net: IpNetwork::from(forwarded.guest), negate: false },
        out_iface(bridge),
        Match::Protocol { protocol: forward.protocol, destination_port: Some(forward.guest_ports) },
        Match::Dnat { negate: false },
    ]
}

/// A port forward: connections to the host's own addresses (or to its
/// `host_address`), never passing through to another host, and never to
/// the loopback addresses (which a guest could not answer: see docs/firewall.md).
fn dnat_rule(forwarded: &Forwarded<'_>) -> Rule {
    let forward = forwarded.forward;
    let addressed = match (forward.host_address, forwarded.guest) {
        (Some(address), _) => Match::Destination { net: IpNetwork::V4(address.into()), negate: false },
        (None, IpAddr::V4(_)) => Match::Destination { net: IpNetwork::V4(LOOPBACK), negate: true },
        (None, IpAddr::V6(_)) => Match::Destination { net: IpNetwork::V6(LOOPBACK6), negate: true },
    };
    rule(
        vec![
            Match::LocalDestination,
            addressed,
            Match::Protocol { protocol: forward.protocol, destination_port: Some(forward.host_ports) },
        ],
        Action::Dnat { to: forwarded.guest, ports: PortMapping::of(forward) },
    )
}

/// 127.0.0.0/8.
const LOOPBACK: ipnetwork::Ipv4Network = match ipnetwork::Ipv4Network::new_checked(Ipv4Addr::new(127, 0, 0, 0), 8) {
    Some(net) => net,
    None => panic!("127.0.0.0/8 is a network"),
};

/// ::1/128.
const LOOPBACK6: Ipv6Network = match Ipv6Network::new_checked(Ipv6Addr::LOCALHOST, 128) {
    Some(net) => net,
    None => panic!("::1/128 is a network"),
};

/// Hairpin: a guest's connection to the host's address that a port forward
/// sends to a guest of the same bridge leaves with the gateway's address,
/// so that the reply comes back through the host (and is translated back)
/// rather than straight from the other guest, whether or not bridged
/// frames pass the firewall (br_netfilter).
fn hairpin(subnet: IpNetwork, bridge: &IfName) -> Rule {
    rule(
        vec![source(subnet), destination(subnet), out_iface(bridge), Match::Dnat { negate: false }],
        Action::Masquerade { ports: None },
    )
}

/// Multicast and broadcast stay as they are; TCP and UDP get source ports
/// 1024-65535 so that no guest connection takes a privileged port of the host,
/// nor a port a forward of that protocol listens on ([`masquerade_ports`]).
fn masquerade_rules(subnet: IpNetwork, forwards: &[Forward]) -> Vec<Rule> {
    let keep: Vec<IpNetwork> = match subnet {
        IpNetwork::V4(_) => ["224.0.0.0/24", "255.255.255.255/32"].iter().filter_map(|n| n.parse().ok()).collect(),
        IpNetwork::V6(_) => ["ff00::/8"].iter().filter_map(|n| n.parse().ok()).collect(),
    };
    let leaving = || vec![source(subnet), Match::Destination { net: subnet, negate: true }];
    let mut rules: Vec<Rule> =
        keep.into_iter().map(|group| rule(vec![source(subnet), destination(group)], Action::Return)).collect();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let forwarded: Vec<PortRange> =
            forwards.iter().filter(|f| f.protocol == protocol).map(|f| f.host_ports).collect();
        for (sources, ports) in masquerade_ports(&forwarded) {
            let mut matches = leaving();
            matches.push(match sources {
                Some(ports) => Match::SourcePort { protocol, ports },
                None => Match::Protocol { protocol, destination_port: None },
            });
            rules.push(rule(matches, Action::Masquerade { ports: Some((ports.first, ports.last)) }));
        }
    }
    rules.push(rule(leaving(), Action::Masquerade { ports: None }));
    rules
}

/// The source ports masqueraded connections get, as (guest source ports,
/// host ports) pairs in rule order (`None`: any other source port). The
/// kernel keeps a connection's own port when it is in the rule's range,
/// and picks another of the range when it is taken; so a range must hold
/// no port a forward listens on, or a guest that sends from (or is given)
/// that port would receive what clients send to the forward (a UDP client's
/// next datagram matches the guest's connection before the forward's).
/// Without forwards: 1024-65535, one rule. With them: each stretch between
/// forwarded ports keeps its own ports, and anything else (a privileged or
/// a forwarded source port) gets one of the widest stretch.
pub fn masquerade_ports(forwarded: &[PortRange]) -> Vec<(Option<PortRange>, PortRange)> {
    const ALL: PortRange = PortRange { first: 1024, last: 65535 };
    let mut taken: Vec<PortRange> = forwarded.iter().copied().filter(|r| r.last >= ALL.first).collect();
    if taken.is_empty() {
        return vec![(None, ALL)];
    }
    taken.sort_by_key(|r| r.first);
    let mut free = Vec::new();
    let mut next = u32::from(ALL.first);
    for range in taken {
        if u32::from(range.first) > next {
            free.push((next, u32::from(range.first) - 1));
        }
        next = next.max(u32::from(range.last) + 1);
    }
    if next <= u32::from(ALL.last) {
        free.push((next, u32::from(ALL.last)));
    }
    let free: Vec<PortRange> = free
        .into_iter()
        .filter_map(|(first, last)| {
            Some(PortRange { first: u16::try_from(first).ok()?, last: u16::try_from(last).ok()? })
        })
        .collect();
    // Every port 1024-65535 forwarded: nothing left to give (the config
    // could say so; the kernel would then pick among them).
    let Some(widest) = free.iter().copied().max_by_key(|r| r.last - r.first) else { return vec![(None, ALL)] };
    free.into_iter().map(|range| (Some(range), range)).chain([(None, widest)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Dhcp, Forward};

    fn network(mode: Mode, isolate_guests: bool, forwards: Vec<Forward>) -> Network {
        Network {
            mode,
            ipv4: "192.168.100.1/24".parse().ok(),
            dhcp: Some(Dhcp::defaults_for("192.168.100.1/24".parse().expect("net"))),
            isolate_guests,
            forwards,
            ..Network::classic()
        }
    }

    fn ssh() -> Forward {
        Forward {
            protocol: Protocol::Tcp,
            host_ports: PortRange::single(2222),
            guest: Ipv4Addr::new(192, 168, 100, 10),
            guest6: None,
            guest_name: None,
            guest_ports: PortRange::single(22),
            host_address: None,
        }
    }

    fn kinds(plan: &Plan) -> Vec<(Family, Kind)> {
        plan.chains.iter().map(|c| (c.family, c.kind)).collect()
    }

    #[test]
    fn a_nat_network_without_forwards_is_as_before() {
        let plan = plan(&network(Mode::Nat, false, Vec::new()));
        let v4 = [Kind::Masquerade, Kind::Forward, Kind::Guard, Kind::Input, Kind::Checksum];
        assert_eq!(kinds(&plan), v4.map(|k| (Family::V4, k)));
        let guard = plan.chain(Family::V4, Kind::Guard).expect("guard");
        assert_eq!(guard.rules.len(), 1, "only the inbound drop");
    }

    #[test]
    fn a_forward_gets_dnat_both_ways_a_hairpin_and_exactly_its_exception() {
        let plan = plan(&network(Mode::Nat, false, vec![ssh()]));
        for kind in [Kind::DnatIn, Kind::DnatLocal] {
            let dnat = plan.chain(Family::V4, kind).expect("a dnat chain");
            assert_eq!(dnat.rules.len(), 1);
            assert!(dnat.rules[0].matches.contains(&Match::LocalDestination), "only to the host's own addresses");
            assert_eq!(dnat.rules[0].action, Action::Dnat { to: IpAddr::V4(ssh().guest), ports: PortMapping::To(22) });
        }
        let masquerade = plan.chain(Family::V4, Kind::Masquerade).expect("masquerade");
        assert!(masquerade.rules[0].matches.contains(&Match::Dnat { negate: false }), "the hairpin comes first");
        let guard = plan.chain(Family::V4, Kind::Guard).expect("guard");
        assert_eq!(guard.rules.iter().map(|r| r.action.clone()).collect::<Vec<_>>(), [Action::Return, Action::Drop]);
        let exception = &guard.rules[0].matches;
        assert!(exception
            .contains(&Match::Protocol { protocol: Protocol::Tcp, destination_port: Some(PortRange::single(22)) }));
    }

    #[test]
    fn isolated_guests_lose_the_bridge_to_bridge_accept_and_gain_a_drop() {
        let open = plan(&network(Mode::Nat, false, Vec::new()));
        let closed = plan(&network(Mode::Nat, true, Vec::new()));
        let between = |plan: &Plan, action| {
            plan.chains.iter().flat_map(|c| &c.rules).any(|r| {
                r.action == action
                    && r.matches.contains(&in_iface(&plan.bridge))
                    && r.matches.contains(&out_iface(&plan.bridge))
            })
        };
        assert!(between(&open, Action::Accept) && !between(&open, Action::Drop));
        assert!(!between(&closed, Action::Accept) && between(&closed, Action::Drop));
        let isolated = plan(&network(Mode::Isolated, true, Vec::new()));
        assert!(isolated.chain(Family::V4, Kind::Forward).is_none());
        assert_eq!(isolated.chain(Family::V6, Kind::Guard).map(|c| c.rules.len()), Some(3));
    }

    fn v6(mode: Mode, forwards: Vec<Forward>) -> Network {
        Network {
            ipv6: "fd00:60::1/64".parse().ok(),
            ipv6_autoconfig: crate::config::model::Autoconfig::Slaac,
            ..network(mode, false, forwards)
        }
    }

    #[test]
    fn an_ipv6_network_lets_solicitations_dhcpv6_and_dns_in_from_the_bridge() {
        let plan = plan(&v6(Mode::Nat, Vec::new()));
        let input = plan.chain(Family::V6, Kind::Input).expect("an IPv6 input chain");
        let wanted: Vec<Vec<Match>> = vec![
            vec![in_iface(&plan.bridge), Match::Icmpv6 { kind: 133 }],
            vec![
                in_iface(&plan.bridge),
                Match::Protocol { protocol: Protocol::Udp, destination_port: Some(PortRange::single(547)) },
            ],
            vec![
                in_iface(&plan.bridge),
                Match::Protocol { protocol: Protocol::Udp, destination_port: Some(PortRange::single(53)) },
            ],
            vec![
                in_iface(&plan.bridge),
                Match::Protocol { protocol: Protocol::Tcp, destination_port: Some(PortRange::single(53)) },
            ],
        ];
        assert_eq!(input.rules.iter().map(|r| r.matches.clone()).collect::<Vec<_>>(), wanted);
        let quiet =
            Network { ipv6_autoconfig: crate::config::model::Autoconfig::Off, dhcp: None, ..v6(Mode::Nat, Vec::new()) };
        assert!(super::plan(&quiet).chain(Family::V6, Kind::Input).is_none(), "nothing served, nothing let in");
    }

    #[test]
    fn a_forward_to_a_guest_with_an_ipv6_address_is_dnat66_with_its_exception() {
        let guest6: Ipv6Addr = "fd00:60::10".parse().expect("an address");
        let web = Forward { guest6: Some(guest6), ..ssh() };
        for mode in [Mode::Nat, Mode::Routed] {
            let plan = plan(&v6(mode, vec![web.clone(), ssh()]));
            for kind in [Kind::DnatIn, Kind::DnatLocal] {
                let dnat = plan.chain(Family::V6, kind).expect("an IPv6 dnat chain");
                assert_eq!(dnat.rules.len(), 1, "only the forward whose guest has an IPv6 address");
                assert_eq!(dnat.rules[0].action, Action::Dnat { to: IpAddr::V6(guest6), ports: PortMapping::To(22) });
                assert!(dnat.rules[0]
                    .matches
                    .contains(&Match::Destination { net: IpNetwork::V6(LOOPBACK6), negate: true }));
            }
            let forward = plan.chain(Family::V6, Kind::Forward).expect("forward");
            assert!(forward.rules.iter().any(|r| r
                .matches
                .contains(&Match::Destination { net: "fd00:60::10/128".parse().expect("a net"), negate: false })));
        }
        let nat = plan(&v6(Mode::Nat, vec![web]));
        let guard = nat.chain(Family::V6, Kind::Guard).expect("guard");
        assert_eq!(guard.rules.iter().map(|r| r.action.clone()).collect::<Vec<_>>(), [Action::Return, Action::Drop]);
        let masquerade = nat.chain(Family::V6, Kind::Masquerade).expect("masquerade");
        assert!(masquerade.rules[0].matches.contains(&Match::Dnat { negate: false }), "the hairpin comes first");
        let only_v4 = Forward { guest6: Some(guest6), host_address: Some(Ipv4Addr::new(203, 0, 113, 1)), ..ssh() };
        assert!(forwards_of(&v6(Mode::Nat, vec![only_v4]), Family::V6).is_empty());
    }

    #[test]
    fn masquerading_never_gives_a_guest_a_forwarded_port() {
        assert_eq!(masquerade_ports(&[]), [(None, PortRange { first: 1024, last: 65535 })]);
        let low = PortRange::single(80);
        assert_eq!(masquerade_ports(&[low]), [(None, PortRange { first: 1024, last: 65535 })]);
        let pairs = masquerade_ports(&[PortRange::single(6000), PortRange::parse("8000-8010").expect("range")]);
        let stretches = [
            PortRange { first: 1024, last: 5999 },
            PortRange { first: 6001, last: 7999 },
            PortRange { first: 8011, last: 65535 },
        ];
        let expected: Vec<_> = stretches.iter().map(|r| (Some(*r), *r)).chain([(None, stretches[2])]).collect();
        assert_eq!(pairs, expected);
        for (_, ports) in pairs {
            assert!(!(ports.first..=ports.last).contains(&6000) && !(ports.first..=ports.last).contains(&8005));
        }
        let udp = Forward { protocol: Protocol::Udp, host_ports: PortRange::single(6000), ..ssh() };
        let plan = plan(&network(Mode::Nat, false, vec![udp]));
        let masquerade = plan.chain(Family::V4, Kind::Masquerade).expect("masquerade");
        let given: Vec<_> = masquerade
            .rules
            .iter()
            .filter(|r| r.matches.iter().any(|m| matches!(m, Match::SourcePort { protocol: Protocol::Udp, .. })))
            .map(|r| r.action.clone())
            .collect();
        assert_eq!(
            given,
            [Action::Masquerade { ports: Some((1024, 5999)) }, Action::Masquerade { ports: Some((6001, 65535)) }]
        );
    }

    #[test]
    fn ranges_map_one_to_one_unless_the_ports_are_the_same() {
        let mut forward = ssh();
        forward.host_ports = PortRange::parse("8000-8010").expect("range");
        forward.guest_ports = forward.host_ports;
        assert_eq!(PortMapping::of(&forward), PortMapping::Same);
        forward.guest_ports = PortRange::parse("9000-9010").expect("range");
        assert_eq!(PortMapping::of(&forward), PortMapping::Shift { from: forward.host_ports, to: forward.guest_ports });
    }
}
