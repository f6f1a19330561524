//! The rules a NAT bridge needs, built as the exact text `iptables -S` prints,
//! so that a listing can be compared with what should be there.

use crate::config::{Mode, Network};
use crate::ifname::IfName;

/// Prefix of every chain kvm-net creates; with a 15-byte bridge name the
/// longest chain name (`KVMNET-NAT-` + name) stays under iptables' 28 bytes.
pub const CHAIN_PREFIX: &str = "KVMNET-";

/// Which of iptables and ip6tables holds a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    /// The command that manages this family's rules.
    pub fn command(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// A chain of kvm-net's own, in `table`, jumped to from the built-in `hook`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnChain {
    /// iptables or ip6tables.
    pub family: Family,
    /// iptables table (`nat`, `filter`).
    pub table: &'static str,
    /// Built-in chain holding the jump.
    pub hook: &'static str,
    /// Name of kvm-net's chain.
    pub name: String,
    /// The jump's rule spec, as `iptables -S` prints it after `-A HOOK`.
    pub jump: String,
    /// The chain's rule specs in order, as `iptables -S` prints them after `-A NAME`.
    pub rules: Vec<String>,
}

/// The tag on every rule kvm-net adds for `bridge`.
pub fn comment(bridge: &IfName) -> String {
    format!("-m comment --comment \"kvm-net:{bridge}\"")
}

/// The kinds of chain kvm-net keeps per bridge and family.
#[derive(Clone, Copy)]
enum Kind {
    Masquerade,
    Forward,
    /// DHCP and DNS from guests to the bridge's dnsmasq.
    Input,
    /// Checksums of DHCP replies, which guests using vhost-net otherwise drop.
    Checksum,
    /// What must never be forwarded to or from the bridge (isolated: all;
    /// nat: new connections in). In mangle FORWARD, which runs before filter:
    /// a drop there is final, so no accept in filter FORWARD (another
    /// network's, whichever order they started in, or anyone's) can undo it.
    Guard,
}

fn own_chain(family: Family, kind: Kind, bridge: &IfName, rules: Vec<String>) -> OwnChain {
    let (table, hook, tag) = match kind {
        Kind::Masquerade => ("nat", "POSTROUTING", "NAT"),
        Kind::Forward => ("filter", "FORWARD", "FWD"),
        Kind::Input => ("filter", "INPUT", "IN"),
        Kind::Checksum => ("mangle", "POSTROUTING", "MNG"),
        Kind::Guard => ("mangle", "FORWARD", "GRD"),
    };
    let name = format!("{CHAIN_PREFIX}{tag}-{bridge}");
    let jump = format!("{} -j {name}", comment(bridge));
    OwnChain { family, table, hook, name, jump, rules }
}

/// Every chain kvm-net may have made for `bridge`, whatever mode it had: what
/// teardown removes, so that a mode changed in between leaves nothing behind.
pub fn all_chains(bridge: &IfName) -> Vec<OwnChain> {
    [Kind::Masquerade, Kind::Forward, Kind::Guard, Kind::Input, Kind::Checksum]
        .map(|kind| own_chain(Family::V4, kind, bridge, Vec::new()))
        .into_iter()
        .chain(
            [Kind::Masquerade, Kind::Forward, Kind::Guard].map(|kind| own_chain(Family::V6, kind, bridge, Vec::new())),
        )
        .collect()
}

/// The chains a managed network needs, by mode (libvirt's rule sets, so that
/// guests behave as on its networks). Bridged networks need none.
pub fn network_chains(network: &Network) -> Vec<OwnChain> {
    let bridge = &network.bridge;
    let tag = comment(bridge);
    let subnets: Vec<(Family, String)> = network
        .subnet4()
        .map(|s| (Family::V4, s.to_string()))
        .into_iter()
        .chain(network.subnet6().map(|s| (Family::V6, s.to_string())))
        .collect();
    let mut chains = Vec::new();
    match network.mode {
        Mode::Bridged => {}
        Mode::Nat | Mode::Routed => {
            for (family, subnet) in &subnets {
                if network.mode == Mode::Nat {
                    chains.push(own_chain(*family, Kind::Masquerade, bridge, masquerade_rules(*family, subnet, &tag)));
                }
                let back = match network.mode {
                    // Replies only: NAT hides the guests from the outside.
                    Mode::Nat => " -m conntrack --ctstate RELATED,ESTABLISHED",
                    _ => "",
                };
                chains.push(own_chain(
                    *family,
                    Kind::Forward,
                    bridge,
                    vec![
                        format!("-s {subnet} -i {bridge} {tag} -j ACCEPT"),
                        format!("-d {subnet} -o {bridge}{back} {tag} -j ACCEPT"),
                        format!("-i {bridge} -o {bridge} {tag} -j ACCEPT"),
                    ],
                ));
                if network.mode == Mode::Nat {
                    // Closed to new connections from outside the bridge, as
                    // libvirt's NAT networks are; replies pass.
                    chains.push(own_chain(
                        *family,
                        Kind::Guard,
                        bridge,
                        vec![format!(
                            "! -i {bridge} -o {bridge} -m conntrack ! --ctstate RELATED,ESTABLISHED {tag} -j DROP"
                        )],
                    ));
                }
            }
        }
        Mode::Isolated => {
            // Both families always: an isolated bridge must not leak even
            // where another network turned forwarding on. Guests still reach
            // each other where bridged frames go through iptables (br_netfilter).
            for family in [Family::V4, Family::V6] {
                chains.push(own_chain(
                    family,
                    Kind::Forward,
                    bridge,
                    vec![format!("-i {bridge} -o {bridge} {tag} -j ACCEPT")],
                ));
                chains.push(own_chain(
                    family,
                    Kind::Guard,
                    bridge,
                    vec![
                        format!("-i {bridge} ! -o {bridge} {tag} -j DROP"),
                        format!("! -i {bridge} -o {bridge} {tag} -j DROP"),
                    ],
                ));
            }
        }
    }
    if let Some(dhcp) = &network.dhcp {
        let mut accept = vec![format!("-i {bridge} -p udp -m udp --dport 67 {tag} -j ACCEPT")];
        if dhcp.dns {
            accept.push(format!("-i {bridge} -p udp -m udp --dport 53 {tag} -j ACCEPT"));
            accept.push(format!("-i {bridge} -p tcp -m tcp --dport 53 {tag} -j ACCEPT"));
        }
        chains.push(own_chain(Family::V4, Kind::Input, bridge, accept));
        chains.push(own_chain(
            Family::V4,
            Kind::Checksum,
            bridge,
            vec![format!("-o {bridge} -p udp -m udp --dport 68 {tag} -j CHECKSUM --checksum-fill")],
        ));
    }
    chains
}

fn masquerade_rules(family: Family, subnet: &str, tag: &str) -> Vec<String> {
    let keep = match family {
        Family::V4 => vec![
            format!("-s {subnet} -d 224.0.0.0/24 {tag} -j RETURN"),
            format!("-s {subnet} -d 255.255.255.255/32 {tag} -j RETURN"),
        ],
        Family::V6 => vec![format!("-s {subnet} -d ff00::/8 {tag} -j RETURN")],
    };
    keep.into_iter()
        .chain([
            format!("-s {subnet} ! -d {subnet} -p tcp {tag} -j MASQUERADE --to-ports 1024-65535"),
            format!("-s {subnet} ! -d {subnet} -p udp {tag} -j MASQUERADE --to-ports 1024-65535"),
            format!("-s {subnet} ! -d {subnet} {tag} -j MASQUERADE"),
        ])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(nat.jump, "-m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0");
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
        assert_eq!(all_chains(&Network::classic().bridge).len(), 8);
        let with_dhcp = Network {
            dhcp: Some(crate::config::Dhcp::defaults_for("10.0.0.1/24".parse().expect("net"))),
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
    fn longest_bridge_name_fits_iptables_chain_limit() {
        let bridge = IfName::parse("abcdefghijklmno").expect("valid");
        for chain in all_chains(&bridge) {
            assert!(chain.name.len() <= 28, "{} is {} bytes", chain.name, chain.name.len());
        }
    }
}
