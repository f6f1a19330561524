//! kvm-net on a host where firewalld runs (a real firewalld 1.x with its
//! default configuration, zone public, in the test's namespace and sandbox):
//! NAT guests get out, get a lease and DNS answers, keep working across
//! `firewall-cmd --reload` (with the nftables backend; the iptables one
//! needs a repair, which check says), and teardown leaves firewalld as it
//! was; the host's other interfaces stay in the public zone, which keeps
//! rejecting.

use std::path::Path;
use std::time::Duration;

use kvm_net_tests::firewalld::Firewalld;
use kvm_net_tests::inspect::{assert_no_nat_network, backend, Backend};
use kvm_net_tests::lab::{connect_from, connect_within, lease, Lab, UpstreamServer, HOST_UPLINK, UPSTREAM};
use kvm_net_tests::sandbox::{Install, Sandbox};

const CONFIG: &str = r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"

[network.default.dhcp]
records = [{ name = "upstream.lab", ip = "203.0.113.2" }]
"#;

#[track_caller]
fn helper(sandbox: &Sandbox, lab: &Lab, bin: &Path, name: &str, tap: &str) {
    let out = sandbox.run(&lab.host, None, &bin.join(name), &[tap]);
    assert!(out.status.success(), "{name} {tap}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A lease, DNS, and a connection upstream, from a guest with no address yet.
fn guest_works(guest: &kvm_net_tests::Netns, server: &UpstreamServer, what: &str) {
    let address = lease(guest).unwrap_or_else(|| panic!("{what}: no DHCP lease"));
    guest.sh(&format!(
        "ip addr flush dev eth0; ip addr add {address}/24 dev eth0; ip route replace default via 192.168.100.1"
    ));
    let answer = guest.output(&["busybox", "nslookup", "upstream.lab", "192.168.100.1"]);
    let answer = String::from_utf8_lossy(&answer.stdout);
    assert!(answer.contains("Address: 203.0.113.2"), "{what}: no DNS answer: {answer}");
    let reply = connect_from(guest, UPSTREAM, server, what).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(reply, format!("seen {HOST_UPLINK}"), "{what}");
}

#[test]
fn nat_guests_work_under_firewalld_across_a_reload_and_leave_it_as_it_was() {
    let lab = Lab::new();
    let sandbox = Sandbox::new();
    sandbox.config(CONFIG);
    let bin = sandbox.install(Install::Root);
    let firewalld = Firewalld::start(&sandbox, &lab.host);
    let before = firewalld.configuration();
    let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
    // A service of the host's on its uplink: the public zone rejects it, before and after.
    let host_service = UpstreamServer::start(&lab.host, HOST_UPLINK);
    assert!(connect_within(&lab.upstream, HOST_UPLINK, &host_service, "in", Duration::from_secs(1)).is_err());
    let guest = lab.guest("vm0", "0.0.0.0/32", None);
    helper(&sandbox, &lab, &bin, "kvm-natup", "vm0");
    assert_eq!(firewalld.cmd(&["--get-zone-of-interface=br0"]), "trusted");
    assert_eq!(firewalld.cmd(&["--get-zone-of-interface=up0"]), "no zone", "the uplink stays in the default zone");
    guest_works(&guest, &upstream, "under firewalld");
    // A reload drops runtime bindings; the permanent one brings the bridge back.
    assert_eq!(firewalld.cmd(&["--reload"]), "success");
    assert_eq!(firewalld.cmd(&["--get-zone-of-interface=br0"]), "trusted");
    let kvm_net = kvm_net_tests::helper("kvm-net");
    if backend() == Backend::Iptables {
        // firewalld's reload flushes iptables: check says so, and repair puts the rules back.
        let check = sandbox.run(&lab.host, None, &kvm_net, &["check"]);
        let said = String::from_utf8_lossy(&check.stdout);
        assert!(said.contains("error [rules-missing]") && said.contains("warning [firewalld-reload]"), "{said}");
        assert!(sandbox.run(&lab.host, None, &kvm_net, &["repair", "default"]).status.success());
    }
    guest_works(&guest, &upstream, "after a reload");
    assert!(connect_within(&lab.upstream, HOST_UPLINK, &host_service, "in", Duration::from_secs(1)).is_err());
    let check = sandbox.run(&lab.host, None, &kvm_net, &["check"]);
    let said = String::from_utf8_lossy(&check.stdout);
    match backend() {
        Backend::Nftables => assert!(said.contains("ok: no problems found"), "{said}"),
        Backend::Iptables => {
            assert!(said.starts_with("warning [firewalld-reload]") && said.lines().count() == 1, "{said}")
        }
    }
    helper(&sandbox, &lab, &bin, "kvm-natdown", "vm0");
    assert_no_nat_network(&lab.host, "br0");
    assert_eq!(firewalld.configuration(), before, "firewalld must be as kvm-net found it");
    assert!(connect_within(&lab.upstream, HOST_UPLINK, &host_service, "in", Duration::from_secs(1)).is_err());
}

#[test]
fn check_finds_a_bridge_firewalld_would_reject_and_repair_puts_it_back() {
    let lab = Lab::new();
    let sandbox = Sandbox::new();
    sandbox.config(CONFIG);
    let bin = sandbox.install(Install::Root);
    let firewalld = Firewalld::start(&sandbox, &lab.host);
    let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let guest = lab.guest("vm0", "0.0.0.0/32", None);
    helper(&sandbox, &lab, &bin, "kvm-natup", "vm0");
    // Someone takes the bridge out of its zone, at runtime and for good.
    firewalld.cmd(&["--zone=trusted", "--remove-interface=br0"]);
    firewalld.cmd(&["--permanent", "--zone=trusted", "--remove-interface=br0"]);
    let kvm_net = kvm_net_tests::helper("kvm-net");
    let check = sandbox.run(&lab.host, None, &kvm_net, &["check"]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(2), "{said}");
    assert!(
        said.contains(
            "error [firewalld-zone]: firewalld runs, and bridge br0 of network default is in none of its zones"
        ),
        "{said}"
    );
    assert!(said.contains("fix: run `kvm-net repair default`"), "{said}");
    let repair = sandbox.run(&lab.host, None, &kvm_net, &["repair", "default"]);
    assert!(repair.status.success(), "{}", String::from_utf8_lossy(&repair.stderr));
    assert_eq!(firewalld.cmd(&["--get-zone-of-interface=br0"]), "trusted");
    guest_works(&guest, &upstream, "after repair");
    helper(&sandbox, &lab, &bin, "kvm-natdown", "vm0");
    assert_eq!(firewalld.cmd(&["--permanent", "--get-zone-of-interface=br0"]), "no zone");
}
