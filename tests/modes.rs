//! Every mode from the documents, named networks and the config file, each
//! test in namespaces of its own, with namespaces standing in for guests.

use kvm_net_tests::inspect::{assert_no_nat_network, controller_of, firewall, has_chain, link_exists, mtu_of};
use kvm_net_tests::lab::{connect_from, Lab, UpstreamServer, HOST_UPLINK, HOST_UPLINK6, UPSTREAM, UPSTREAM6};
use kvm_net_tests::run::{add_tap, assert_refused, ok, ok_with, run, run_path, ConfigFile};
use kvm_net_tests::{helper, Netns};

const FOUR_NETWORKS: &str = r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"

[network.dmz]
mode = "routed"
bridge = "dmz0"
ipv4 = "10.77.0.1/24"
taps = ["dmz-*"]

[network.lab]
mode = "isolated"
bridge = "lab0"
ipv4 = "10.88.0.1/24"
taps = ["lab-*"]

[network.quiet]
mode = "isolated"
bridge = "quiet0"
taps = ["q-*"]

[network.lan]
mode = "bridged"
bridge = "lan0"
taps = ["srv-*"]
"#;

const GUEST_A: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 88, 0, 10);

fn ping(ns: &Netns, target: &str) -> bool {
    ns.output(&["busybox", "ping", "-c", "1", "-W", "1", target]).status.success()
}

#[test]
fn routed_guests_keep_their_own_address() {
    let config = ConfigFile::new(FOUR_NETWORKS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    // The upstream router knows the way back to the routed subnet.
    lab.upstream.ok(&["ip", "route", "add", "10.77.0.0/24", "via", &HOST_UPLINK.to_string()]);
    lab.host.ok(&["iptables", "-P", "FORWARD", "DROP"]);
    let guest = lab.guest("dmz-vm1", "10.77.0.10/24", Some("10.77.0.1"));
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    ok_with(&lab.host, "kvm-natup", "dmz-vm1", &env);
    assert_eq!(controller_of(&lab.host, "dmz-vm1").as_deref(), Some("dmz0"));
    assert_eq!(connect_from(&guest, UPSTREAM, &server, "hi").expect("routed"), "seen 10.77.0.10");
    assert!(!has_chain(&lab.host, "NAT", "dmz0"), "routed means no masquerade");
    ok_with(&lab.host, "kvm-natdown", "dmz-vm1", &env);
    assert_no_nat_network(&lab.host, "dmz0");
}

#[test]
fn isolated_with_an_address_reaches_the_host_but_nothing_beyond() {
    let config = ConfigFile::new(FOUR_NETWORKS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    // As if another network had turned forwarding on, and upstream routed back.
    lab.host.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    lab.upstream.ok(&["ip", "route", "add", "10.88.0.0/24", "via", &HOST_UPLINK.to_string()]);
    let a = lab.guest("lab-a", "10.88.0.10/24", Some("10.88.0.1"));
    let b = lab.guest("lab-b", "10.88.0.11/24", Some("10.88.0.1"));
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    ok_with(&lab.host, "kvm-natup", "lab-a", &env);
    ok_with(&lab.host, "kvm-natup", "lab-b", &env);
    assert!(ping(&a, "10.88.0.11"), "guests reach each other");
    assert!(ping(&a, "10.88.0.1"), "guests reach the host");
    assert!(ping(&lab.host, "10.88.0.10"), "the host reaches guests");
    assert!(connect_from(&a, UPSTREAM, &server, "out").is_err(), "nothing is forwarded out");
    let inside = UpstreamServer::start(&a, GUEST_A);
    assert!(connect_from(&lab.upstream, GUEST_A, &inside, "in").is_err(), "nothing is forwarded in");
    ok_with(&lab.host, "kvm-natdown", "lab-a", &env);
    assert!(ping(&b, "10.88.0.1"), "the network stays for b");
    ok_with(&lab.host, "kvm-natdown", "lab-b", &env);
    assert_no_nat_network(&lab.host, "lab0");
}

#[test]
fn isolated_without_an_address_is_guests_only() {
    let config = ConfigFile::new(FOUR_NETWORKS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    let a = lab.guest("q-a", "10.99.0.10/24", None);
    let b = lab.guest("q-b", "10.99.0.11/24", None);
    ok_with(&lab.host, "kvm-natup", "q-a", &env);
    ok_with(&lab.host, "kvm-natup", "q-b", &env);
    assert!(ping(&b, "10.99.0.10"), "guests reach each other");
    assert!(lab.host.ok(&["ip", "-o", "addr", "show", "dev", "quiet0", "scope", "global"]).trim().is_empty());
    assert!(!ping(&a, "192.168.100.1") && !ping(&a, &HOST_UPLINK.to_string()), "not even the host");
    ok_with(&lab.host, "kvm-natdown", "q-a", &env);
    ok_with(&lab.host, "kvm-natdown", "q-b", &env);
    assert_no_nat_network(&lab.host, "quiet0");
}

#[test]
fn bridged_networks_take_kvm_ifup_and_refuse_kvm_natup() {
    let config = ConfigFile::new(FOUR_NETWORKS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    host.ok(&["ip", "link", "add", "lan0", "type", "bridge"]);
    add_tap(&host, "srv-1");
    add_tap(&host, "tap0");
    for (bin, tap, says) in [
        ("kvm-natup", "srv-1", "network lan is bridged, which kvm-natup/kvm-natdown do not serve; use script=kvm-ifup"),
        ("kvm-natdown", "srv-1", "network lan is bridged, which kvm-natup/kvm-natdown do not serve"),
        ("kvm-ifup", "tap0", "network default is nat, which kvm-ifup/kvm-ifdown do not serve; use script=kvm-natup"),
    ] {
        assert_refused(&host, bin, &[tap], &env, says);
    }
    ok_with(&host, "kvm-ifup", "srv-1", &env);
    assert_eq!(controller_of(&host, "srv-1").as_deref(), Some("lan0"));
    assert_eq!(firewall(&host), firewall(&Netns::new()), "bridged mode never touches the firewall");
    ok(&host, "kvm-ifdown", "srv-1");
    assert!(link_exists(&host, "lan0"));
}

#[test]
fn two_networks_live_side_by_side_and_go_separately() {
    let config = ConfigFile::new(FOUR_NETWORKS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    add_tap(&host, "tap0");
    add_tap(&host, "lab-1");
    ok_with(&host, "kvm-natup", "tap0", &env);
    let default_only = firewall(&host);
    ok_with(&host, "kvm-natup", "lab-1", &env);
    assert_eq!(controller_of(&host, "tap0").as_deref(), Some("br0"));
    assert_eq!(controller_of(&host, "lab-1").as_deref(), Some("lab0"));
    assert!(has_chain(&host, "FWD", "lab0") && has_chain(&host, "GRD", "lab0"));
    ok_with(&host, "kvm-natdown", "lab-1", &env);
    assert!(!link_exists(&host, "lab0"));
    assert_eq!(firewall(&host), default_only, "default's rules untouched");
    ok_with(&host, "kvm-natdown", "tap0", &env);
    assert_no_nat_network(&host, "br0");
}

#[test]
fn network_chosen_by_invoked_name_then_pattern_then_environment() {
    let config = ConfigFile::new(FOUR_NETWORKS);
    let host = Netns::new();
    for tap in ["t1", "lab-2", "t3"] {
        add_tap(&host, tap);
    }
    // kvm-natup@NAME: the symlink's name picks the network, whatever the tap's name.
    let named = ConfigFile::scratch_dir().join("kvm-natup@dmz");
    let _ = std::fs::remove_file(&named);
    std::os::unix::fs::symlink(helper("kvm-natup"), &named).expect("symlink");
    let out = run_path(&host, &named, &["lab-2"], &[("KVM_NET_CONFIG", config.path()), ("KVM_NET_NETWORK", "lab")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(controller_of(&host, "lab-2").as_deref(), Some("dmz0"));
    ok_with(&host, "kvm-natup", "t1", &[("KVM_NET_CONFIG", config.path()), ("KVM_NET_NETWORK", "lab")]);
    assert_eq!(controller_of(&host, "t1").as_deref(), Some("lab0"));
    ok_with(&host, "kvm-natup", "t3", &[("KVM_NET_CONFIG", config.path())]);
    assert_eq!(controller_of(&host, "t3").as_deref(), Some("br0"));
    let out = run(&host, "kvm-natup", &["t3"], &[("KVM_NET_CONFIG", config.path()), ("KVM_NET_NETWORK", "nope")]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no network named nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_config_error_names_file_network_and_field_and_changes_nothing() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    let cases = [
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\ncolour = \"red\"\n", "network default: field colour: unknown field `colour`"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.300.1/24\"\n", "network default: field ipv4"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\n[network.b]\nmode = \"isolated\"\nbridge = \"br0\"\n", "network b: field bridge: br0 is already the bridge of network default"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/8\"\n[network.b]\nmode = \"nat\"\nbridge = \"br1\"\nipv4 = \"10.1.0.1/16\"\n", "network b: field ipv4: 10.1.0.0/16 overlaps 10.0.0.0/8"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br-much-too-long0\"\nipv4 = \"10.0.0.1/24\"\n", "network default: field bridge"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\n", "network default: field ipv4: a nat network needs an IPv4 address"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br+\"\nipv4 = \"10.0.0.1/24\"\n", "network default: field bridge: \"br+\" contains '+', which iptables reads as a wildcard"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\ntaps = \"a-*\"\n", "network default: field taps: invalid type: string \"a-*\", expected a sequence"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\nmtu = \"1400\"\n", "network default: field mtu: invalid type"),
        ("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\n[network.default.dhcp]\ndns = \"yes\"\n", "network default: field dhcp.dns: invalid type"),
    ];
    for (text, says) in cases {
        let config = ConfigFile::new(text);
        for bin in ["kvm-natup", "kvm-natdown", "kvm-ifup"] {
            let stderr = assert_refused(&host, bin, &["tap0"], &[("KVM_NET_CONFIG", config.path())], says);
            assert!(stderr.starts_with(&format!("{bin}: config {}", config.path())), "{stderr}");
            assert_eq!(stderr.lines().count(), 1);
        }
    }
}

#[test]
fn a_wildcard_bridge_from_the_environment_is_refused() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    assert_refused(&host, "kvm-natup", &["tap0"], &[("KVM_NET_BRIDGE", "br+")], "KVM_NET_BRIDGE=\"br+\" is invalid");
}

/// Runs a helper that must give up within 20 s (a config that blocks would hang it).
fn refused_promptly(host: &Netns, config: &str, says: &str) {
    let mut child = host
        .cmd(helper("kvm-natup"))
        .arg("tap0")
        .env("KVM_NET_CONFIG", config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kvm-natup");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvm-natup hung reading {config}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(says), "{stderr:?} lacks {says:?}");
    assert!(!link_exists(host, "br0"));
}

#[test]
fn a_config_that_is_not_a_small_regular_file_is_refused() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    let fifo = ConfigFile::scratch_dir().join(format!("fifo-{}.toml", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    host.ok(&["mkfifo", fifo.to_str().expect("UTF-8")]);
    refused_promptly(&host, fifo.to_str().expect("UTF-8"), "it is not a regular file");
    let _ = std::fs::remove_file(&fifo);
    refused_promptly(&host, "/dev/zero", "config /dev/zero: it is not a regular file");
    let big = ConfigFile::new(&"# padding\n".repeat(200_000));
    refused_promptly(&host, big.path(), "bytes, over the limit of 1048576");
}

#[test]
fn a_subnet_in_use_elsewhere_is_refused() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    host.sh("ip link add eth9 type veth peer name eth9p; ip addr add 192.168.100.5/24 dev eth9; ip link set eth9 up");
    let says = "subnet 192.168.100.0/24 of network default is in use by eth9 (address 192.168.100.5/24";
    assert_refused(&host, "kvm-natup", &["tap0"], &[], says);
    // A route covering the subnet counts too.
    host.sh("ip addr flush dev eth9; ip addr add 10.1.1.1/24 dev eth9; ip route add 192.168.0.0/16 via 10.1.1.2");
    assert_refused(&host, "kvm-natup", &["tap0"], &[], "in use by eth9 (route 192.168.0.0/16)");
}

#[test]
fn a_configured_mtu_goes_to_the_bridge_and_its_taps() {
    let config = ConfigFile::new("[network.default]\nmode = \"isolated\"\nbridge = \"jumbo0\"\nmtu = 9000\n");
    let host = Netns::new();
    add_tap(&host, "tap0");
    ok_with(&host, "kvm-natup", "tap0", &[("KVM_NET_CONFIG", config.path())]);
    assert_eq!((mtu_of(&host, "jumbo0"), mtu_of(&host, "tap0")), (9000, 9000));
}

#[test]
fn ipv6_guests_reach_upstream_through_nat66() {
    let config = ConfigFile::new(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nipv6 = \"fd6b:766e::1/64\"\n",
    );
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    lab.host.sh("echo 1 > /proc/sys/net/ipv6/conf/up0/accept_ra");
    let guest = lab.guest("vm6", "fd6b:766e::10/64", Some("fd6b:766e::1"));
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let traced = ok_with(&lab.host, "kvm-natup", "vm6", &[env[0], ("KVM_NET_DEBUG", "1")]);
    assert!(
        traced.contains(
            "net.ipv6.conf.up0.accept_ra=2: it keeps taking router advertisements now that IPv6 forwarding is on"
        ),
        "{traced}"
    );
    assert_eq!(lab.host.ok(&["cat", "/proc/sys/net/ipv6/conf/br0/accept_ra"]).trim(), "0");
    assert_eq!(connect_from(&guest, UPSTREAM6, &server, "v6").expect("NAT66"), format!("seen {HOST_UPLINK6}"));
    assert_eq!(
        lab.host.ok(&["cat", "/proc/sys/net/ipv6/conf/up0/accept_ra"]).trim(),
        "2",
        "an uplink keeps taking router advertisements with forwarding on"
    );
    ok_with(&lab.host, "kvm-natdown", "vm6", &env);
    assert_no_nat_network(&lab.host, "br0");
    assert!(!lab.host.ok(&["ip6tables", "-t", "nat", "-S"]).contains("KVMNET"));
}

#[test]
fn a_bridged_network_with_isolated_guests_isolates_each_tap_kvm_ifup_attaches() {
    let host = Netns::new();
    host.sh("ip link add lan0 type bridge; ip link set lan0 up");
    let config = ConfigFile::new("[network.lan]\nmode = \"bridged\"\nbridge = \"lan0\"\nisolate_guests = true\n");
    let env = [("KVM_NET_CONFIG", config.path()), ("KVM_NET_NETWORK", "lan")];
    for tap in ["tap0", "tap1"] {
        add_tap(&host, tap);
        ok_with(&host, "kvm-ifup", tap, &env);
        assert!(host.ok(&["bridge", "-d", "link", "show", "dev", tap]).contains("isolated on"), "{tap}");
    }
    // The bridge's own ports (the host's NIC, here a veth) stay as they were: guests still reach the LAN.
    host.sh("ip link add nic0 type veth peer name nic1; ip link set nic0 master lan0");
    assert!(!host.ok(&["bridge", "-d", "link", "show", "dev", "nic0"]).contains("isolated on"));
    ok_with(&host, "kvm-ifdown", "tap0", &env);
}
