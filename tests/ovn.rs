//! Beyond one host: two hosts (network namespaces, each with its own Open
//! vSwitch and ovn-controller), one OVN central, one logical switch, joined
//! by Geneve over a veth underlay (tests/src/ovn.rs). kvm-net attaches the
//! guests' ports (`mode = "ovs"` on br-int, the one ovn-controller made);
//! OVN does the rest. A guest on host A reaches a guest on host B, ping and
//! TCP, a real QEMU guest too; detaching a port cuts its guest off.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::{Duration, Instant};

use kvm_net_tests::helper;
use kvm_net_tests::host::assert_ok;
use kvm_net_tests::lab::{connect_within, UpstreamServer};
use kvm_net_tests::ovn::{veth_guest, OvnHost, OvnLab};
use kvm_net_tests::qemu::{Vm, VmSpec};
use kvm_net_tests::run::stderr;
use kvm_net_tests::run::ConfigFile;
use kvm_net_tests::Netns;

/// Taps named by QEMU (`ifname=vm-...`) are ports named after them; a VM
/// whose tap the bridge helper makes gets a network of its own, whose
/// iface-id names its logical port.
const CONFIG: &str = r#"
[network.ovn]
mode = "ovs"
bridge = "br-int"
taps = ["vm-*"]

[network.web]
mode = "ovs"
bridge = "br-int"
iface_id = "web"
"#;

const GUEST_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const GUEST_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const MAC_A: &str = "52:54:00:0a:00:0a";
const MAC_B: &str = "52:54:00:0a:00:0b";

/// How long OVN may take to install a port's flows on its chassis.
const INSTALL: Duration = Duration::from_secs(30);
/// Software emulation: boot plus every step of the guest.
const BOOT: Duration = Duration::from_secs(240);

fn helper_on(host: &OvnHost, config: &ConfigFile, bin: &str, tap: &str) -> Output {
    host.ovs.run(&host.ns, helper(bin), &[tap], &[("KVM_NET_CONFIG", config.path())])
}

/// Waits until `kvm-net status --json` on `host` shows `port` installed by OVN.
fn wait_installed(host: &OvnHost, config: &ConfigFile, port: &str) {
    let deadline = Instant::now() + INSTALL;
    loop {
        let out =
            host.ovs.run(&host.ns, helper("kvm-net"), &["status", "--json"], &[("KVM_NET_CONFIG", config.path())]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let ports = status["networks"][0]["ports"].as_array().cloned().unwrap_or_default();
        if ports.iter().any(|p| p["name"] == port && p["ovn_installed"] == true && p["iface_id"] == port) {
            return;
        }
        assert!(Instant::now() < deadline, "OVN never installed {port} on {}: {status}", host.chassis);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pings(from: &Netns, to: Ipv4Addr, tries: u32) -> bool {
    (0..tries).any(|_| from.output(&["ping", "-c", "1", "-W", "1", &to.to_string()]).status.success())
}

#[test]
fn guests_on_two_hosts_share_a_logical_switch_until_one_is_detached() {
    let lab = OvnLab::start();
    let [a, b] = &lab.hosts;
    let config = ConfigFile::new(CONFIG);
    lab.logical_port("ls0", "vm-a", MAC_A, &GUEST_A.to_string());
    lab.logical_port("ls0", "vm-b", MAC_B, &GUEST_B.to_string());
    let guest_a = veth_guest(a, "vm-a", MAC_A, "10.0.0.10/24");
    let guest_b = veth_guest(b, "vm-b", MAC_B, "10.0.0.11/24");
    assert_ok(&helper_on(a, &config, "kvm-ifup", "vm-a"));
    assert_ok(&helper_on(b, &config, "kvm-ifup", "vm-b"));
    wait_installed(a, &config, "vm-a");
    wait_installed(b, &config, "vm-b");
    assert_eq!(lab.nbctl(&["get", "Logical_Switch_Port", "vm-a", "up"]), "true");

    assert!(pings(&guest_a, GUEST_B, 10), "guest A cannot ping guest B across hosts");
    let server = UpstreamServer::start(&guest_b, GUEST_B);
    let reply = connect_within(&guest_a, GUEST_B, &server, "over-geneve", Duration::from_secs(5));
    assert!(reply.as_deref().is_ok_and(|r| r.starts_with("seen")), "TCP from A to B: {reply:?}");

    let out = helper_on(b, &config, "kvm-ifdown", "vm-b");
    assert_ok(&out);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert!(!b.ovs.vsctl(&b.ns, &["list-ports", "br-int"]).lines().any(|p| p == "vm-b"), "vm-b is still a port");
    assert!(!pings(&guest_a, GUEST_B, 3), "guest B still answers after its port was removed");
    let reply = connect_within(&guest_a, GUEST_B, &server, "after-detach", Duration::from_secs(2));
    assert!(reply.is_err(), "TCP still gets through: {reply:?}");
}

#[test]
fn qemu_guests_on_host_a_talk_tcp_to_a_guest_on_host_b() {
    let lab = OvnLab::start();
    let [a, b] = &lab.hosts;
    let config = ConfigFile::new(CONFIG);
    lab.logical_port("ls0", "vm-b", MAC_B, &GUEST_B.to_string());
    let guest_b = veth_guest(b, "vm-b", MAC_B, "10.0.0.11/24");
    assert_ok(&helper_on(b, &config, "kvm-ifup", "vm-b"));
    wait_installed(b, &config, "vm-b");
    let server = UpstreamServer::start(&guest_b, GUEST_B);
    let orders = |spec: VmSpec, ip: &str| {
        spec.env("KVM_NET_CONFIG", config.path())
            .order("ip", ip)
            .order("ping", GUEST_B)
            .order("tcp", format!("{GUEST_B}:{}", server.port()))
    };
    // Through the tap scripts, told to leave checksums to the guest (the
    // userspace datapath would forward them unfinished)...
    let scripted = orders(VmSpec::new("scripted", "vm-q", 0x20).scripts("kvm-ifup", "kvm-ifdown"), "10.0.0.20/24")
        .netdev_option("vnet_hdr=off");
    // ...and through the bridge helper, as QEMU runs it by default.
    let helped =
        orders(VmSpec::new("helped", "", 0x21), "10.0.0.21/24").bridge_helper("web", &helper("kvm-net-bridge-helper"));
    lab.logical_port("ls0", "vm-q", &scripted.mac, "10.0.0.20");
    lab.logical_port("ls0", "web", &helped.mac, "10.0.0.21");
    let vms = [&scripted, &helped].map(|spec| Vm::start_with(a.ovs.command(&a.ns, "qemu-system-x86_64"), spec));
    for (vm, name) in vms.into_iter().zip(["scripted", "helped"]) {
        let run = vm.wait(BOOT);
        run.assert_passed(&["link", "addr", &format!("ping:{GUEST_B}"), "tcp"]);
        assert!(run.stderr.is_empty(), "{name}: {}", run.stderr);
        assert!(server.seen().iter().any(|s| s.message == format!("hello-from-{name}")), "{name}: guest B saw nothing");
    }
    let ports = a.ovs.vsctl(&a.ns, &["list-ports", "br-int"]);
    assert!(!ports.lines().any(|p| p == "vm-q"), "kvm-ifdown left vm-q on br-int: {ports}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.ovs.vsctl(&a.ns, &["list-ports", "br-int"]).lines().any(|p| p.starts_with("kvmtap")) {
        assert!(Instant::now() < deadline, "the watcher left the helper's port on br-int");
        std::thread::sleep(Duration::from_millis(50));
    }
}
