//! NAT guests on hosts whose own firewall drops or rejects what it does not
//! know: iptables-services' default on RHEL and CentOS (INPUT and FORWARD
//! end in `-j REJECT`), a DROP in a chain of the host's own, ip6tables, a
//! REJECT put ahead of kvm-net's rules after the network came up, and an
//! nftables table of the administrator's with a drop policy. Under each
//! firewall backend: guests get a lease and get out, `kvm-net check` tells
//! the truth (never "no problems" while they cannot), the fix it names
//! works, and teardown leaves the host's rules exactly as they were.

use std::time::Duration;

use kvm_net_tests::inspect::{assert_no_nat_network, backend, firewall, Backend};
use kvm_net_tests::lab::{connect_within, lease, Lab, UpstreamServer, HOST_UPLINK, UPSTREAM, UPSTREAM6};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const CONFIG: &str = r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"
ipv6 = "fd00:6b76::1/64"
"#;

/// The iptables-services default of RHEL and CentOS (`/etc/sysconfig/iptables`).
const RHEL_DEFAULT: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
COMMIT
";

/// Long enough for any answer between namespaces; a rejected SYN is answered at once.
const WAIT: Duration = Duration::from_secs(2);

struct Host {
    lab: Lab,
    config: ConfigFile,
    upstream: UpstreamServer,
    guest: Netns,
}

impl Host {
    /// A lab whose host runs `iptables-restore` of `rules` (and
    /// `ip6tables-restore` of `rules6`) before any VM, and a guest with no
    /// address yet on tap `vm0`.
    fn new(rules: &str, rules6: &str) -> Self {
        let lab = Lab::new();
        for (command, text) in [("iptables-restore", rules), ("ip6tables-restore", rules6)] {
            if !text.is_empty() {
                lab.host.sh(&format!("printf '%s' '{text}' | {command}"));
            }
        }
        let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
        let guest = lab.guest("vm0", "0.0.0.0/32", None);
        Self { lab, config: ConfigFile::new(CONFIG), upstream, guest }
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("KVM_NET_CONFIG", self.config.path())]
    }

    fn natup(&self) {
        ok_with(&self.lab.host, "kvm-natup", "vm0", &self.env());
    }

    fn natdown(&self) {
        ok_with(&self.lab.host, "kvm-natdown", "vm0", &self.env());
    }

    /// A lease for the guest, put on its eth0 with a default route.
    fn take_lease(&self) {
        let address = lease(&self.guest).expect("no DHCP lease");
        self.guest.sh(&format!(
            "ip addr flush dev eth0; ip addr add {address}/24 dev eth0; ip route replace default via 192.168.100.1"
        ));
    }

    /// Whether the guest reaches the upstream server over IPv4.
    fn gets_out(&self) -> bool {
        connect_within(&self.guest, UPSTREAM, &self.upstream, "out", WAIT)
            .is_ok_and(|r| r == format!("seen {HOST_UPLINK}"))
    }

    /// `kvm-net check`: its exit status and output.
    fn check(&self) -> (i32, String) {
        let out = run(&self.lab.host, "kvm-net", &["check"], &self.env());
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kvm_net(&self, args: &[&str]) {
        let out = run(&self.lab.host, "kvm-net", args, &self.env());
        assert!(out.status.success(), "kvm-net {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// iptables' and ip6tables' filter tables, as `-S` prints them.
fn host_rules(ns: &Netns) -> String {
    ["iptables", "ip6tables"].iter().map(|command| ns.ok(&[command, "-S"])).collect()
}

#[test]
fn guests_get_a_lease_and_out_on_a_host_whose_input_and_forward_end_in_reject() {
    let host = Host::new(RHEL_DEFAULT, "");
    let before = host_rules(&host.lab.host);
    host.natup();
    host.take_lease();
    assert!(host.gets_out(), "the guest cannot get out past FORWARD's REJECT:\n{}", firewall(&host.lab.host));
    assert_eq!(host.check(), (0, "ok: no problems found\n".to_owned()));
    host.natdown();
    assert_no_nat_network(&host.lab.host, "br0");
    assert_eq!(host_rules(&host.lab.host), before, "the host's own rules must be as they were");
}

#[test]
fn a_drop_in_a_chain_of_the_hosts_own_is_passed_too() {
    let rules =
        "*filter\n:HOSTFW - [0:0]\n-A HOSTFW -p tcp -j DROP\n-A HOSTFW -j REJECT\n-A FORWARD -j HOSTFW\nCOMMIT\n";
    let host = Host::new(rules, "");
    let before = host_rules(&host.lab.host);
    host.natup();
    host.take_lease();
    assert!(host.gets_out(), "{}", firewall(&host.lab.host));
    assert_eq!(host.check().0, 0, "{}", host.check().1);
    host.natdown();
    assert_eq!(host_rules(&host.lab.host), before);
}

#[test]
fn ipv6_guests_get_out_past_an_ip6tables_drop_rule() {
    let host = Host::new("", "*filter\n-A FORWARD -j DROP\nCOMMIT\n");
    let upstream6 = UpstreamServer::start(&host.lab.upstream, UPSTREAM6);
    host.guest.sh("ip addr add fd00:6b76::10/64 dev eth0 nodad; ip -6 route add default via fd00:6b76::1");
    host.natup();
    let reply = connect_within(&host.guest, UPSTREAM6, &upstream6, "out6", WAIT);
    assert!(reply.is_ok(), "{reply:?}\n{}", firewall(&host.lab.host));
    assert_eq!(host.check().0, 0, "{}", host.check().1);
    host.natdown();
    assert_no_nat_network(&host.lab.host, "br0");
}

#[test]
fn a_reject_put_ahead_later_is_found_and_repair_passes_it_again() {
    let host = Host::new("", "");
    host.natup();
    host.take_lease();
    assert!(host.gets_out());
    host.lab.host.ok(&["iptables", "-I", "FORWARD", "1", "-j", "REJECT"]);
    assert!(!host.gets_out(), "the REJECT ahead should have cut the guest off");
    let (code, said) = host.check();
    assert_eq!(code, 2, "{said}");
    let expected = "error [forward-drop]: guests of network default cannot get out: `-A FORWARD -j REJECT --reject-with icmp-port-unreachable` comes before kvm-net's accepts";
    let expected_without_accepts = "error [forward-drop]: guests of network default cannot get out: iptables drops forwarded traffic here (a DROP or REJECT rule) and kvm-net's accepts in FORWARD are missing";
    let wanted = if backend() == Backend::Iptables { expected } else { expected_without_accepts };
    assert!(said.contains(wanted), "{said}");
    host.kvm_net(&["repair", "default"]);
    assert!(host.gets_out(), "repair did not pass the REJECT:\n{}", firewall(&host.lab.host));
    assert_eq!(host.check().0, 0, "{}", host.check().1);
    // Put ahead of kvm-net's accepts once more: check names the rule, repair fixes it again.
    host.lab.host.ok(&["iptables", "-I", "FORWARD", "1", "-j", "REJECT"]);
    let said = host.check().1;
    assert!(
        said.contains("`-A FORWARD -j REJECT --reject-with icmp-port-unreachable` comes before kvm-net's accepts"),
        "{said}"
    );
    host.kvm_net(&["repair", "default"]);
    assert!(host.gets_out());
    host.natdown();
    assert_no_nat_network(&host.lab.host, "br0");
    let left = host.lab.host.ok(&["iptables", "-S", "FORWARD"]);
    assert_eq!(left.lines().filter(|l| l.contains("REJECT")).count(), 2, "the host's REJECTs must stay: {left}");
}

#[test]
fn another_tables_drop_policy_is_named_with_its_fix() {
    let host = Host::new("", "");
    host.lab.host.sh("nft add table inet filter; nft add chain inet filter forward '{ type filter hook forward priority 0; policy drop; }'");
    host.natup();
    host.take_lease();
    // kvm-net cannot pass another table's drop: it must say so, not "no problems found".
    assert!(!host.gets_out());
    let (code, said) = host.check();
    assert_eq!(code, 2, "{said}");
    let finding = said.lines().find(|l| l.starts_with("error [foreign-drop]")).unwrap_or_else(|| panic!("{said}"));
    assert!(finding.contains("table inet filter, chain forward (forward hook) can drop network default's guests' forwarded traffic (its policy is drop)"), "{finding}");
    // The fix it names, done by hand: the guest gets out, and check is clean.
    let fixes = finding.split_once("fix: accept the bridge's traffic in that chain: ").expect("a fix").1;
    for command in fixes.split("; ") {
        host.lab.host.sh(command);
    }
    assert!(host.gets_out(), "{}", host.lab.host.ok(&["nft", "list", "table", "inet", "filter"]));
    assert_eq!(host.check().0, 0, "{}", host.check().1);
    host.natdown();
    // The accepts the administrator added name br0 too; kvm-net left them, as everything of theirs.
    let theirs = host.lab.host.ok(&["nft", "list", "chain", "inet", "filter", "forward"]);
    assert!(theirs.contains("policy drop") && theirs.contains("iifname \"br0\" accept"), "{theirs}");
    host.lab.host.ok(&["nft", "flush", "chain", "inet", "filter", "forward"]);
    assert_no_nat_network(&host.lab.host, "br0");
}
