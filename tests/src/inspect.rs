//! Reading back what the helpers left in a namespace, in whichever firewall
//! backend the suites run against.

use crate::Netns;

/// Environment variable choosing the firewall backend the suites run
/// against (`nftables`, the default, or `iptables`); every helper a test
/// runs gets it as `KVM_NET_FIREWALL`.
pub const ENV_TEST_FIREWALL: &str = "KVM_NET_TEST_FIREWALL";

/// The two firewall backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// kvm-net's own `kvm_net` tables, over netlink.
    Nftables,
    /// Chains in iptables' tables.
    Iptables,
}

impl Backend {
    /// As the config and `KVM_NET_FIREWALL` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

/// The backend under test.
pub fn backend() -> Backend {
    match std::env::var(ENV_TEST_FIREWALL).as_deref() {
        Ok("iptables") => Backend::Iptables,
        _ => Backend::Nftables,
    }
}

/// Drops the fingerprint from a rule's nft comment: `comment "kvm-net:br0
/// 1a2b3c4d"` becomes `comment "kvm-net:br0"`.
fn without_fingerprint(line: &str) -> String {
    match line.find("comment \"kvm-net") {
        Some(start) => {
            let comment = &line[start..];
            match comment.trim_end_matches('"').rsplit_once(' ') {
                Some((head, hash)) if hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                    format!("{}{head}\"", &line[..start])
                }
                _ => line.to_owned(),
            }
        }
        None => line.to_owned(),
    }
}

/// The rules of one chain of kvm-net's nftables table of `family` (`ip`,
/// `ip6`), one per line as `nft` lists them, without fingerprints; empty
/// if there is no such chain.
pub fn nft_chain(ns: &Netns, family: &str, chain: &str) -> Vec<String> {
    let out = ns.output(&["nft", "list", "chain", family, "kvm_net", chain]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("table ") && !l.starts_with("chain ") && *l != "}")
        .map(without_fingerprint)
        .collect()
}

/// `nft -s list ruleset` (stateless: counters would differ between two listings).
pub fn nft_ruleset(ns: &Netns) -> String {
    ns.ok(&["nft", "-s", "list", "ruleset"])
}

/// Whether kvm-net's chain of `kind` (`NAT`, `FWD`, `GRD`, `IN`, `MNG` as
/// iptables names them) exists for `bridge`, in the backend under test.
pub fn has_chain(ns: &Netns, kind: &str, bridge: &str) -> bool {
    match backend() {
        Backend::Iptables => ["nat", "filter", "mangle"]
            .iter()
            .any(|table| kvm_net_lines(ns, table).iter().any(|l| l == &format!("-N KVMNET-{kind}-{bridge}"))),
        Backend::Nftables => {
            let prefix = match kind {
                "NAT" => "nat",
                "FWD" => "fwd",
                "GRD" => "grd",
                "IN" => "in",
                other => panic!("nftables has no {other} chain"),
            };
            ["ip", "ip6"].iter().any(|family| !nft_chain(ns, family, &format!("{prefix}-{bridge}")).is_empty())
        }
    }
}

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
/// backends, both families and every table kvm-net writes to.
pub fn assert_no_nat_network(ns: &Netns, bridge: &str) {
    let ruleset = nft_ruleset(ns);
    let nft_left: Vec<&str> = ruleset
        .lines()
        .filter(|l| l.contains(&format!("-{bridge} ")) || l.contains(&format!("\"{bridge}\"")))
        .collect();
    assert!(nft_left.is_empty(), "nftables still has rules of {bridge}: {nft_left:?}\n{ruleset}");
    assert!(!link_exists(ns, bridge), "bridge {bridge} left behind");
    let ours: Vec<String> = ["NAT", "FWD", "GRD", "IN", "MNG", "ACC", "ACI", "DNAT", "DNATL"]
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

/// Waits at most `within` for the network on `bridge` to go with every
/// process in `ns` (its dnsmasq, a bridge helper's watcher), then panics
/// unless the bridge, its rules and those processes are gone.
pub fn assert_network_gone_within(ns: &Netns, bridge: &str, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while (link_exists(ns, bridge) || !ns.processes().is_empty()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ns.processes().is_empty(), "processes left in the namespace: {:?}", ns.processes());
    assert_no_nat_network(ns, bridge);
}

/// The whole firewall as kvm-net could change it: iptables' tables, as
/// `iptables -S` and `ip6tables -S` print them (iptables-nft leaves empty
/// built-in chains behind that only `nft` would show), and kvm-net's own
/// nftables tables.
pub fn firewall(ns: &Netns) -> String {
    let mut text = String::new();
    for command in ["iptables", "ip6tables"] {
        for table in ["nat", "filter", "mangle"] {
            text += &ns.ok(&[command, "-t", table, "-S"]);
        }
    }
    for family in ["ip", "ip6"] {
        text += &String::from_utf8_lossy(&ns.output(&["nft", "-s", "list", "table", family, "kvm_net"]).stdout);
    }
    text
}

/// Waits, at most `within`, until process `pid` has exited (or is a
/// zombie); panics naming `what` if it has not.
#[track_caller]
pub fn wait_until_gone(pid: i32, within: std::time::Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while alive(pid) {
        assert!(std::time::Instant::now() < deadline, "{what} (process {pid}) still runs after {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether a process runs: it exists and is not a zombie (exited, waiting
/// for its parent, often init, to collect its status).
pub fn alive(pid: impl std::fmt::Display) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Waits, at most `within`, until every watcher in `ns` has read all the
/// link notifications sent to it and is blocked waiting for the next one:
/// after a port left, the proof that the watcher has handled its departure
/// (what it does when it keeps the network shows nowhere else). Panics if
/// one never is.
#[track_caller]
pub fn watchers_idle(ns: &Netns, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let watchers: Vec<i32> = ns
            .processes()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kvm-net-watch")
            })
            .filter(|pid| alive(*pid))
            .collect();
        if watchers.iter().all(|pid| idle(*pid)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "watchers {watchers:?} still busy after {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether process `pid` is blocked receiving (`recvfrom`, `recvmsg`)
/// with nothing queued on any of its netlink sockets.
fn idle(pid: i32) -> bool {
    let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let receiving = matches!(syscall.split_whitespace().next(), Some("45" | "47"));
    let sockets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let netlink = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    let queued = netlink.lines().skip(1).any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.len() >= 10 && sockets.iter().any(|inode| inode == words[9]) && words[4] != "0"
    });
    receiving && !queued
}
