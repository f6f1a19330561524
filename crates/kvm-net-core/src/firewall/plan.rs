//! The rules a network needs, as typed data: what to match and what to do,
//! per family and kind of chain. Each backend renders the same plan in its
//! own form (iptables text, nf_tables expressions).

use ipnetwork::IpNetwork;

use crate::config::{Mode, Network};
use crate::ifname::IfName;

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
}

impl Kind {
    /// Every kind, in the order chains are set up.
    pub const ALL: [Kind; 5] = [Kind::Masquerade, Kind::Forward, Kind::Guard, Kind::Input, Kind::Checksum];
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
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
    /// Its transport protocol, and destination port if given.
    Protocol { protocol: Protocol, destination_port: Option<u16> },
    /// Its connection is established or related (a reply, not a new connection).
    EstablishedOrRelated { negate: bool },
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its family.
    pub family: Family,
    /// What it is for.
    pub kind: Kind,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// Everything kvm-net's firewall holds for one bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// Whether any chain is of `family`.
    pub fn has_family(&self, family: Family) -> bool {
        self.chains.iter().any(|c| c.family == family)
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
/// guests behave as on its networks). Bridged networks need none.
pub fn plan(network: &Network) -> Plan {
    let bridge = &network.bridge;
    let mut chains = Vec::new();
    match network.mode {
        Mode::Bridged => {}
        Mode::Nat | Mode::Routed => {
            for subnet in network.subnets() {
                let family = Family::of(&subnet);
                if network.mode == Mode::Nat {
                    chains.push(Chain { family, kind: Kind::Masquerade, rules: masquerade_rules(subnet) });
                }
                let mut inward = vec![destination(subnet), out_iface(bridge)];
                if network.mode == Mode::Nat {
                    // Replies only: NAT hides the guests from the outside.
                    inward.push(Match::EstablishedOrRelated { negate: false });
                }
                chains.push(Chain {
                    family,
                    kind: Kind::Forward,
                    rules: vec![
                        rule(vec![source(subnet), in_iface(bridge)], Action::Accept),
                        rule(inward, Action::Accept),
                        rule(vec![in_iface(bridge), out_iface(bridge)], Action::Accept),
                    ],
                });
                if network.mode == Mode::Nat {
                    // Closed to new connections from outside the bridge, as
                    // libvirt's NAT networks are; replies pass.
                    chains.push(Chain {
                        family,
                        kind: Kind::Guard,
                        rules: vec![rule(
                            vec![not_in_iface(bridge), out_iface(bridge), Match::EstablishedOrRelated { negate: true }],
                            Action::Drop,
                        )],
                    });
                }
            }
        }
        Mode::Isolated => {
            // Both families always: an isolated bridge must not leak even
            // where another network turned forwarding on. Guests still reach
            // each other where bridged frames go through the firewall (br_netfilter).
            for family in [Family::V4, Family::V6] {
                chains.push(Chain {
                    family,
                    kind: Kind::Forward,
                    rules: vec![rule(vec![in_iface(bridge), out_iface(bridge)], Action::Accept)],
                });
                chains.push(Chain {
                    family,
                    kind: Kind::Guard,
                    rules: vec![
                        rule(vec![in_iface(bridge), not_out_iface(bridge)], Action::Drop),
                        rule(vec![not_in_iface(bridge), out_iface(bridge)], Action::Drop),
                    ],
                });
            }
        }
    }
    if let Some(dhcp) = &network.dhcp {
        let service = |protocol, port| {
            rule(vec![in_iface(bridge), Match::Protocol { protocol, destination_port: Some(port) }], Action::Accept)
        };
        let mut accept = vec![service(Protocol::Udp, 67)];
        if dhcp.dns {
            accept.push(service(Protocol::Udp, 53));
            accept.push(service(Protocol::Tcp, 53));
        }
        chains.push(Chain { family: Family::V4, kind: Kind::Input, rules: accept });
        chains.push(Chain {
            family: Family::V4,
            kind: Kind::Checksum,
            rules: vec![rule(
                vec![out_iface(bridge), Match::Protocol { protocol: Protocol::Udp, destination_port: Some(68) }],
                Action::ChecksumFill,
            )],
        });
    }
    Plan { bridge: bridge.clone(), chains }
}

/// Multicast and broadcast stay as they are; TCP and UDP get source ports
/// 1024-65535 so that no guest connection takes a privileged port of the host.
fn masquerade_rules(subnet: IpNetwork) -> Vec<Rule> {
    let keep: Vec<IpNetwork> = match subnet {
        IpNetwork::V4(_) => ["224.0.0.0/24", "255.255.255.255/32"].iter().filter_map(|n| n.parse().ok()).collect(),
        IpNetwork::V6(_) => ["ff00::/8"].iter().filter_map(|n| n.parse().ok()).collect(),
    };
    let leaving = || vec![source(subnet), Match::Destination { net: subnet, negate: true }];
    let ports = Some((1024, 65535));
    keep.into_iter()
        .map(|group| rule(vec![source(subnet), destination(group)], Action::Return))
        .chain([Protocol::Tcp, Protocol::Udp].map(|protocol| {
            let mut matches = leaving();
            matches.push(Match::Protocol { protocol, destination_port: None });
            rule(matches, Action::Masquerade { ports })
        }))
        .chain([rule(leaving(), Action::Masquerade { ports: None })])
        .collect()
}
