//! Per-guest rate limits (`bandwidth`, `bandwidth_overrides`) and traffic
//! counters: each direction measured with iperf3 against its limit (a rate
//! kvm-net sets, checked with a margin: 0.8-1.05x), two guests each at
//! their full limit, overrides, a tap kvm-ifup puts on a bridged network
//! (the bridge's other port untouched), the bridge helper's tap, what a
//! VM killed leaves (nothing once `kvm-net gc` ran), `kvm-net status`,
//! `check` and `repair`, and every bad rate refused with nothing changed.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kvm_net_tests::bridge::{call, qemu_arguments, tap_of};
use kvm_net_tests::helper;
use kvm_net_tests::lab::{Lab, UPSTREAM};
use kvm_net_tests::run::{assert_refused, ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const NETWORK: &str = "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\ndhcp = { enabled = false }\ntaps = [\"vm*\", \"db*\"]\n";

/// How long each iperf3 run lasts, in seconds.
const SECONDS: &str = "3";

fn config(extra: &str) -> ConfigFile {
    ConfigFile::new(&format!("{NETWORK}{extra}\n"))
}

/// A guest with `ip` on tap `tap`, brought up with kvm-natup.
fn guest(lab: &Lab, config: &ConfigFile, tap: &str, ip: &str) -> Netns {
    let guest = lab.guest(tap, &format!("{ip}/24"), Some("192.168.100.1"));
    ok_with(&lab.host, "kvm-natup", tap, &[("KVM_NET_CONFIG", config.path())]);
    guest
}

/// Starts iperf3's server upstream (on its own port, one per test).
fn iperf_server(lab: &Lab, port: u16) {
    lab.upstream.ok(&["iperf3", "-s", "-D", "-B", &UPSTREAM.to_string(), "-p", &port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.upstream.ok(&["ss", "-ltn"]).contains(&format!(":{port}")) {
        assert!(Instant::now() < deadline, "iperf3's server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `guest` gets through to upstream (`to_guest`: the other way, -R),
/// in bits per second, as iperf3's receiver counts it.
fn rate(guest: &Netns, port: u16, to_guest: bool) -> f64 {
    let port = port.to_string();
    let mut args = vec!["iperf3", "-c", "203.0.113.2", "-p", &port, "-t", SECONDS, "-J"];
    if to_guest {
        args.push("-R");
    }
    // One more try if the first could not run (a control connection lost on a loaded machine).
    let mut error = String::new();
    for _ in 0..2 {
        let out = guest.output(&args);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3's JSON");
        if let Some(rate) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            return rate;
        }
        error = report["error"].to_string();
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("iperf3: {error}")
}

#[track_caller]
fn assert_near(measured: f64, limit: f64, what: &str) {
    let ratio = measured / limit;
    assert!((0.8..=1.05).contains(&ratio), "{what}: {measured:.0} bit/s is {ratio:.2}x the limit of {limit:.0}");
}

/// The limits `kvm-net status --json` shows for `port`, and its traffic.
fn status_of(ns: &Netns, config: &ConfigFile, port: &str) -> serde_json::Value {
    let out = run(ns, "kvm-net", &["status", "--json"], &[("KVM_NET_CONFIG", config.path())]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status as JSON");
    json["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|network| network["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == port)
        .cloned()
        .unwrap_or_else(|| panic!("{port} missing from status: {json}"))
}

/// kvm-net's traces of limits: tbf shapers, ingress qdiscs and ifb devices, in `ns`.
fn limits_left(ns: &Netns) -> String {
    let qdiscs = ns.ok(&["tc", "qdisc", "show"]);
    let mut left: Vec<String> =
        qdiscs.lines().filter(|l| l.contains("tbf") || l.contains("ingress")).map(str::to_owned).collect();
    left.extend(ns.ok(&["ip", "-o", "link", "show", "type", "ifb"]).lines().map(str::to_owned));
    left.join("\n")
}

#[test]
fn each_direction_holds_its_limit_and_status_counts_the_traffic() {
    let config = config("bandwidth = { to_guest = \"50mbit\", from_guest = \"20mbit\" }");
    let lab = Lab::new();
    iperf_server(&lab, 5201);
    let vm = guest(&lab, &config, "vm0", "192.168.100.10");
    assert_near(rate(&vm, 5201, false), 20e6, "from the guest");
    assert_near(rate(&vm, 5201, true), 50e6, "to the guest");
    let port = status_of(&lab.host, &config, "vm0");
    assert_eq!(port["limits"]["to_guest"], "50mbit");
    assert_eq!(port["limits"]["from_guest"], "20mbit");
    // Some 7.5 MB went each way at least (3 s at 20 and at 50 Mbit/s).
    assert!(port["traffic"]["from_guest_bytes"].as_u64().expect("bytes") > 5_000_000, "{port}");
    assert!(port["traffic"]["to_guest_bytes"].as_u64().expect("bytes") > 15_000_000, "{port}");
    assert!(port["traffic"]["to_guest_packets"].as_u64().expect("packets") > 1_000, "{port}");
    ok_with(&lab.host, "kvm-natdown", "vm0", &[("KVM_NET_CONFIG", config.path())]);
    assert_eq!(limits_left(&lab.host), "", "nothing of the limits is left");
}

#[test]
fn two_guests_each_get_their_full_limit_at_once() {
    let config = config("bandwidth = { from_guest = \"20mbit\" }");
    let lab = Lab::new();
    iperf_server(&lab, 5201);
    iperf_server(&lab, 5202);
    let (a, b) = (guest(&lab, &config, "vm0", "192.168.100.10"), guest(&lab, &config, "vm1", "192.168.100.11"));
    let rates = std::thread::scope(|scope| {
        let first = scope.spawn(|| rate(&a, 5201, false));
        let second = scope.spawn(|| rate(&b, 5202, false));
        [first.join().expect("a's iperf3"), second.join().expect("b's iperf3")]
    });
    for (measured, name) in rates.iter().zip(["a", "b"]) {
        assert_near(*measured, 20e6, name);
    }
}

#[test]
fn an_override_gives_matching_taps_their_own_limits_and_unlimits_what_it_leaves_out() {
    let config = config(
        "bandwidth = { to_guest = \"50mbit\", from_guest = \"20mbit\" }\n\
         [[network.default.bandwidth_overrides]]\ntaps = [\"db-*\"]\nto_guest = \"200mbit\"\n",
    );
    let lab = Lab::new();
    let _vm = guest(&lab, &config, "vm0", "192.168.100.10");
    let _db = guest(&lab, &config, "db-1", "192.168.100.20");
    let db = status_of(&lab.host, &config, "db-1");
    assert_eq!((db["limits"]["to_guest"].as_str(), db["limits"]["from_guest"].as_str()), (Some("200mbit"), None));
    let vm = status_of(&lab.host, &config, "vm0");
    assert_eq!(
        (vm["limits"]["to_guest"].as_str(), vm["limits"]["from_guest"].as_str()),
        (Some("50mbit"), Some("20mbit"))
    );
    assert!(!lab.host.ok(&["tc", "qdisc", "show", "dev", "db-1"]).contains("ingress"), "db-1 sends unlimited");
}

#[test]
fn kvm_ifup_limits_the_tap_on_a_bridged_network_and_never_the_bridges_other_ports() {
    let config = ConfigFile::new(
        "[network.lan]\nmode = \"bridged\"\nbridge = \"br-lan\"\ntaps = [\"vm*\"]\nbandwidth = { to_guest = \"50mbit\", from_guest = \"20mbit\" }\n",
    );
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    // The host's NIC on the bridge: up0, with the upstream host behind it.
    lab.host.sh(&format!(
        "ip addr flush dev up0; ip link add br-lan type bridge; ip link set up0 master br-lan; \
         ip link set br-lan up; ip addr add {}/24 dev br-lan",
        Ipv4Addr::new(203, 0, 113, 1)
    ));
    let nic_before = lab.host.ok(&["tc", "qdisc", "show", "dev", "up0"]);
    iperf_server(&lab, 5201);
    let vm = lab.guest("vm0", "203.0.113.10/24", None);
    ok_with(&lab.host, "kvm-ifup", "vm0", &env);
    assert_near(rate(&vm, 5201, false), 20e6, "from the guest");
    assert_near(rate(&vm, 5201, true), 50e6, "to the guest");
    assert_eq!(lab.host.ok(&["tc", "qdisc", "show", "dev", "up0"]), nic_before, "the NIC's qdiscs are untouched");
    ok_with(&lab.host, "kvm-ifdown", "vm0", &env);
    assert_eq!(limits_left(&lab.host), "", "kvm-ifdown leaves nothing of the limits");
}

/// Waits up to 2 s for `condition`.
fn within(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn the_bridge_helpers_tap_is_limited_and_its_ifb_goes_with_it() {
    for mode in ["nat", "bridged"] {
        let ns = Netns::new();
        let text = match mode {
            "nat" => format!("{NETWORK}bandwidth = {{ from_guest = \"20mbit\" }}\n"),
            _ => {
                ns.sh("ip link add br-lan type bridge; ip link set br-lan up");
                "[network.default]\nmode = \"bridged\"\nbridge = \"br-lan\"\nbandwidth = { from_guest = \"20mbit\" }\n"
                    .to_owned()
            }
        };
        let config = ConfigFile::new(&text);
        let mut command = ns.cmd(helper("kvm-net-bridge-helper"));
        command.args(qemu_arguments("default", true)).env("KVM_NET_CONFIG", config.path());
        command.env("KVM_NET_FIREWALL", kvm_net_tests::inspect::backend().as_str());
        let received = call(command);
        let said = received.stderr();
        let fd = received.tap.unwrap_or_else(|| panic!("{mode}: no tap: {said}"));
        let name = tap_of(&fd).0;
        assert!(ns.ok(&["tc", "filter", "show", "dev", &name, "ingress"]).contains("mirred"), "{mode}: redirected");
        assert!(!ns.ok(&["ip", "-o", "link", "show", "type", "ifb"]).is_empty(), "{mode}: its ifb");
        drop(fd);
        assert!(within(|| limits_left(&ns).is_empty()), "{mode}: the watcher left {}", limits_left(&ns));
        assert!(within(|| ns.processes().is_empty()), "{mode}: the watcher stays");
    }
}

#[test]
fn a_vm_killed_leaves_an_ifb_that_gc_removes_and_nothing_else() {
    let config = config("bandwidth = { to_guest = \"50mbit\", from_guest = \"20mbit\" }");
    let env = [("KVM_NET_CONFIG", config.path())];
    let ns = Netns::new();
    ns.sh("ip tuntap add dev vm0 mode tap; ip tuntap add dev vm1 mode tap");
    ok_with(&ns, "kvm-natup", "vm0", &env);
    ok_with(&ns, "kvm-natup", "vm1", &env);
    // QEMU killed: its tap goes, and no downscript runs.
    ns.ok(&["ip", "link", "del", "vm0"]);
    assert_eq!(ns.ok(&["ip", "-o", "link", "show", "type", "ifb"]).lines().count(), 2, "vm0's ifb outlives it");
    let dry = run(&ns, "kvm-net", &["gc", "--dry-run"], &env);
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would remove kvmib"), "{dry:?}");
    let gc = run(&ns, "kvm-net", &["gc"], &env);
    assert!(String::from_utf8_lossy(&gc.stdout).contains("the limit of a tap that is gone"), "{gc:?}");
    let left = ns.ok(&["ip", "-o", "link", "show", "type", "ifb"]);
    assert_eq!(left.lines().count(), 1, "only vm1's ifb stays: {left}");
    assert!(ns.ok(&["tc", "filter", "show", "dev", "vm1", "ingress"]).contains("mirred"), "vm1 keeps its limits");
}

#[test]
fn check_finds_limits_gone_or_changed_and_repair_restores_them() {
    let config = config("bandwidth = { to_guest = \"50mbit\", from_guest = \"20mbit\" }");
    let env = [("KVM_NET_CONFIG", config.path())];
    let ns = Netns::new();
    ns.sh("ip tuntap add dev vm0 mode tap; ip tuntap add dev vm1 mode tap");
    ok_with(&ns, "kvm-natup", "vm0", &env);
    ok_with(&ns, "kvm-natup", "vm1", &env);
    let check = || String::from_utf8_lossy(&run(&ns, "kvm-net", &["check"], &env).stdout).into_owned();
    assert!(!check().contains("limits-"), "{}", check());
    ns.ok(&["tc", "qdisc", "del", "dev", "vm0", "root"]);
    ns.ok(&["tc", "qdisc", "del", "dev", "vm0", "ingress"]);
    ns.ok(&[
        "tc", "qdisc", "replace", "dev", "vm1", "root", "handle", "6b76:", "tbf", "rate", "1mbit", "burst", "32k",
        "latency", "50ms",
    ]);
    let said = check();
    assert!(said.contains("limits-missing") && said.contains("port vm0"), "{said}");
    assert!(said.contains("limits-differ") && said.contains("port vm1"), "{said}");
    let repair = run(&ns, "kvm-net", &["repair", "default"], &env);
    assert!(repair.status.success(), "{}", String::from_utf8_lossy(&repair.stderr));
    assert!(!check().contains("limits-"), "{}", check());
    assert_eq!(status_of(&ns, &config, "vm1")["limits"]["to_guest"], "50mbit");
}

#[test]
fn every_bad_rate_is_refused_naming_the_field_and_nothing_changes() {
    let ns = Netns::new();
    ns.sh("ip tuntap add dev vm0 mode tap");
    for bad in ["\"fast\"", "\"5\"", "\"1.5mbit\"", "\"50mbps\"", "\"0kbit\"", "\"-5mbit\"", "\"7kbit\"", "50"] {
        for (field, text) in [
            ("bandwidth.to_guest", format!("bandwidth = {{ to_guest = {bad} }}")),
            ("bandwidth.from_guest", format!("bandwidth = {{ from_guest = {bad} }}")),
            (
                "bandwidth_overrides[0].to_guest",
                format!("[[network.default.bandwidth_overrides]]\ntaps = [\"db-*\"]\nto_guest = {bad}"),
            ),
        ] {
            let config = config(&text);
            let says = format!("network default: field {field}");
            assert_refused(&ns, "kvm-natup", &["vm0"], &[("KVM_NET_CONFIG", config.path())], &says);
        }
    }
    let ovs = ConfigFile::new(
        "[network.default]\nmode = \"ovs\"\nbridge = \"br-int\"\nbandwidth = { to_guest = \"50mbit\" }\n",
    );
    assert_refused(
        &ns,
        "kvm-ifup",
        &["vm0"],
        &[("KVM_NET_CONFIG", ovs.path())],
        "kvm-net does not limit Open vSwitch ports",
    );
}
