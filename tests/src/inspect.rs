//! Reading back what the helpers left in a namespace.

use crate::Netns;

/// Whether a link of that name exists.
pub fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.output(&["ip", "link", "show", "dev", name]).status.success()
}

/// The bridge a link is a port of.
pub fn controller_of(ns: &Netns, name: &str) -> Option<String> {
    let line = ns.ok(&["ip", "-o", "link", "show", "dev", name]);
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "master").map(|w| w[1].to_owned())
}

/// Whether a link is administratively up.
pub fn is_up(ns: &Netns, name: &str) -> bool {
    let line = ns.ok(&["ip", "-o", "link", "show", "dev", name]);
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
}

/// A link's MTU.
pub fn mtu_of(ns: &Netns, name: &str) -> u32 {
    let line = ns.ok(&["ip", "-o", "link", "show", "dev", name]);
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "mtu").and_then(|w| w[1].parse().ok()).expect("mtu in ip output")
}

/// Lines of one iptables table that mention kvm-net (its chains, jumps and rules).
pub fn kvm_net_lines(ns: &Netns, table: &str) -> Vec<String> {
    kvm_net_lines_of(ns, "iptables", table)
}

/// As [`kvm_net_lines`], for `iptables` or `ip6tables`.
pub fn kvm_net_lines_of(ns: &Netns, command: &str, table: &str) -> Vec<String> {
    ns.ok(&[command, "-t", table, "-S"])
        .lines()
        .filter(|l| l.contains("KVMNET") || l.contains("kvm-net"))
        .map(String::from)
        .collect()
}

/// Panics unless the bridge and every kvm-net rule for it are gone, in both
/// families and every table kvm-net writes to.
pub fn assert_no_nat_network(ns: &Netns, bridge: &str) {
    assert!(!link_exists(ns, bridge), "bridge {bridge} left behind");
    let ours: Vec<String> = ["NAT", "FWD", "IN", "MNG"]
        .iter()
        .map(|kind| format!("KVMNET-{kind}-{bridge}"))
        .chain([format!("\"kvm-net:{bridge}\"")])
        .collect();
    for command in ["iptables", "ip6tables"] {
        for table in ["nat", "filter", "mangle"] {
            let left: Vec<String> = kvm_net_lines_of(ns, command, table)
                .into_iter()
                .filter(|line| line.split_whitespace().any(|word| ours.iter().any(|o| o == word)))
                .collect();
            assert_eq!(left, Vec::<String>::new(), "{command} -t {table} still has rules of {bridge}");
        }
    }
}

/// Both firewall tables kvm-net writes to, as `iptables -S` prints them.
pub fn firewall(ns: &Netns) -> String {
    ns.ok(&["iptables", "-t", "nat", "-S"]) + &ns.ok(&["iptables", "-t", "filter", "-S"])
}

/// Whether a process runs: it exists and is not a zombie (exited, waiting
/// for its parent, often init, to collect its status).
pub fn alive(pid: impl std::fmt::Display) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}
