//! The four helpers run as QEMU runs them (`HELPER IFNAME`), each test in
//! network namespaces of its own, against the real kernel and the firewall
//! backend under test (`make test` runs this suite for each).

use std::process::Stdio;

use kvm_net_tests::inspect::{
    assert_no_nat_network, backend, controller_of, firewall, has_chain, is_up, kvm_net_lines, link_exists, mtu_of,
    nft_chain, Backend,
};
use kvm_net_tests::lab::{connect_from, Lab, UpstreamServer, HOST_UPLINK, UPSTREAM};
use kvm_net_tests::run::{add_tap, assert_refused, ok, ok_with, run, traced, ConfigFile};
use kvm_net_tests::{helper, Netns};

fn expected_nat_lines(bridge: &str, subnet: &str) -> Vec<String> {
    let tag = format!("-m comment --comment \"kvm-net:{bridge}\"");
    let chain = format!("KVMNET-NAT-{bridge}");
    vec![
        format!("-N {chain}"),
        // Only the subnet's packets enter the chain.
        format!("-A POSTROUTING -s {subnet} {tag} -j {chain}"),
        format!("-A {chain} -s {subnet} -d 224.0.0.0/24 {tag} -j RETURN"),
        format!("-A {chain} -s {subnet} -d 255.255.255.255/32 {tag} -j RETURN"),
        format!("-A {chain} -s {subnet} ! -d {subnet} -p tcp {tag} -j MASQUERADE --to-ports 1024-65535"),
        format!("-A {chain} -s {subnet} ! -d {subnet} -p udp {tag} -j MASQUERADE --to-ports 1024-65535"),
        format!("-A {chain} -s {subnet} ! -d {subnet} {tag} -j MASQUERADE"),
    ]
}

fn expected_filter_lines(bridge: &str, subnet: &str) -> Vec<String> {
    let tag = format!("-m comment --comment \"kvm-net:{bridge}\"");
    let chain = format!("KVMNET-FWD-{bridge}");
    vec![
        format!("-N {chain}"),
        // One jump per direction: other networks' packets do not enter the chain.
        format!("-A FORWARD -i {bridge} {tag} -j {chain}"),
        format!("-A FORWARD -o {bridge} {tag} -j {chain}"),
        format!("-A {chain} -s {subnet} -i {bridge} {tag} -j ACCEPT"),
        format!("-A {chain} -d {subnet} -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {tag} -j ACCEPT"),
        format!("-A {chain} -i {bridge} -o {bridge} {tag} -j ACCEPT"),
    ]
}

/// kvm-net's nftables chains of a NAT network, as `nft list` prints them.
fn expected_nft_chains(bridge: &str, subnet: &str) -> [(String, Vec<String>); 3] {
    let tag = format!("comment \"kvm-net:{bridge}\"");
    let leaving = format!("ip saddr {subnet} ip daddr != {subnet}");
    [
        (
            format!("nat-{bridge}"),
            vec![
                format!("ip saddr {subnet} ip daddr 224.0.0.0/24 return {tag}"),
                format!("ip saddr {subnet} ip daddr 255.255.255.255 return {tag}"),
                format!("{leaving} meta l4proto tcp masquerade to :1024-65535 {tag}"),
                format!("{leaving} meta l4proto udp masquerade to :1024-65535 {tag}"),
                format!("{leaving} masquerade {tag}"),
            ],
        ),
        (
            format!("fwd-{bridge}"),
            vec![
                format!("ip saddr {subnet} iifname \"{bridge}\" accept {tag}"),
                format!("ip daddr {subnet} oifname \"{bridge}\" ct state established,related accept {tag}"),
                format!("iifname \"{bridge}\" oifname \"{bridge}\" accept {tag}"),
            ],
        ),
        (
            format!("grd-{bridge}"),
            vec![format!("iifname != \"{bridge}\" oifname \"{bridge}\" ct state ! established,related drop {tag}")],
        ),
    ]
}

fn assert_nat_network(ns: &Netns, bridge: &str, address: &str, subnet: &str) {
    assert!(link_exists(ns, bridge), "bridge {bridge} missing");
    assert!(ns.ok(&["ip", "-o", "-4", "addr", "show", "dev", bridge]).contains(&format!("inet {address} ")));
    assert!(is_up(ns, bridge), "bridge {bridge} is down");
    assert_eq!(ns.ok(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    match backend() {
        Backend::Iptables => {
            assert_eq!(kvm_net_lines(ns, "nat"), expected_nat_lines(bridge, subnet));
            assert_eq!(kvm_net_lines(ns, "filter"), expected_filter_lines(bridge, subnet));
        }
        Backend::Nftables => {
            for (chain, rules) in expected_nft_chains(bridge, subnet) {
                assert_eq!(nft_chain(ns, "ip", &chain), rules, "chain {chain}");
            }
            for (map, chain) in [("postrouting", "nat"), ("forward", "fwd"), ("guard", "grd")] {
                let listing = ns.ok(&["nft", "list", "map", "ip", "kvm_net", map]);
                assert!(listing.contains(&format!("\"{bridge}\" : jump {chain}-{bridge}")), "{listing}");
            }
        }
    }
}

#[test]
fn first_natup_creates_bridge_address_forwarding_and_rules() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    ok(&host, "kvm-natup", "tap0");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    assert_eq!(controller_of(&host, "tap0").as_deref(), Some("br0"));
    assert!(is_up(&host, "tap0"));
    let alias = host.ok(&["ip", "-d", "link", "show", "dev", "br0"]);
    assert!(alias.contains("alias kvm-net managed bridge"), "{alias}");
}

#[test]
fn environment_picks_bridge_and_address() {
    let host = Netns::new();
    add_tap(&host, "vm1");
    let env = [("KVM_NET_BRIDGE", "natbr1"), ("KVM_NET_ADDRESS", "10.20.30.254/23")];
    let out = run(&host, "kvm-natup", &["vm1"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nat_network(&host, "natbr1", "10.20.30.254/23", "10.20.30.0/23");
    assert!(!link_exists(&host, "br0"));
    let out = run(&host, "kvm-natdown", &["vm1"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_no_nat_network(&host, "natbr1");
}

#[test]
fn lifecycle_with_several_taps() {
    let host = Netns::new();
    for tap in ["tap0", "tap1", "tap2"] {
        add_tap(&host, tap);
        ok(&host, "kvm-natup", tap);
        assert_eq!(controller_of(&host, tap).as_deref(), Some("br0"));
    }
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    // QEMU runs the downscript while the tap is still a port of the bridge.
    ok(&host, "kvm-natdown", "tap1");
    assert_eq!(controller_of(&host, "tap1"), None);
    assert!(!is_up(&host, "tap1"));
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    ok(&host, "kvm-natdown", "tap0");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    ok(&host, "kvm-natdown", "tap2");
    assert_no_nat_network(&host, "br0");
    assert!(link_exists(&host, "tap2"), "natdown must not delete the tap (QEMU owns it)");
}

#[test]
fn bridge_mac_stays_put_as_ports_come_and_go() {
    let host = Netns::new();
    add_tap(&host, "t1");
    add_tap(&host, "t2");
    ok(&host, "kvm-natup", "t1");
    let first = host.ok(&["ip", "-br", "link", "show", "dev", "br0"]).split_whitespace().nth(2).map(String::from);
    ok(&host, "kvm-natup", "t2");
    ok(&host, "kvm-natdown", "t1");
    let later = host.ok(&["ip", "-br", "link", "show", "dev", "br0"]).split_whitespace().nth(2).map(String::from);
    assert_eq!(first, later);
}

#[test]
fn removal_is_exact_and_foreign_rules_survive() {
    let host = Netns::new();
    // What Docker and an admin typically leave in place.
    host.sh("iptables -P FORWARD DROP
         iptables -N DOCKER-USER
         iptables -A DOCKER-USER -j RETURN
         iptables -A FORWARD -j DOCKER-USER
         iptables -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
         iptables -t nat -N DOCKER
         iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
         iptables -t nat -A POSTROUTING -s 192.168.100.0/24 -j MASQUERADE -m comment --comment admin-rule");
    let before = firewall(&host);
    add_tap(&host, "tap0");
    ok(&host, "kvm-natup", "tap0");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    let (chain, first) = match backend() {
        // The jump comes first, ahead of anything that could drop guest traffic.
        Backend::Iptables => ("FORWARD", "-A FORWARD -i br0 -m comment --comment \"kvm-net:br0\" -j KVMNET-FWD-br0"),
        // Docker's FORWARD drops what no accept in iptables takes: kvm-net's accepts go where Docker says.
        Backend::Nftables => ("DOCKER-USER", "-A DOCKER-USER -m comment --comment \"kvm-net:br0\" -j KVMNET-ACC-br0"),
    };
    let listing: Vec<String> = host.ok(&["iptables", "-S", chain]).lines().map(String::from).collect();
    assert_eq!(listing[1], first, "{listing:?}");
    ok(&host, "kvm-natdown", "tap0");
    assert_eq!(firewall(&host), before, "the firewall must be exactly as before");
    assert!(!link_exists(&host, "br0"));
}

#[test]
fn sixty_four_parallel_natups_then_natdowns() {
    let host = Netns::new();
    let taps: Vec<String> = (0..64).map(|i| format!("vm{i}")).collect();
    host.sh(&format!("for t in {}; do ip tuntap add dev $t mode tap; done", taps.join(" ")));
    let spawn_all = |bin: &str| {
        let children: Vec<_> = taps
            .iter()
            .map(|tap| {
                host.cmd(helper(bin))
                    .arg(tap)
                    .env("KVM_NET_FIREWALL", backend().as_str())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for (tap, child) in taps.iter().zip(children) {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "{bin} {tap}: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    spawn_all("kvm-natup");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    let bridges = host.ok(&["ip", "-o", "link", "show", "type", "bridge"]);
    assert_eq!(bridges.lines().count(), 1, "{bridges}");
    for tap in &taps {
        assert_eq!(controller_of(&host, tap).as_deref(), Some("br0"), "{tap}");
    }
    spawn_all("kvm-natdown");
    assert_no_nat_network(&host, "br0");
}

#[test]
fn repeated_natup_natdown_on_the_same_tap() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    for _ in 0..3 {
        ok(&host, "kvm-natup", "tap0");
        ok(&host, "kvm-natup", "tap0");
        assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
        ok(&host, "kvm-natdown", "tap0");
        ok(&host, "kvm-natdown", "tap0");
        assert_no_nat_network(&host, "br0");
    }
}

#[test]
fn next_natup_heals_flushed_rules() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    add_tap(&host, "tap1");
    ok(&host, "kvm-natup", "tap0");
    // A firewall reload or an admin's flush wipes everything, chains included.
    match backend() {
        Backend::Iptables => host.sh("iptables -t nat -F; iptables -t nat -X; iptables -F; iptables -X"),
        Backend::Nftables => host.sh("nft flush ruleset"),
    };
    ok(&host, "kvm-natup", "tap1");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    // Half-damaged: one rule deleted, a duplicate jump or a rule of someone else's added.
    match backend() {
        Backend::Iptables => host.sh(
            "iptables -t nat -D KVMNET-NAT-br0 -s 192.168.100.0/24 ! -d 192.168.100.0/24 -p udp -m comment --comment kvm-net:br0 -j MASQUERADE --to-ports 1024-65535
             iptables -A FORWARD -j KVMNET-FWD-br0",
        ),
        Backend::Nftables => host.sh(
            "handle=$(nft -a list chain ip kvm_net nat-br0 | sed -n 's/.*l4proto udp.*# handle //p')
             nft delete rule ip kvm_net nat-br0 handle $handle
             nft add rule ip kvm_net fwd-br0 accept
             nft delete element ip kvm_net guard '{ \"br0\" }'",
        ),
    };
    ok(&host, "kvm-natup", "tap1");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
}

/// Arguments and environment of one bad invocation.
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

#[test]
fn bad_input_changes_nothing() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    let cases: &[BadCase] = &[
        (&[], &[]),
        (&[""], &[]),
        (&["abcdefghijklmnop"], &[]),
        (&["a/b"], &[]),
        (&["tap 0"], &[]),
        (&["-tap0"], &[]),
        (&["tap0", "extra"], &[]),
        (&["nosuchtap"], &[]),
        (&["tap0"], &[("KVM_NET_BRIDGE", "bad/name")]),
        (&["tap0"], &[("KVM_NET_BRIDGE", "")]),
        (&["tap0"], &[("KVM_NET_ADDRESS", "192.168.100.1")]),
        (&["tap0"], &[("KVM_NET_ADDRESS", "300.1.1.1/24")]),
        (&["tap0"], &[("KVM_NET_ADDRESS", "192.168.100.0/24")]),
    ];
    let before = host.snapshot();
    for bin in ["kvm-natup", "kvm-natdown", "kvm-ifup", "kvm-ifdown"] {
        for (args, env) in cases {
            if bin == "kvm-ifdown" && (args == &["nosuchtap"] || !env.is_empty()) {
                continue; // a tap already gone is success there; it reads no settings
            }
            if bin == "kvm-natdown" && args == &["nosuchtap"] {
                continue; // likewise: QEMU may run it after the tap vanished
            }
            let out = run(&host, bin, args, env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{bin} {args:?} {env:?} succeeded");
            assert!(out.stdout.is_empty(), "{bin} wrote to stdout");
            assert_eq!(stderr.lines().count(), 1, "{bin} {args:?}: {stderr}");
            assert!(stderr.starts_with(&format!("{bin}: ")), "{stderr}");
            assert!(stderr.contains("; "), "no advice in: {stderr}");
            assert_eq!(host.snapshot(), before, "{bin} {args:?} {env:?} changed state");
        }
    }
}

#[test]
fn help_and_version_exit_zero() {
    let host = Netns::new();
    for bin in ["kvm-natup", "kvm-natdown", "kvm-ifup", "kvm-ifdown"] {
        for flag in ["--help", "--version"] {
            let out = run(&host, bin, &[flag], &[]);
            assert!(out.status.success(), "{bin} {flag}");
            assert!(String::from_utf8_lossy(&out.stdout).contains(bin));
        }
    }
}

#[test]
fn a_non_bridge_link_named_like_the_bridge_is_refused() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    host.ok(&["ip", "link", "add", "br0", "type", "veth", "peer", "name", "br0peer"]);
    for bin in ["kvm-natup", "kvm-ifup"] {
        assert_refused(&host, bin, &["tap0"], &[], "br0 is a veth link, not a bridge");
    }
    // natdown leaves a foreign link alone, and succeeds: nothing of ours is there.
    ok(&host, "kvm-natdown", "tap0");
    assert!(link_exists(&host, "br0"));
}

#[test]
fn natdown_cleans_up_after_a_tap_killed_with_its_vm() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    ok(&host, "kvm-natup", "tap0");
    // SIGKILLed QEMU: the kernel deletes the tap, no downscript runs.
    host.ok(&["ip", "link", "del", "tap0"]);
    add_tap(&host, "tap1");
    ok(&host, "kvm-natup", "tap1");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    ok(&host, "kvm-natdown", "tap1");
    assert_no_nat_network(&host, "br0");
    // A downscript for a tap that is gone, on a network that is gone, succeeds.
    ok(&host, "kvm-natdown", "tap0");
}

#[test]
fn natup_on_a_bridge_the_admin_made_keeps_the_bridge() {
    let host = Netns::new();
    host.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    add_tap(&host, "tap0");
    ok(&host, "kvm-natup", "tap0");
    assert_nat_network(&host, "br0", "192.168.100.1/24", "192.168.100.0/24");
    ok(&host, "kvm-natdown", "tap0");
    assert!(link_exists(&host, "br0"), "kvm-net deleted a bridge it did not create");
    assert!(!has_chain(&host, "NAT", "br0") && !has_chain(&host, "FWD", "br0"));
}

#[test]
fn ifup_takes_the_bridge_mtu_and_ifdown_detaches() {
    let host = Netns::new();
    host.ok(&["ip", "link", "add", "br0", "mtu", "9000", "type", "bridge"]);
    add_tap(&host, "tap0");
    assert_eq!(mtu_of(&host, "tap0"), 1500);
    let before_rules = firewall(&host);
    ok(&host, "kvm-ifup", "tap0");
    assert_eq!(mtu_of(&host, "tap0"), 9000);
    assert_eq!(controller_of(&host, "tap0").as_deref(), Some("br0"));
    assert!(is_up(&host, "tap0"));
    ok(&host, "kvm-ifup", "tap0");
    ok(&host, "kvm-ifdown", "tap0");
    assert_eq!(controller_of(&host, "tap0"), None);
    assert!(!is_up(&host, "tap0"));
    assert!(link_exists(&host, "br0"), "kvm-ifdown must never delete the bridge");
    assert_eq!(firewall(&host), before_rules);
    ok(&host, "kvm-ifdown", "tap0");
    host.ok(&["ip", "link", "del", "tap0"]);
    ok(&host, "kvm-ifdown", "tap0");
}

#[test]
fn ifup_without_a_bridge_fails_and_creates_nothing() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    let stderr = assert_refused(&host, "kvm-ifup", &["tap0"], &[], "bridge br0 does not exist");
    assert!(
        stderr.starts_with("kvm-ifup: attaching tap0 to bridge br0: bridge br0 does not exist; create the bridge"),
        "{stderr}"
    );
    let out = run(&host, "kvm-ifup", &["tap0"], &[("KVM_NET_BRIDGE", "lab0")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("bridge lab0 does not exist"));
}

fn traffic_through_nat(forward_policy: &str) {
    let lab = Lab::new();
    let guest = lab.guest("vm0", "192.168.100.10/24", Some("192.168.100.1"));
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    lab.host.ok(&["iptables", "-P", "FORWARD", forward_policy]);
    ok(&lab.host, "kvm-natup", "vm0");
    guest.ok(&["busybox", "ping", "-c", "1", "-W", "2", "192.168.100.1"]);
    let reply = connect_from(&guest, UPSTREAM, &server, "hello").expect("guest reaches upstream");
    assert_eq!(reply, format!("seen {HOST_UPLINK}"), "upstream must see the host's address");
    ok(&lab.host, "kvm-natdown", "vm0");
    assert_no_nat_network(&lab.host, "br0");
    assert!(
        connect_from(&guest, UPSTREAM, &server, "again").is_err(),
        "without the NAT network the guest must not get through"
    );
}

#[test]
fn guest_reaches_upstream_through_nat_with_forward_accept() {
    traffic_through_nat("ACCEPT");
}

#[test]
fn guest_reaches_upstream_through_nat_with_forward_drop() {
    traffic_through_nat("DROP");
}

#[test]
fn a_natup_failing_after_creating_the_bridge_undoes_it() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    // The firewall step fails after the bridge was made, and the bridge must
    // be removed again: iptables is not on PATH, or a chain of someone
    // else's has the name of one of kvm-net's base chains.
    match backend() {
        Backend::Iptables => {
            let env = [("PATH", "/nonexistent")];
            assert_refused(
                &host,
                "kvm-natup",
                &["tap0"],
                &env,
                "the iptables-save command is not installed; install it",
            );
        }
        Backend::Nftables => {
            host.sh("nft add table ip kvm_net; nft add chain ip kvm_net postrouting");
            let says = "installing kvm-net's nftables rules: applying a batch to nf_tables: creating base chain ip kvm_net postrouting";
            assert_refused(&host, "kvm-natup", &["tap0"], &[], says);
        }
    }
}

#[test]
fn unprivileged_callers_are_told_what_is_missing() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    host.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    let before = host.snapshot();
    for bin in ["kvm-ifup", "kvm-natup"] {
        let mut command = host.cmd("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]);
        let out = command.arg(helper(bin)).arg("tap0").output().expect("setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("needs root or CAP_NET_ADMIN"), "{stderr}");
        assert_eq!(host.snapshot(), before);
    }
}

#[test]
fn an_ipv4_only_network_comes_and_goes_without_ip6tables() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    // A PATH with iptables and nothing of ip6tables.
    let dir = ConfigFile::scratch_dir().join(format!("no-ip6tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    for tool in ["iptables-save", "iptables-restore"] {
        let real = host.ok(&["sh", "-c", &format!("command -v {tool}")]);
        let _ = std::fs::remove_file(dir.join(tool));
        std::os::unix::fs::symlink(real.trim(), dir.join(tool)).expect("symlink");
    }
    let env = [("PATH", dir.to_str().expect("UTF-8"))];
    ok_with(&host, "kvm-natup", "tap0", &env);
    assert_eq!(controller_of(&host, "tap0").as_deref(), Some("br0"));
    ok_with(&host, "kvm-natdown", "tap0", &env);
    assert_no_nat_network(&host, "br0");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_foreign_jump_into_a_kvm_net_chain_is_named_and_the_rest_is_removed() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    ok(&host, "kvm-natup", "tap0");
    let (foreign, says) = match backend() {
        Backend::Iptables => (
            "iptables -N ADMIN; iptables -A ADMIN -j KVMNET-FWD-br0; iptables -A FORWARD -j ADMIN",
            "other rules jump to them: iptables -t filter -A ADMIN -j KVMNET-FWD-br0",
        ),
        Backend::Nftables => (
            "nft add chain ip kvm_net admin; nft add rule ip kvm_net admin jump fwd-br0",
            "other rules jump to ip kvm_net chain fwd-br0",
        ),
    };
    host.sh(foreign);
    let out = run(&host, "kvm-natdown", &["tap0"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
    assert!(stderr.contains("delete those rules, then run `kvm-net gc`"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
    // Everything else went: the bridge, the NAT chain, the jump to it; the chain is empty.
    assert!(!link_exists(&host, "br0"));
    assert!(!has_chain(&host, "NAT", "br0"));
    match backend() {
        Backend::Iptables => {
            assert_eq!(host.ok(&["iptables", "-S", "KVMNET-FWD-br0"]), "-N KVMNET-FWD-br0\n");
            host.sh("iptables -F ADMIN");
        }
        Backend::Nftables => {
            assert_eq!(nft_chain(&host, "ip", "fwd-br0"), Vec::<String>::new());
            assert!(host.output(&["nft", "list", "chain", "ip", "kvm_net", "fwd-br0"]).status.success());
            host.sh("nft flush chain ip kvm_net admin");
        }
    }
    let gc = run(&host, "kvm-net", &["gc"], &[]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    assert_no_nat_network(&host, "br0");
}

#[test]
fn a_network_changing_backend_while_up_leaves_nothing_of_either() {
    // An upgrade from an iptables-only kvm-net with VMs running, and back.
    for (first, second) in [("iptables", "nftables"), ("nftables", "iptables")] {
        let host = Netns::new();
        add_tap(&host, "tap0");
        add_tap(&host, "tap1");
        ok_with(&host, "kvm-natup", "tap0", &[("KVM_NET_FIREWALL", first)]);
        ok_with(&host, "kvm-natup", "tap1", &[("KVM_NET_FIREWALL", second)]);
        let (iptables_has, nft_has) = (
            !kvm_net_lines(&host, "nat").is_empty(),
            host.output(&["nft", "list", "table", "ip", "kvm_net"]).status.success(),
        );
        assert_eq!((iptables_has, nft_has), (second == "iptables", second == "nftables"), "{first} then {second}");
        ok_with(&host, "kvm-natdown", "tap0", &[("KVM_NET_FIREWALL", second)]);
        ok_with(&host, "kvm-natdown", "tap1", &[("KVM_NET_FIREWALL", second)]);
        assert_no_nat_network(&host, "br0");
    }
    // The last VM stopped by a kvm-net that only knows the other backend's rules were made meanwhile.
    let host = Netns::new();
    add_tap(&host, "tap0");
    ok_with(&host, "kvm-natup", "tap0", &[("KVM_NET_FIREWALL", "iptables")]);
    ok_with(&host, "kvm-natdown", "tap0", &[("KVM_NET_FIREWALL", "nftables")]);
    assert_no_nat_network(&host, "br0");
}

/// The nftables backend starts no process on a VM's start or stop (on a
/// host without firewalld or Docker): `strace -f -e trace=execve` sees the
/// helper's own execve and nothing else, cold and warm.
#[test]
fn with_nftables_no_other_process_runs_on_a_vm_start_or_stop() {
    if backend() != Backend::Nftables {
        return;
    }
    let host = Netns::new();
    add_tap(&host, "tap0");
    add_tap(&host, "tap1");
    for (bin, tap) in [("kvm-natup", "tap0"), ("kvm-natup", "tap1"), ("kvm-natdown", "tap1"), ("kvm-natdown", "tap0")] {
        let calls = traced(host.cmd("strace"), &["-f", "-qq", "-e", "trace=execve"], bin, tap);
        let execs: Vec<&str> = calls.lines().filter(|l| l.contains("execve(")).collect();
        assert_eq!(execs.len(), 1, "{bin} {tap} started a process: {execs:#?}");
    }
    assert_no_nat_network(&host, "br0");
}

#[test]
fn a_full_bridge_is_said_as_such_and_nothing_changes() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    ok(&host, "kvm-natup", "tap0");
    // 1022 more ports: the kernel's 1023 per bridge.
    let batch = ConfigFile::scratch_dir().join(format!("full-bridge-{}.ip", std::process::id()));
    let lines: String =
        (1..1023).map(|i| format!("tuntap add dev t{i} mode tap\nlink set dev t{i} master br0\n")).collect();
    std::fs::write(&batch, lines).expect("writing the batch");
    host.ok(&["ip", "-batch", batch.to_str().expect("UTF-8 path")]);
    let _ = std::fs::remove_file(&batch);
    add_tap(&host, "tapx");
    let rules = firewall(&host);
    let out = run(&host, "kvm-natup", &["tapx"], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("attaching tapx to bridge br0: bridge br0 has 1023 ports, the kernel's limit; stop a VM on it"),
        "{said}"
    );
    // The kernel applies the attach's "up" before its master: the tap is set down again.
    assert_eq!(controller_of(&host, "tapx"), None);
    assert!(!is_up(&host, "tapx"));
    assert_eq!(firewall(&host), rules);
    assert_eq!(host.ok(&["ip", "-o", "link", "show", "master", "br0"]).lines().count(), 1023);
}
