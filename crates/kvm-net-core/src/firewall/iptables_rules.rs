//! The plan in iptables' form: kvm-net's chains per bridge, each reached by
//! one jump from a built-in chain, with rules as the exact text `iptables -S`
//! prints, so that a listing can be compared with what should be there.

use std::net::IpAddr;

use super::plan::{Action, Chain, Family, Kind, Match, Plan, PortMapping, Rule};
use crate::ifname::IfName;

/// Prefix of every chain kvm-net creates; with a 15-byte bridge name the
/// longest chain name (`KVMNET-NAT-` + name) stays under iptables' 28 bytes.
pub const CHAIN_PREFIX: &str = "KVMNET-";

/// A chain of kvm-net's own, in `table`, jumped to from the built-in `hook`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnChain {
    /// iptables or ip6tables.
    pub family: Family,
    /// What it is for.
    pub kind: Kind,
    /// iptables table (`nat`, `filter`, `mangle`).
    pub table: &'static str,
    /// Built-in chain holding the jump.
    pub hook: &'static str,
    /// Name of kvm-net's chain.
    pub name: String,
    /// The jumps' rule specs, as `iptables -S` prints them after `-A HOOK`:
    /// one, or one per direction (see [`render`]).
    pub jumps: Vec<String>,
    /// The chain's rule specs in order, as `iptables -S` prints them after `-A NAME`.
    pub rules: Vec<String>,
    /// The comment match on every rule of kvm-net's for the bridge.
    pub tag: String,
}

impl OwnChain {
    /// Whether a rule in `owner` that jumps here is kvm-net's own: in the
    /// hook, or carrying the bridge's comment anywhere else.
    pub fn is_own_jump(&self, owner: &str, spec: &str) -> bool {
        owner == self.hook || spec.contains(&self.tag)
    }
}

/// The command that manages a family's rules.
pub fn command(family: Family) -> &'static str {
    match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    }
}

/// The tag on every rule kvm-net adds for `bridge`.
pub fn comment(bridge: &IfName) -> String {
    format!("-m comment --comment \"kvm-net:{bridge}\"")
}

/// Table, built-in chain and name tag of each kind.
fn placement(kind: Kind) -> (&'static str, &'static str, &'static str) {
    match kind {
        Kind::Masquerade => ("nat", "POSTROUTING", "NAT"),
        Kind::Forward => ("filter", "FORWARD", "FWD"),
        Kind::Guard => ("mangle", "FORWARD", "GRD"),
        Kind::Input => ("filter", "INPUT", "IN"),
        Kind::Checksum => ("mangle", "POSTROUTING", "MNG"),
        Kind::DnatIn => ("nat", "PREROUTING", "DNAT"),
        Kind::DnatLocal => ("nat", "OUTPUT", "DNATL"),
    }
}

/// kvm-net's chain of `kind` for `bridge`, reached from `hook` (its usual
/// built-in chain unless given), with `rules`.
fn own_chain(family: Family, kind: Kind, bridge: &IfName, rules: Vec<String>) -> OwnChain {
    let (table, hook, tag) = placement(kind);
    named_chain(family, kind, table, hook, &format!("{CHAIN_PREFIX}{tag}-{bridge}"), bridge, rules)
}

fn named_chain(
    family: Family,
    kind: Kind,
    table: &'static str,
    hook: &'static str,
    name: &str,
    bridge: &IfName,
    rules: Vec<String>,
) -> OwnChain {
    let tag = comment(bridge);
    let jumps = vec![format!("{tag} -j {name}")];
    OwnChain { family, kind, table, hook, name: name.to_owned(), jumps, rules, tag }
}

/// The accepts of a network whose rules live in nf_tables, copied into
/// iptables for a host whose iptables `filter` table would drop its traffic
/// (Docker, a DROP policy, a DROP or REJECT rule): `KVMNET-ACC-BRIDGE` for
/// the forward chain, `KVMNET-ACI-BRIDGE` for the input chain (DHCP, DNS),
/// reached from `hook` (`DOCKER-USER`, `FORWARD`, `INPUT`).
pub fn accept_chain(bridge: &IfName, chain: &Chain, hook: &'static str) -> OwnChain {
    let tag = comment(bridge);
    let rules = chain.rules.iter().map(|rule| rule_text(rule, &tag)).collect();
    named_chain(chain.family, chain.kind, "filter", hook, &accept_chain_name(bridge, chain.kind), bridge, rules)
}

/// `KVMNET-ACC-BRIDGE` (forward) or `KVMNET-ACI-BRIDGE` (input).
pub fn accept_chain_name(bridge: &IfName, kind: Kind) -> String {
    let tag = if kind == Kind::Input { "ACI" } else { "ACC" };
    format!("{CHAIN_PREFIX}{tag}-{bridge}")
}

/// `KVMNET-IN-BRIDGE`, the iptables backend's input chain.
pub fn input_chain_name(bridge: &IfName) -> String {
    format!("{CHAIN_PREFIX}{}-{bridge}", placement(Kind::Input).2)
}

/// `KVMNET-FWD-BRIDGE`, the iptables backend's forward chain.
pub fn forward_chain_name(bridge: &IfName) -> String {
    format!("{CHAIN_PREFIX}{}-{bridge}", placement(Kind::Forward).2)
}

/// Every chain kvm-net may have made for `bridge`, whatever mode it had: what
/// teardown removes, so that a mode changed in between leaves nothing behind.
pub fn all_chains(bridge: &IfName) -> Vec<OwnChain> {
    let v6_kinds = [Kind::Masquerade, Kind::Forward, Kind::Guard, Kind::Input, Kind::DnatIn, Kind::DnatLocal];
    let accepts = |family, kind, hook| {
        named_chain(family, kind, "filter", hook, &accept_chain_name(bridge, kind), bridge, Vec::new())
    };
    Kind::ALL
        .map(|kind| own_chain(Family::V4, kind, bridge, Vec::new()))
        .into_iter()
        .chain(v6_kinds.map(|kind| own_chain(Family::V6, kind, bridge, Vec::new())))
        .chain([
            accepts(Family::V4, Kind::Forward, "FORWARD"),
            accepts(Family::V6, Kind::Forward, "FORWARD"),
            accepts(Family::V4, Kind::Input, "INPUT"),
            accepts(Family::V6, Kind::Input, "INPUT"),
        ])
        .collect()
}

/// The plan's chains in iptables' form. iptables walks a hook's rules one
/// by one, so every packet would enter every network's chain; each jump
/// carries instead what all its chain's rules require (the bridge as the
/// way in, or out, or the subnet as the source), so that another network's
/// packet costs one comparison. A chain whose rules go both ways gets one
/// jump per direction: a packet that takes both is judged the same twice.
pub fn render(plan: &Plan) -> Vec<OwnChain> {
    let tag = comment(&plan.bridge);
    plan.chains
        .iter()
        .map(|chain| {
            let rules = chain.rules.iter().map(|rule| rule_text(rule, &tag)).collect();
            let mut own = own_chain(chain.family, chain.kind, &plan.bridge, rules);
            let unconditional = own.jumps.remove(0);
            own.jumps = jump_conditions(chain, &plan.bridge)
                .iter()
                .map(|condition| format!("{} {unconditional}", match_text(condition)))
                .collect();
            if own.jumps.is_empty() {
                own.jumps.push(unconditional);
            }
            own
        })
        .collect()
}

/// What the jumps to `chain` can require: a condition every rule has, or
/// else the bridge in and the bridge out where every rule has one of them;
/// none (one jump for every packet) otherwise.
fn jump_conditions(chain: &Chain, bridge: &IfName) -> Vec<Match> {
    let Some(first) = chain.rules.first() else { return Vec::new() };
    let shared = first.matches.iter().find(|candidate| {
        matches!(
            candidate,
            Match::InIface { negate: false, .. }
                | Match::OutIface { negate: false, .. }
                | Match::Source { negate: false, .. }
        ) && chain.rules.iter().all(|rule| rule.matches.contains(candidate))
    });
    if let Some(shared) = shared {
        return vec![shared.clone()];
    }
    let way_in = Match::InIface { name: bridge.clone(), negate: false };
    let way_out = Match::OutIface { name: bridge.clone(), negate: false };
    if chain.rules.iter().all(|rule| rule.matches.contains(&way_in) || rule.matches.contains(&way_out)) {
        return vec![way_in, way_out];
    }
    Vec::new()
}

/// Where `iptables -S` prints a match: addresses, interfaces and protocol
/// first, then the match modules in the order they were given (the
/// protocol's port, address types, conntrack).
fn position(condition: &Match) -> u8 {
    match condition {
        Match::Source { .. } => 0,
        Match::Destination { .. } => 1,
        Match::InIface { .. } => 2,
        Match::OutIface { .. } => 3,
        Match::Protocol { .. } | Match::SourcePort { .. } | Match::Icmpv6 { .. } => 4,
        Match::LocalDestination => 5,
        Match::EstablishedOrRelated { .. } | Match::Dnat { .. } => 6,
    }
}

fn match_text(condition: &Match) -> String {
    let not = |negate: bool| if negate { "! " } else { "" };
    match condition {
        Match::Source { net, negate } => format!("{}-s {net}", not(*negate)),
        Match::Destination { net, negate } => format!("{}-d {net}", not(*negate)),
        Match::InIface { name, negate } => format!("{}-i {name}", not(*negate)),
        Match::OutIface { name, negate } => format!("{}-o {name}", not(*negate)),
        Match::Protocol { protocol, destination_port } => {
            let name = protocol.as_str();
            match destination_port {
                Some(ports) if ports.is_single() => format!("-p {name} -m {name} --dport {}", ports.first),
                Some(ports) => format!("-p {name} -m {name} --dport {}:{}", ports.first, ports.last),
                None => format!("-p {name}"),
            }
        }
        Match::SourcePort { protocol, ports } => {
            let name = protocol.as_str();
            match ports.is_single() {
                true => format!("-p {name} -m {name} --sport {}", ports.first),
                false => format!("-p {name} -m {name} --sport {}:{}", ports.first, ports.last),
            }
        }
        Match::Icmpv6 { kind } => format!("-p ipv6-icmp -m icmp6 --icmpv6-type {kind}"),
        Match::EstablishedOrRelated { negate } => format!("-m conntrack {}--ctstate RELATED,ESTABLISHED", not(*negate)),
        Match::LocalDestination => "-m addrtype --dst-type LOCAL".to_owned(),
        Match::Dnat { negate } => format!("-m conntrack {}--ctstate DNAT", not(*negate)),
    }
}

/// A port forward's target: `--to-destination IP[:PORT | :FIRST-LAST/BASE]`
/// (DNAT revision 2's offset, which maps a range one to one); an IPv6
/// address in brackets before a port.
fn dnat_text(to: IpAddr, ports: &PortMapping) -> String {
    let to = match (to, ports) {
        (IpAddr::V6(v6), PortMapping::To(_) | PortMapping::Shift { .. }) => format!("[{v6}]"),
        _ => to.to_string(),
    };
    match ports {
        PortMapping::Same => format!("-j DNAT --to-destination {to}"),
        PortMapping::To(port) => format!("-j DNAT --to-destination {to}:{port}"),
        PortMapping::Shift { from, to: guest } => {
            format!("-j DNAT --to-destination {to}:{}-{}/{}", guest.first, guest.last, from.first)
        }
    }
}

/// A rule as `iptables -S` prints it: the matches in its order, the
/// comment, then the target.
fn rule_text(rule: &Rule, tag: &str) -> String {
    let mut matches: Vec<&Match> = rule.matches.iter().collect();
    matches.sort_by_key(|m| position(m));
    let mut words: Vec<String> = matches.into_iter().map(match_text).collect();
    words.push(tag.to_owned());
    words.push(match &rule.action {
        Action::Accept => "-j ACCEPT".to_owned(),
        Action::Drop => "-j DROP".to_owned(),
        Action::Return => "-j RETURN".to_owned(),
        Action::Masquerade { ports: Some((low, high)) } => format!("-j MASQUERADE --to-ports {low}-{high}"),
        Action::Masquerade { ports: None } => "-j MASQUERADE".to_owned(),
        Action::ChecksumFill => "-j CHECKSUM --checksum-fill".to_owned(),
        Action::Dnat { to, ports } => dnat_text(*to, ports),
    });
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Mode, Network};
    use crate::firewall::plan::plan;

    fn network_chains(network: &Network) -> Vec<OwnChain> {
        render(&plan(network))
    }

    fn network(mode: Mode, ipv4: Option<&str>, ipv6: Option<&str>) -> Network {
        Network {
            mode,
            ipv4: ipv4.and_then(|a| a.parse().ok()),
            ipv6: ipv6.and_then(|a| a.parse().ok()),
            ..Network::classic()
        }
    }

    fn names(chains: &[OwnChain]) -> Vec<(Family, &str)> {
        chains.iter().map(|c| (c.family, c.name.as_str())).collect()
    }

    #[test]
    fn default_network_rules_match_the_subnet_not_the_host_address() {
        let chains = network_chains(&Network::classic());
        let nat = &chains[0];
        assert_eq!((nat.table, nat.hook, nat.name.as_str()), ("nat", "POSTROUTING", "KVMNET-NAT-br0"));
        assert_eq!(nat.jumps, ["-s 192.168.100.0/24 -m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0"]);
        assert_eq!(
            nat.rules,
            [
                "-s 192.168.100.0/24 -d 224.0.0.0/24 -m comment --comment \"kvm-net:br0\" -j RETURN",
                "-s 192.168.100.0/24 -d 255.255.255.255/32 -m comment --comment \"kvm-net:br0\" -j RETURN",
                "-s 192.168.100.0/24 ! -d 192.168.100.0/24 -p tcp -m comment --comment \"kvm-net:br0\" -j MASQUERADE --to-ports 1024-65535",
                "-s 192.168.100.0/24 ! -d 192.168.100.0/24 -p udp -m comment --comment \"kvm-net:br0\" -j MASQUERADE --to-ports 1024-65535",
                "-s 192.168.100.0/24 ! -d 192.168.100.0/24 -m comment --comment \"kvm-net:br0\" -j MASQUERADE",
            ]
        );
        let forward = &chains[1];
        assert_eq!((forward.table, forward.hook, forward.name.as_str()), ("filter", "FORWARD", "KVMNET-FWD-br0"));
        assert_eq!(
            forward.rules,
            [
                "-s 192.168.100.0/24 -i br0 -m comment --comment \"kvm-net:br0\" -j ACCEPT",
                "-d 192.168.100.0/24 -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"kvm-net:br0\" -j ACCEPT",
                "-i br0 -o br0 -m comment --comment \"kvm-net:br0\" -j ACCEPT",
            ]
        );
        assert_eq!(
            forward.jumps,
            [
                "-i br0 -m comment --comment \"kvm-net:br0\" -j KVMNET-FWD-br0",
                "-o br0 -m comment --comment \"kvm-net:br0\" -j KVMNET-FWD-br0"
            ],
            "its rules go both ways"
        );
        assert_eq!(chains[2].jumps, ["-o br0 -m comment --comment \"kvm-net:br0\" -j KVMNET-GRD-br0"]);
        assert_eq!(chains.len(), 3, "NAT, FWD and the guard that keeps new connections out");
    }

    #[test]
    fn each_mode_gets_its_chains() {
        let nat66 = network_chains(&network(Mode::Nat, Some("10.0.0.1/24"), Some("fd00:1::1/64")));
        assert_eq!(
            names(&nat66),
            [
                (Family::V4, "KVMNET-NAT-br0"),
                (Family::V4, "KVMNET-FWD-br0"),
                (Family::V4, "KVMNET-GRD-br0"),
                (Family::V6, "KVMNET-NAT-br0"),
                (Family::V6, "KVMNET-FWD-br0"),
                (Family::V6, "KVMNET-GRD-br0")
            ]
        );
        assert_eq!(nat66[3].rules[0], "-s fd00:1::/64 -d ff00::/8 -m comment --comment \"kvm-net:br0\" -j RETURN");
        assert_eq!((nat66[2].table, nat66[2].hook), ("mangle", "FORWARD"));
        assert_eq!(
            nat66[2].rules,
            ["! -i br0 -o br0 -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment \"kvm-net:br0\" -j DROP"]
        );
        let routed = network_chains(&network(Mode::Routed, Some("10.0.0.1/24"), None));
        assert_eq!(names(&routed), [(Family::V4, "KVMNET-FWD-br0")]);
        assert_eq!(routed[0].rules[1], "-d 10.0.0.0/24 -o br0 -m comment --comment \"kvm-net:br0\" -j ACCEPT");
        let isolated = network_chains(&network(Mode::Isolated, None, None));
        assert_eq!(
            names(&isolated),
            [
                (Family::V4, "KVMNET-FWD-br0"),
                (Family::V4, "KVMNET-GRD-br0"),
                (Family::V6, "KVMNET-FWD-br0"),
                (Family::V6, "KVMNET-GRD-br0")
            ]
        );
        assert_eq!(
            isolated[3].rules,
            [
                "-i br0 ! -o br0 -m comment --comment \"kvm-net:br0\" -j DROP",
                "! -i br0 -o br0 -m comment --comment \"kvm-net:br0\" -j DROP"
            ]
        );
        assert!(network_chains(&network(Mode::Bridged, None, None)).is_empty());
        assert_eq!(all_chains(&Network::classic().bridge).len(), 17);
        let with_dhcp = Network {
            dhcp: Some(crate::config::model::Dhcp::defaults_for("10.0.0.1/24".parse().expect("net"))),
            ..Network::classic()
        };
        let chains = network_chains(&with_dhcp);
        let input = chains.iter().find(|c| c.hook == "INPUT").expect("input chain");
        assert_eq!(input.rules[0], "-i br0 -p udp -m udp --dport 67 -m comment --comment \"kvm-net:br0\" -j ACCEPT");
        assert_eq!(input.rules.len(), 3);
        let mangle = chains.iter().find(|c| c.hook == "POSTROUTING" && c.table == "mangle").expect("mangle chain");
        assert_eq!(
            mangle.rules,
            ["-o br0 -p udp -m udp --dport 68 -m comment --comment \"kvm-net:br0\" -j CHECKSUM --checksum-fill"]
        );
    }

    #[test]
    fn ipv6_rules_read_as_ip6tables_prints_them() {
        let guest: IpAddr = "fd00:60::10".parse().expect("an address");
        assert_eq!(dnat_text(guest, &PortMapping::Same), "-j DNAT --to-destination fd00:60::10");
        assert_eq!(dnat_text(guest, &PortMapping::To(22)), "-j DNAT --to-destination [fd00:60::10]:22");
        let (from, to) = (
            crate::ports::PortRange::parse("8000-8010").expect("a range"),
            crate::ports::PortRange::parse("9000-9010").expect("a range"),
        );
        assert_eq!(
            dnat_text(guest, &PortMapping::Shift { from, to }),
            "-j DNAT --to-destination [fd00:60::10]:9000-9010/8000"
        );
        assert_eq!(match_text(&Match::Icmpv6 { kind: 133 }), "-p ipv6-icmp -m icmp6 --icmpv6-type 133");
    }

    #[test]
    fn longest_bridge_name_fits_iptables_chain_limit() {
        let bridge = IfName::parse("abcdefghijklmno").expect("valid");
        for chain in all_chains(&bridge) {
            assert!(chain.name.len() <= 28, "{} is {} bytes", chain.name, chain.name.len());
        }
    }
}
