//! The rules a NAT bridge needs, built as the exact text `iptables -S` prints,
//! so that a listing can be compared with what should be there.

use ipnetwork::Ipv4Network;

use crate::ifname::IfName;

/// Prefix of every chain kvm-net creates; with a 15-byte bridge name the
/// longest chain name (`KVMNET-NAT-` + name) stays under iptables' 28 bytes.
pub const CHAIN_PREFIX: &str = "KVMNET-";

/// A chain of kvm-net's own, in `table`, jumped to from the built-in `hook`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnChain {
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

fn own_chain(table: &'static str, hook: &'static str, kind: &str, bridge: &IfName, rules: Vec<String>) -> OwnChain {
    let name = format!("{CHAIN_PREFIX}{kind}-{bridge}");
    let jump = format!("{} -j {name}", comment(bridge));
    OwnChain {
        table,
        hook,
        name,
        jump,
        rules,
    }
}

/// Masquerade and forward chains for a NAT bridge serving `subnet`
/// (libvirt's rule set, so guests behave as on virbr0).
pub fn nat_chains(bridge: &IfName, subnet: Ipv4Network) -> Vec<OwnChain> {
    let tag = comment(bridge);
    let masquerade = vec![
        format!("-s {subnet} -d 224.0.0.0/24 {tag} -j RETURN"),
        format!("-s {subnet} -d 255.255.255.255/32 {tag} -j RETURN"),
        format!("-s {subnet} ! -d {subnet} -p tcp {tag} -j MASQUERADE --to-ports 1024-65535"),
        format!("-s {subnet} ! -d {subnet} -p udp {tag} -j MASQUERADE --to-ports 1024-65535"),
        format!("-s {subnet} ! -d {subnet} {tag} -j MASQUERADE"),
    ];
    let forward = vec![
        format!("-s {subnet} -i {bridge} {tag} -j ACCEPT"),
        format!("-d {subnet} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
        format!("-i {bridge} -o {bridge} {tag} -j ACCEPT"),
    ];
    vec![
        own_chain("nat", "POSTROUTING", "NAT", bridge, masquerade),
        own_chain("filter", "FORWARD", "FWD", bridge, forward),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> IfName {
        IfName::parse(s).expect("valid test name")
    }

    #[test]
    fn default_network_rules_match_the_subnet_not_the_host_address() {
        let subnet: Ipv4Network = "192.168.100.0/24".parse().expect("valid");
        let chains = nat_chains(&name("br0"), subnet);
        let nat = &chains[0];
        assert_eq!(
            (nat.table, nat.hook, nat.name.as_str()),
            ("nat", "POSTROUTING", "KVMNET-NAT-br0")
        );
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
        assert_eq!(
            (forward.table, forward.hook, forward.name.as_str()),
            ("filter", "FORWARD", "KVMNET-FWD-br0")
        );
        assert_eq!(
            forward.rules,
            [
                "-s 192.168.100.0/24 -i br0 -m comment --comment \"kvm-net:br0\" -j ACCEPT",
                "-d 192.168.100.0/24 -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"kvm-net:br0\" -j ACCEPT",
                "-i br0 -o br0 -m comment --comment \"kvm-net:br0\" -j ACCEPT",
            ]
        );
    }

    #[test]
    fn longest_bridge_name_fits_iptables_chain_limit() {
        let subnet: Ipv4Network = "10.0.0.0/8".parse().expect("valid");
        for chain in nat_chains(&name("abcdefghijklmno"), subnet) {
            assert!(chain.name.len() <= 28, "{} is {} bytes", chain.name, chain.name.len());
        }
    }
}
