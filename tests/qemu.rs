//! QEMU end to end: real guests booted under TCG with `script=`/`downscript=`
//! pointing at the helpers, judged by what each guest reports on its serial
//! console and by what the upstream host saw, never by QEMU's exit status.

use std::time::Duration;

use kvm_net_tests::inspect::{
    assert_network_gone_within, assert_no_nat_network, controller_of, firewall, has_chain, link_exists,
};
use kvm_net_tests::lab::{connect_to, Lab, UpstreamServer, HOST_UPLINK, HOST_UPLINK6, UPSTREAM, UPSTREAM6};
use kvm_net_tests::qemu::{Vm, VmSpec};
use kvm_net_tests::run::ConfigFile;
use kvm_net_tests::sandbox::{add_owned_tap, Install, Sandbox, User};
use nix::sys::signal::Signal;

/// Long enough for a TCG boot on a loaded 2-core machine.
const BOOT: Duration = Duration::from_secs(120);

const GATEWAY: &str = "192.168.100.1";

/// A NAT guest that checks the gateway, upstream by ping and by TCP.
fn nat_guest(name: &str, tap: &str, index: u8, server: &UpstreamServer) -> VmSpec {
    VmSpec::new(name, tap, index)
        .order("ip", format!("192.168.100.{}/24", 10 + index))
        .order("gw", GATEWAY)
        .order("ping", format!("{GATEWAY},{UPSTREAM}"))
        .order("tcp", format!("{UPSTREAM}:{}", server.port()))
}

fn upstream_steps() -> [String; 4] {
    ["link".into(), format!("ping:{GATEWAY}"), format!("ping:{UPSTREAM}"), "tcp".into()]
}

fn assert_upstream_saw_host(server: &UpstreamServer, guest: &str) {
    let seen = server.seen();
    let from_guest: Vec<_> = seen.iter().filter(|s| s.message == format!("hello-from-{guest}")).collect();
    assert!(!from_guest.is_empty(), "upstream never heard from {guest}: {seen:?}");
    for s in from_guest {
        assert_eq!(s.peer, HOST_UPLINK, "upstream must see the host's address, not the guest's");
    }
}

#[test]
fn nat_guest_reaches_upstream_and_everything_goes_with_it() {
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let run = Vm::start(&lab.host, &nat_guest("g1", "vmtap1", 1, &server)).wait(BOOT);
    let steps = upstream_steps();
    run.assert_passed(&steps.iter().map(String::as_str).collect::<Vec<_>>());
    assert_upstream_saw_host(&server, "g1");
    assert_no_nat_network(&lab.host, "br0");
    assert!(!link_exists(&lab.host, "vmtap1"), "QEMU's tap outlived QEMU");
}

#[test]
fn two_guests_share_the_bridge_and_the_last_one_out_cleans_up() {
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    // a: proves upstream, waits for b, then stays until stopped.
    let a =
        Vm::start(&lab.host, &nat_guest("a", "vmtap-a", 1, &server).order("peer", "192.168.100.12").order("stay", 600));
    // b: proves upstream, waits for a, waits until a is gone, proves upstream again.
    let b = Vm::start(
        &lab.host,
        &nat_guest("b", "vmtap-b", 2, &server).order("peer", "192.168.100.11").order("waitgone", "192.168.100.11"),
    );
    a.expect_ready(BOOT);
    assert_eq!(a.result("peer:192.168.100.12").map(|r| r.0), Some(true), "a cannot reach b");
    assert!(b.wait_for("KVMNET-RESULT peer:", BOOT).is_some(), "guest b never tried a");
    a.signal(Signal::SIGTERM);
    let run_a = a.wait(BOOT);
    assert!(link_exists(&lab.host, "br0"), "the bridge went while b still uses it");
    assert_eq!(controller_of(&lab.host, "vmtap-b").as_deref(), Some("br0"));
    let run_b = b.wait(BOOT);
    let mut steps: Vec<String> = upstream_steps().to_vec();
    steps.push("peer:192.168.100.11".into());
    steps.push("gone:192.168.100.11".into());
    steps.push("tcp-after".into());
    run_b.assert_passed(&steps.iter().map(String::as_str).collect::<Vec<_>>());
    let steps_a = upstream_steps();
    run_a.assert_passed(&steps_a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_upstream_saw_host(&server, "a");
    assert_upstream_saw_host(&server, "b");
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn nat_works_behind_a_drop_policy_and_leaves_foreign_rules_intact() {
    let lab = Lab::new();
    lab.host.sh("iptables -P FORWARD DROP
         iptables -N DOCKER-USER
         iptables -A DOCKER-USER -j RETURN
         iptables -N DOCKER-ISOLATION-STAGE-1
         iptables -A FORWARD -j DOCKER-USER
         iptables -A FORWARD -j DOCKER-ISOLATION-STAGE-1
         iptables -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
         iptables -t nat -N DOCKER
         iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
         iptables -t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER");
    let before = firewall(&lab.host);
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let run = Vm::start(&lab.host, &nat_guest("g1", "vmtap1", 1, &server)).wait(BOOT);
    let steps = upstream_steps();
    run.assert_passed(&steps.iter().map(String::as_str).collect::<Vec<_>>());
    assert_upstream_saw_host(&server, "g1");
    assert_eq!(firewall(&lab.host), before, "foreign rules must be exactly as before");
}

#[test]
fn bridged_guests_talk_over_a_bridge_the_host_owns() {
    let lab = Lab::new();
    // Isolated mode as in the documents: a bridge with no NIC and no address.
    lab.host.sh("ip link add br0 type bridge; ip link set br0 up");
    let before = firewall(&lab.host);
    let spec = |name: &str, index: u8, peer: u8| {
        VmSpec::new(name, &format!("vmtap-{name}"), index)
            .scripts("kvm-ifup", "kvm-ifdown")
            .order("ip", format!("192.168.100.{}/24", 10 + index))
            .order("peer", format!("192.168.100.{}", 10 + peer))
            .order("stay", 3)
    };
    let a = Vm::start(&lab.host, &spec("a", 1, 2));
    let b = Vm::start(&lab.host, &spec("b", 2, 1));
    let (run_a, run_b) = (a.wait(BOOT), b.wait(BOOT));
    run_a.assert_passed(&["link", "peer:192.168.100.12"]);
    run_b.assert_passed(&["link", "peer:192.168.100.11"]);
    assert!(link_exists(&lab.host, "br0"), "kvm-ifdown must never delete the bridge");
    assert!(lab.host.ok(&["ip", "-o", "link", "show", "master", "br0"]).trim().is_empty(), "ports left on br0");
    assert_eq!(firewall(&lab.host), before, "bridged mode must not touch the firewall");
}

#[test]
fn a_failing_natup_stops_qemu_and_leaves_nothing() {
    let lab = Lab::new();
    lab.host.ok(&["ip", "link", "add", "br0", "type", "veth", "peer", "name", "br0peer"]);
    let before = lab.host.snapshot();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let run = Vm::start(&lab.host, &nat_guest("g1", "vmtap1", 1, &server)).wait(BOOT);
    assert!(!run.status.success(), "QEMU must refuse to start");
    assert!(run.stderr.contains("network script") && run.stderr.contains("failed"), "{}", run.stderr);
    assert!(run.stderr.contains("kvm-natup: checking bridge br0: br0 is a veth link, not a bridge"), "{}", run.stderr);
    assert!(run.result("link").is_none(), "the guest must not have booted");
    assert_eq!(lab.host.snapshot(), before, "a failed natup must leave nothing behind");
}

#[test]
fn sigterm_runs_the_downscript() {
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let vm = Vm::start(&lab.host, &nat_guest("g1", "vmtap1", 1, &server).order("stay", 600));
    vm.expect_ready(BOOT);
    assert!(link_exists(&lab.host, "br0"));
    vm.signal(Signal::SIGTERM);
    let run = vm.wait(BOOT);
    assert!(run.result("tcp").is_some_and(|r| r.0), "{:?}", run.console);
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn after_a_sigkill_the_next_vm_still_starts() {
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let vm = Vm::start(&lab.host, &nat_guest("g1", "vmtap1", 1, &server).order("stay", 600));
    vm.expect_ready(BOOT);
    vm.signal(Signal::SIGKILL);
    vm.wait(BOOT);
    // No downscript ran: the bridge and the rules stay, the tap is gone.
    assert!(link_exists(&lab.host, "br0"));
    assert!(!link_exists(&lab.host, "vmtap1"));
    assert!(has_chain(&lab.host, "NAT", "br0"));
    let run = Vm::start(&lab.host, &nat_guest("g2", "vmtap2", 2, &server)).wait(BOOT);
    let steps = upstream_steps();
    run.assert_passed(&steps.iter().map(String::as_str).collect::<Vec<_>>());
    assert_upstream_saw_host(&server, "g2");
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn isolated_guests_talk_to_each_other_but_not_upstream() {
    let config = ConfigFile::new(
        "[network.lab]\nmode = \"isolated\"\nbridge = \"lab0\"\nipv4 = \"10.88.0.1/24\"\ntaps = [\"lab-*\"]\n",
    );
    let lab = Lab::new();
    // Forwarding on (as another network would leave it) and a route back:
    // only kvm-net's reject rules stand between the guests and upstream.
    lab.host.sh("echo 1 > /proc/sys/net/ipv4/ip_forward");
    lab.upstream.ok(&["ip", "route", "add", "10.88.0.0/24", "via", &HOST_UPLINK.to_string()]);
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let spec = |name: &str, index: u8, peer: u8| {
        VmSpec::new(name, &format!("lab-{name}"), index)
            .order("ip", format!("10.88.0.{}/24", 10 + index))
            .order("gw", "10.88.0.1")
            .order("ping", "10.88.0.1")
            .order("peer", format!("10.88.0.{}", 10 + peer))
            .order("unreachable", UPSTREAM)
            .order("blocked", format!("{UPSTREAM}:{}", server.port()))
            .order("stay", 3)
            .env("KVM_NET_CONFIG", config.path())
    };
    let a = Vm::start(&lab.host, &spec("a", 1, 2));
    let b = Vm::start(&lab.host, &spec("b", 2, 1));
    let (run_a, run_b) = (a.wait(BOOT), b.wait(BOOT));
    let unreachable = format!("unreachable:{UPSTREAM}");
    run_a.assert_passed(&["link", "ping:10.88.0.1", "peer:10.88.0.12", &unreachable, "blocked"]);
    run_b.assert_passed(&["link", "ping:10.88.0.1", "peer:10.88.0.11", &unreachable, "blocked"]);
    assert!(server.seen().is_empty(), "upstream heard from an isolated guest: {:?}", server.seen());
    assert_no_nat_network(&lab.host, "lab0");
}

#[test]
fn routed_guest_reaches_upstream_with_its_own_address() {
    let config = ConfigFile::new(
        "[network.dmz]\nmode = \"routed\"\nbridge = \"dmz0\"\nipv4 = \"10.77.0.1/24\"\ntaps = [\"dmz-*\"]\n",
    );
    let lab = Lab::new();
    lab.upstream.ok(&["ip", "route", "add", "10.77.0.0/24", "via", &HOST_UPLINK.to_string()]);
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let spec = VmSpec::new("r1", "dmz-r1", 1)
        .order("ip", "10.77.0.10/24")
        .order("gw", "10.77.0.1")
        .order("ping", format!("10.77.0.1,{UPSTREAM}"))
        .order("tcp", format!("{UPSTREAM}:{}", server.port()))
        .env("KVM_NET_CONFIG", config.path());
    let run = Vm::start(&lab.host, &spec).wait(BOOT);
    run.assert_passed(&["link", "ping:10.77.0.1", &format!("ping:{UPSTREAM}"), "tcp"]);
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].peer.to_string(), "10.77.0.10", "routed: upstream sees the guest itself");
    assert_no_nat_network(&lab.host, "dmz0");
}

#[test]
fn ipv6_guest_reaches_upstream_through_nat66() {
    let config = ConfigFile::new(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nipv6 = \"fd6b:766e::1/64\"\n",
    );
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let spec = VmSpec::new("six", "vmtap6", 6)
        .order("ip6", "fd6b:766e::10/64")
        .order("gw6", "fd6b:766e::1")
        .order("ping", format!("fd6b:766e::1,{UPSTREAM6}"))
        .order("tcp6", format!("{UPSTREAM6}:{}", server.port()))
        .env("KVM_NET_CONFIG", config.path());
    let run = Vm::start(&lab.host, &spec).wait(BOOT);
    run.assert_passed(&["link", "addr6", "ping:fd6b:766e::1", &format!("ping:{UPSTREAM6}"), "tcp6"]);
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].peer, HOST_UPLINK6, "NAT66: upstream sees the host's IPv6 address");
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn an_ipv6_guest_configures_itself_from_the_networks_advertisements_and_reaches_upstream_over_nat66() {
    let config = ConfigFile::new(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nipv6 = \"fd6b:766e::1/64\"\nguest_spoofing = \"deny\"\n",
    );
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let spec = VmSpec::new("slaac", "vmtap7", 7)
        .order("slaac", "1")
        .order("ping", "fd6b:766e::1")
        .order("tcp6", format!("{UPSTREAM6}:{}", server.port()))
        .env("KVM_NET_CONFIG", config.path());
    let run = Vm::start(&lab.host, &spec).wait(BOOT);
    run.assert_passed(&["link", "slaac", "ping:fd6b:766e::1", "tcp6"]);
    let said = run.result("slaac").map(|(_, detail)| detail).unwrap_or_default();
    assert!(said.starts_with("fd6b:766e:") && said.contains(" via fe80::"), "{said}");
    assert_eq!(server.seen().first().map(|s| s.peer), Some(HOST_UPLINK6.into()), "NAT66");
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn dhcp_guests_get_a_lease_a_fixed_address_and_a_name() {
    let config = ConfigFile::new(
        r#"
        [network.default]
        mode = "nat"
        bridge = "br0"
        ipv4 = "192.168.100.1/24"
        [network.default.dhcp]
        range = ["192.168.100.100", "192.168.100.199"]
        hosts = [{ mac = "52:54:00:6b:76:02", ip = "192.168.100.50", name = "fixed" }]
        records = [{ name = "upstream.lab", ip = "203.0.113.2" }]
        "#,
    );
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let spec = |name: &str, index: u8| {
        VmSpec::new(name, &format!("vmtap-{name}"), index)
            .order("dhcp", 1)
            .order("resolve", "upstream.lab")
            .order("tcp", format!("{UPSTREAM}:{}", server.port()))
            .env("KVM_NET_CONFIG", config.path())
    };
    let (a, b) = (Vm::start(&lab.host, &spec("a", 1)), Vm::start(&lab.host, &spec("b", 2)));
    let (run_a, run_b) = (a.wait(BOOT), b.wait(BOOT));
    run_a.assert_passed(&["link", "dhcp", "resolve:upstream.lab", "tcp"]);
    run_b.assert_passed(&["link", "dhcp", "resolve:upstream.lab", "tcp"]);
    let leased = run_a.result("dhcp").map(|r| r.1).unwrap_or_default();
    let last: u8 = leased
        .strip_prefix("192.168.100.")
        .and_then(|rest| rest.split('/').next())
        .and_then(|octet| octet.parse().ok())
        .unwrap_or(0);
    assert!((100..=199).contains(&last), "lease {leased:?} outside the range");
    assert!(leased.contains("router 192.168.100.1 dns 192.168.100.1"), "{leased}");
    assert!(run_b.result("dhcp").is_some_and(|r| r.1.starts_with("192.168.100.50/24")), "{:?}", run_b.result("dhcp"));
    assert_eq!(run_a.result("resolve:upstream.lab").map(|r| r.1), Some("203.0.113.2".to_owned()));
    assert_upstream_saw_host(&server, "a");
    assert_upstream_saw_host(&server, "b");
    // Nothing left running: no dnsmasq of this namespace, no run directory.
    let run_dir = format!("/run/kvm-net/dnsmasq/{}-br0", lab.host.id());
    let seen = lab.host.kvm_net_dir().join(format!("dnsmasq/{}-br0", lab.host.id()));
    assert!(!seen.exists(), "{run_dir} left behind");
    let survivors: Vec<_> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(&run_dir))
        .collect();
    assert!(survivors.is_empty(), "a dnsmasq outlived both VMs");
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn an_unprivileged_user_runs_qemu_with_the_setuid_natup_on_a_granted_network_only() {
    let alice = User::alice();
    let sandbox = Sandbox::new();
    sandbox.config(&format!(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\ndhcp = {{ enabled = false }}\nallow_users = [\"{}\"]\n\
         [network.lab]\nmode = \"isolated\"\nbridge = \"lab0\"\n",
        alice.name
    ));
    let bin = sandbox.install(Install::Setuid);
    let lab = Lab::new();
    // What an administrator does once for a user: a persistent tap of theirs.
    add_owned_tap(&lab.host, "vmtap-u", Some(&alice), None);
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let script = |name: &str| bin.join(name).display().to_string();
    let spec = nat_guest("u1", "vmtap-u", 1, &server).scripts(&script("kvm-natup"), &script("kvm-natdown"));
    let run = Vm::start_as(&sandbox, &lab.host, &alice, &spec).wait(BOOT);
    let steps = upstream_steps();
    run.assert_passed(&steps.iter().map(String::as_str).collect::<Vec<_>>());
    assert_upstream_saw_host(&server, "u1");
    assert_no_nat_network(&lab.host, "br0");
    assert!(link_exists(&lab.host, "vmtap-u"), "the persistent tap is the user's to keep");
    // The same user, pointed at a network nobody granted: QEMU does not start, nothing is made.
    let links = sandbox.scratch("links");
    std::os::unix::fs::symlink(bin.join("kvm-natup"), links.join("kvm-natup@lab")).expect("symlink");
    let refused = links.join("kvm-natup@lab").display().to_string();
    let spec = nat_guest("u2", "vmtap-u", 2, &server).scripts(&refused, &script("kvm-natdown"));
    let run = Vm::start_as(&sandbox, &lab.host, &alice, &spec).wait(BOOT);
    assert!(run.stderr.contains("user kvmnet-alice may not use network lab"), "{}", run.stderr);
    assert!(run.stderr.contains("failed with status 256"), "{}", run.stderr);
    assert_eq!(run.result("link"), None, "the guest must not have booted");
    assert!(!link_exists(&lab.host, "lab0") && !link_exists(&lab.host, "br0"));
}

/// Names an installed bridge helper to test instead of a setuid copy made
/// in the sandbox (`make package-test`: the package's own).
const ENV_INSTALLED_BRIDGE_HELPER: &str = "KVM_NET_INSTALLED_BRIDGE_HELPER";

/// A sandbox whose config grants the NAT network `default` (with DHCP) to
/// `user`, and the bridge helper installed setuid root.
fn bridge_helper_sandbox(user: &User) -> (Sandbox, std::path::PathBuf) {
    let sandbox = Sandbox::new();
    sandbox.config(&format!(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nallow_users = [\"{}\"]\n",
        user.name
    ));
    let helper = match std::env::var_os(ENV_INSTALLED_BRIDGE_HELPER) {
        Some(installed) => std::path::PathBuf::from(installed),
        None => sandbox.install(Install::Setuid).join("kvm-net-bridge-helper"),
    };
    (sandbox, helper)
}

/// A guest on `-netdev bridge,br=default,helper=...` that takes a DHCP lease
/// and reaches upstream.
fn helper_guest(name: &str, index: u8, helper: &std::path::Path, server: &UpstreamServer) -> VmSpec {
    VmSpec::new(name, "unused", index)
        .bridge_helper("default", helper)
        .order("dhcp", 1)
        .order("tcp", format!("{UPSTREAM}:{}", server.port()))
}

/// Panics unless the network on br0 is gone, with its dnsmasq and watcher,
/// within a second.
fn assert_helper_network_gone_soon(lab: &Lab, sandbox: &Sandbox) {
    assert_network_gone_within(&lab.host, "br0", Duration::from_secs(1));
    let dnsmasq = sandbox.run_dir().join(format!("kvm-net/dnsmasq/{}-br0", lab.host.id()));
    assert!(!dnsmasq.exists(), "{} left behind", dnsmasq.display());
}

#[test]
fn an_unprivileged_qemu_gets_nat_and_dhcp_through_the_bridge_helper_until_it_exits() {
    let alice = User::alice();
    let (sandbox, helper) = bridge_helper_sandbox(&alice);
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let run = Vm::start_as(&sandbox, &lab.host, &alice, &helper_guest("h1", 1, &helper, &server)).wait(BOOT);
    run.assert_passed(&["link", "dhcp", "tcp"]);
    assert!(run.result("dhcp").is_some_and(|r| r.1.contains("router 192.168.100.1")), "{:?}", run.result("dhcp"));
    assert_upstream_saw_host(&server, "h1");
    // The guest powered off: QEMU has exited, and ran no downscript.
    assert_helper_network_gone_soon(&lab, &sandbox);
}

#[test]
fn the_bridge_helpers_network_stays_while_a_vm_uses_it_even_after_kill_9() {
    let alice = User::alice();
    let (sandbox, helper) = bridge_helper_sandbox(&alice);
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let a = Vm::start_as(&sandbox, &lab.host, &alice, &helper_guest("a", 1, &helper, &server).order("stay", 600));
    let b = Vm::start_as(&sandbox, &lab.host, &alice, &helper_guest("b", 2, &helper, &server).order("stay", 600));
    a.expect_ready(BOOT);
    b.expect_ready(BOOT);
    for vm in [&a, &b] {
        assert_eq!(vm.result("tcp").map(|r| r.0), Some(true), "{:?} after {:?}", vm.result("tcp"), vm.result("dhcp"));
    }
    // kvm-net status names QEMU as the holder of each helper-made port.
    let status = sandbox.run(&lab.host, None, &kvm_net_tests::helper("kvm-net"), &["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    for vm in [&a, &b] {
        assert!(text.contains(&format!("\"pid\": {}", vm.pid())), "QEMU {} not shown: {text}", vm.pid());
    }
    a.signal(Signal::SIGKILL);
    a.wait(BOOT);
    // a's tap went with its QEMU; once the watcher has handled that, the network must still be there.
    kvm_net_tests::inspect::watchers_idle(&lab.host, Duration::from_secs(5));
    assert!(link_exists(&lab.host, "br0"), "the network went while b still uses it");
    assert!(has_chain(&lab.host, "NAT", "br0"));
    b.signal(Signal::SIGKILL);
    b.wait(BOOT);
    assert_helper_network_gone_soon(&lab, &sandbox);
}

#[test]
fn qemu_of_a_user_without_a_grant_does_not_start_and_nothing_is_made() {
    let (alice, bob) = (User::alice(), User::bob());
    let (sandbox, helper) = bridge_helper_sandbox(&alice);
    let lab = Lab::new();
    let before = lab.host.snapshot();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let run = Vm::start_as(&sandbox, &lab.host, &bob, &helper_guest("x", 1, &helper, &server)).wait(BOOT);
    assert!(run.stderr.contains("user kvmnet-bob may not use network default"), "{}", run.stderr);
    assert!(run.stderr.contains("bridge helper failed"), "{}", run.stderr);
    assert_eq!(run.result("link"), None, "the guest must not have booted");
    assert_eq!(lab.host.snapshot(), before, "a refusal changes nothing");
}

#[test]
fn a_forward_reaches_a_service_in_the_real_guest_and_goes_with_its_network() {
    let config = ConfigFile::new(
        r#"
        [network.default]
        mode = "nat"
        bridge = "br0"
        ipv4 = "192.168.100.1/24"
        [network.default.dhcp]
        hosts = [{ mac = "52:54:00:6b:76:01", ip = "192.168.100.10", name = "web1" }]
        [[network.default.forwards]]
        host_port = 2222
        guest = "web1"
        guest_port = 22
        "#,
    );
    let lab = Lab::new();
    let spec = VmSpec::new("web1", "vmtap1", 1)
        .order("dhcp", 1)
        .order("serve", 22)
        .order("stay", 600)
        .env("KVM_NET_CONFIG", config.path());
    let vm = Vm::start(&lab.host, &spec);
    vm.expect_ready(BOOT);
    assert!(vm.result("dhcp").is_some_and(|r| r.0 && r.1.starts_with("192.168.100.10/24")), "{:?}", vm.result("dhcp"));
    // The hostfwd of QEMU's user networking, on a bridge: upstream to the host's address and port.
    let reply = connect_to(&lab.upstream, HOST_UPLINK, 2222, "hello", Duration::from_secs(5));
    assert_eq!(reply.ok().as_deref(), Some("served-by web1"), "console:\n{}", vm.stderr_so_far());
    vm.signal(Signal::SIGTERM);
    vm.wait(BOOT);
    assert_no_nat_network(&lab.host, "br0");
    assert!(connect_to(&lab.upstream, HOST_UPLINK, 2222, "hello", Duration::from_secs(1)).is_err());
}

#[test]
fn a_guest_under_guest_spoofing_deny_gets_its_lease_and_reaches_upstream() {
    let config = ConfigFile::new(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nguest_spoofing = \"deny\"\n",
    );
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let spec = VmSpec::new("g1", "vmtap1", 1)
        .order("dhcp", 1)
        .order("ping", GATEWAY)
        .order("tcp", format!("{UPSTREAM}:{}", server.port()))
        .env("KVM_NET_CONFIG", config.path());
    let run = Vm::start(&lab.host, &spec).wait(BOOT);
    run.assert_passed(&["link", "dhcp", &format!("ping:{GATEWAY}"), "tcp"]);
    assert_upstream_saw_host(&server, "g1");
    assert_no_nat_network(&lab.host, "br0");
    let left = lab.host.output(&["nft", "list", "table", "bridge", "kvm_net"]);
    assert!(!left.status.success(), "the guest filter outlived the network");
}
