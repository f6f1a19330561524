//! `kvm-net status|check|gc|up|down`, each finding of `check` created for
//! real in a namespace of its own.

use std::process::Output;
use std::time::Duration;

use kvm_net_tests::inspect::{assert_no_nat_network, backend, controller_of, has_chain, link_exists, Backend};
use kvm_net_tests::lab::Lab;
use kvm_net_tests::qemu::{Vm, VmSpec};
use kvm_net_tests::run::{add_tap, ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const CONFIG: &str = r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"

[network.lab]
mode = "isolated"
bridge = "lab0"
ipv4 = "10.88.0.1/24"
taps = ["lab-*"]
dhcp = { enabled = false }

[network.lan]
mode = "bridged"
bridge = "lan0"
taps = ["srv-*"]
"#;

/// A namespace with the default network up (one tap on it) and a quiet
/// bridge-netfilter setting, so that `check` starts out clean.
fn healthy(config: &ConfigFile) -> Netns {
    let host = Netns::new();
    host.sh("echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables");
    add_tap(&host, "tap0");
    ok_with(&host, "kvm-natup", "tap0", &[("KVM_NET_CONFIG", config.path())]);
    host
}

fn kvm_net(ns: &Netns, config: &ConfigFile, args: &[&str]) -> Output {
    run(ns, "kvm-net", args, &[("KVM_NET_CONFIG", config.path())])
}

/// Runs `kvm-net check`; returns its exit code and its lines.
fn check(ns: &Netns, config: &ConfigFile) -> (i32, String) {
    let out = kvm_net(ns, config, &["check"]);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[track_caller]
fn assert_finding(ns: &Netns, config: &ConfigFile, code: i32, line_start: &str) {
    let (exit, text) = check(ns, config);
    assert!(text.lines().any(|l| l.starts_with(line_start)), "no {line_start:?} in:\n{text}");
    assert_eq!(exit, code, "{text}");
    let json = kvm_net(ns, config, &["check", "--json"]);
    assert_eq!(json.status.code(), Some(code));
    assert!(String::from_utf8_lossy(&json.stdout).contains("\"code\""), "JSON output");
}

#[test]
fn a_healthy_host_checks_clean() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    assert_eq!(check(&host, &config), (0, "ok: no problems found\n".to_owned()));
}

#[test]
fn check_finds_missing_rules() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    let says = match backend() {
        Backend::Iptables => {
            host.ok(&["iptables", "-t", "nat", "-F", "KVMNET-NAT-br0"]);
            "iptables KVMNET-NAT-br0 (differs)"
        }
        Backend::Nftables => {
            host.ok(&["nft", "flush", "chain", "ip", "kvm_net", "nat-br0"]);
            "ip kvm_net nat-br0 (differs)"
        }
    };
    let finding =
        "error [rules-missing]: network default is up on br0, but its firewall rules are not as kvm-net set them";
    assert_finding(&host, &config, 2, &format!("{finding}: {says}"));
    // The fix it names works, and does nothing else: the network is not kept up.
    let (_, text) = check(&host, &config);
    assert!(text.contains("fix: run `kvm-net repair default`"), "{text}");
    assert!(kvm_net(&host, &config, &["repair", "default"]).status.success());
    assert_eq!(check(&host, &config).0, 0);
    ok_with(&host, "kvm-natdown", "tap0", &[("KVM_NET_CONFIG", config.path())]);
    assert!(!link_exists(&host, "br0"), "repair must not keep the network up");
}

#[test]
fn check_finds_a_drop_ahead_of_kvm_nets_accepts() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    host.ok(&["iptables", "-P", "FORWARD", "DROP"]);
    if backend() == Backend::Nftables {
        // iptables now drops what kvm-net's own table accepts: its accepts must go into iptables too.
        assert_finding(&host, &config, 2, "error [forward-drop]: guests of network default cannot get out: iptables drops forwarded traffic here (a DROP policy) and kvm-net's accepts in FORWARD are missing");
        assert!(kvm_net(&host, &config, &["repair", "default"]).status.success());
    }
    assert_eq!(check(&host, &config).0, 0, "DROP policy with kvm-net's accepts in place is fine");
    host.ok(&["iptables", "-I", "FORWARD", "1", "-j", "DROP"]);
    assert_finding(&host, &config, 2, "error [forward-drop]: guests of network default cannot get out: `-A FORWARD -j DROP` comes before kvm-net's accepts");
    // The fix it names puts kvm-net's jump ahead of the DROP, and does not keep the network up.
    let (_, text) = check(&host, &config);
    assert!(
        text.contains("fix: run `kvm-net repair default` to put kvm-net's jump back at the top of FORWARD"),
        "{text}"
    );
    assert!(kvm_net(&host, &config, &["repair", "default"]).status.success());
    assert_eq!(check(&host, &config).0, 0, "{}", check(&host, &config).1);
    let forward = host.ok(&["iptables", "-S", "FORWARD"]);
    let chain = match backend() {
        Backend::Iptables => "-j KVMNET-FWD-br0",
        Backend::Nftables => "-j KVMNET-ACC-br0",
    };
    assert!(forward.lines().nth(1).is_some_and(|l| l.contains(chain)), "{forward}");
    let status = String::from_utf8_lossy(&kvm_net(&host, &config, &["status", "--json"]).stdout).into_owned();
    assert!(status.contains("\"kept_up\": false"), "{status}");
    host.ok(&["iptables", "-D", "FORWARD", "-j", "DROP"]);
    let (target, says) = match backend() {
        Backend::Iptables => ("KVMNET-FWD-br0", "FORWARD's policy is DROP and kvm-net's accepts are missing"),
        Backend::Nftables => (
            "KVMNET-ACC-br0",
            "iptables drops forwarded traffic here (a DROP policy) and kvm-net's accepts in FORWARD are missing",
        ),
    };
    // The iptables backend jumps once per direction; the nftables backend's accepts once.
    let ways: &[&[&str]] = match backend() {
        Backend::Iptables => &[&["-i", "br0"], &["-o", "br0"]],
        Backend::Nftables => &[&[]],
    };
    for way in ways {
        let mut delete = vec!["iptables", "-D", "FORWARD"];
        delete.extend_from_slice(way);
        delete.extend_from_slice(&["-m", "comment", "--comment", "kvm-net:br0", "-j", target]);
        host.ok(&delete);
    }
    assert_finding(
        &host,
        &config,
        2,
        &format!("error [forward-drop]: guests of network default cannot get out: {says}"),
    );
}

#[test]
fn check_finds_bridge_netfilter_with_a_bridged_network() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    host.ok(&["ip", "link", "add", "lan0", "type", "bridge"]);
    assert_eq!(check(&host, &config).0, 0);
    host.sh("echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables");
    assert_finding(&host, &config, 1, "warning [br-netfilter]: net.bridge.bridge-nf-call-iptables=1: frames bridged on lan0 go through iptables FORWARD");
}

#[test]
fn check_finds_forwarding_switched_off() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    host.sh("echo 0 > /proc/sys/net/ipv4/ip_forward");
    assert_finding(&host, &config, 2, "error [forwarding-off]: net.ipv4.ip_forward=0 while nat network default is up");
}

#[test]
fn check_finds_a_subnet_collision() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    host.sh("ip link add eth7 type veth peer name eth7p; ip addr add 10.88.0.77/16 dev eth7");
    assert_finding(
        &host,
        &config,
        2,
        "error [subnet-collision]: subnet 10.88.0.0/24 of network lab is in use by eth7 (address 10.88.0.77/16)",
    );
}

#[test]
fn check_finds_an_empty_bridge_left_behind() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    // A VM killed with SIGKILL: the kernel deletes its tap, no downscript runs.
    host.ok(&["ip", "link", "del", "tap0"]);
    assert_finding(&host, &config, 1, "warning [empty-bridge]: bridge br0 was made by kvm-net and has no ports left");
}

#[test]
fn a_bridge_created_but_never_named_is_still_kvm_nets() {
    let config = ConfigFile::new(CONFIG);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = healthy(&config);
    let line = host.ok(&["ip", "-br", "link", "show", "dev", "br0"]);
    let mac = line.split_whitespace().nth(2).expect("the bridge's MAC").to_owned();
    ok_with(&host, "kvm-natdown", "tap0", &env);
    // kvm-natup stopped between the request that made the bridge and the one that names it.
    host.ok(&["ip", "link", "add", "br0", "address", &mac, "type", "bridge"]);
    assert_finding(&host, &config, 1, "warning [empty-bridge]: bridge br0 was made by kvm-net");
    let out = kvm_net(&host, &config, &["gc"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed br0 (network default)"), "{out:?}");
    assert!(!link_exists(&host, "br0"));
    // The next VM start adopts and names such a bridge; the last stop removes it.
    host.ok(&["ip", "link", "add", "br0", "address", &mac, "type", "bridge"]);
    ok_with(&host, "kvm-natup", "tap0", &env);
    assert!(host.ok(&["ip", "-d", "link", "show", "dev", "br0"]).contains("alias kvm-net managed bridge"));
    ok_with(&host, "kvm-natdown", "tap0", &env);
    assert_no_nat_network(&host, "br0");
}

#[test]
fn check_finds_a_non_bridge_with_a_bridge_name() {
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    host.ok(&["ip", "link", "add", "lab0", "type", "veth", "peer", "name", "lab0p"]);
    assert_finding(
        &host,
        &config,
        2,
        "error [not-a-bridge]: lab0, the bridge of network lab, is a veth link, not a bridge",
    );
}

#[test]
fn check_finds_config_errors_and_a_dead_dnsmasq() {
    let broken = ConfigFile::new("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\n");
    let host = Netns::new();
    assert_finding(
        &host,
        &broken,
        2,
        &format!("error [config]: config {}: network default: field ipv4", broken.path()),
    );
    let config = ConfigFile::new(CONFIG);
    let host = healthy(&config);
    let pidfile = host.kvm_net_dir().join(format!("dnsmasq/{}-br0/dnsmasq.pid", host.id()));
    let pid = std::fs::read_to_string(pidfile).expect("pidfile");
    host.ok(&["kill", pid.trim()]);
    kvm_net_tests::inspect::wait_until_gone(pid.trim().parse().expect("a PID"), Duration::from_secs(5), "dnsmasq");
    assert_finding(
        &host,
        &config,
        2,
        "error [dnsmasq-down]: network default has DHCP on, but no dnsmasq of kvm-net's serves br0",
    );
}

#[test]
fn gc_removes_networks_whose_vms_vanished_and_nothing_else() {
    let config = ConfigFile::new(CONFIG);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = healthy(&config);
    add_tap(&host, "lab-1");
    add_tap(&host, "lab-2");
    ok_with(&host, "kvm-natup", "lab-1", &env);
    ok_with(&host, "kvm-natup", "lab-2", &env);
    host.ok(&["ip", "link", "add", "lan0", "type", "bridge"]);
    // Both VMs of lab were killed without their downscripts.
    host.sh("ip link del lab-1; ip link del lab-2");
    let dry = kvm_net(&host, &config, &["gc", "--dry-run"]);
    assert_eq!(String::from_utf8_lossy(&dry.stdout), "would remove lab0 (network lab): an empty bridge\n");
    assert!(link_exists(&host, "lab0"), "--dry-run removed something");
    let out = kvm_net(&host, &config, &["gc"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "removed lab0 (network lab): an empty bridge\n");
    assert_no_nat_network(&host, "lab0");
    assert!(
        link_exists(&host, "br0") && controller_of(&host, "tap0").as_deref() == Some("br0"),
        "gc touched a network in use"
    );
    assert!(link_exists(&host, "lan0"), "gc touched a bridge kvm-net did not make");
    assert!(has_chain(&host, "FWD", "br0"), "gc removed the rules of a network in use");
    assert_eq!(String::from_utf8_lossy(&kvm_net(&host, &config, &["gc"]).stdout), "nothing to remove\n");
}

#[test]
fn up_keeps_a_network_until_down() {
    let config = ConfigFile::new(CONFIG);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    let out = kvm_net(&host, &config, &["up", "lab"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(link_exists(&host, "lab0"));
    add_tap(&host, "lab-1");
    ok_with(&host, "kvm-natup", "lab-1", &env);
    ok_with(&host, "kvm-natdown", "lab-1", &env);
    assert!(link_exists(&host, "lab0"), "the last VM's downscript removed a network kvm-net up keeps");
    assert_eq!(String::from_utf8_lossy(&kvm_net(&host, &config, &["gc"]).stdout), "nothing to remove\n");
    ok_with(&host, "kvm-natup", "lab-1", &env);
    let refused = kvm_net(&host, &config, &["down", "lab"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("network lab still has ports (lab-1)"));
    assert!(link_exists(&host, "lab0"));
    let forced = kvm_net(&host, &config, &["down", "lab", "--force"]);
    assert!(forced.status.success());
    assert_no_nat_network(&host, "lab0");
    let bridged = kvm_net(&host, &config, &["up", "lan"]);
    assert!(String::from_utf8_lossy(&bridged.stderr).contains("network lan is bridged"));
}

#[test]
fn status_shows_each_port_and_the_qemu_holding_it() {
    let config = ConfigFile::new(CONFIG);
    let lab = Lab::new();
    let spec = VmSpec::new("g1", "vmtap1", 1).order("stay", 600).env("KVM_NET_CONFIG", config.path());
    let vm = Vm::start(&lab.host, &spec);
    vm.expect_ready(Duration::from_secs(120));
    let out = kvm_net(&lab.host, &config, &["status", "--json"]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(json.contains("\"version\": 2"), "{json}");
    assert!(json.contains(&format!("\"firewall\": \"{}\"", backend().as_str())), "{json}");
    assert!(json.contains("\"name\": \"vmtap1\"") && json.contains("\"process\": \"qemu-system-x86\""), "{json}");
    assert!(json.contains("\"addresses\": [\n        \"192.168.100.1/24\""), "{json}");
    let table = String::from_utf8_lossy(&kvm_net(&lab.host, &config, &["status"]).stdout).into_owned();
    let row = table.lines().find(|l| l.starts_with("default ")).expect("a row for default");
    assert!(row.contains("vmtap1 (qemu-system-x86 ") && row.contains(" ok ") && row.contains("dnsmasq "), "{table}");
    vm.signal(nix::sys::signal::Signal::SIGTERM);
    vm.wait(Duration::from_secs(60));
    assert_no_nat_network(&lab.host, "br0");
}

/// `kvm-net status` run by a user other than root: the network, its ports,
/// addresses, dnsmasq and leases, with the firewall's part (which answers
/// only root) marked as such rather than failing; root sees it all.
#[test]
fn status_for_a_user_other_than_root_shows_what_it_can_and_marks_the_rest() {
    use kvm_net_tests::helper;
    use kvm_net_tests::sandbox::{Sandbox, User};
    let sandbox = Sandbox::new();
    let ns = Netns::new();
    sandbox.config(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nguest_spoofing = \"deny\"\n",
    );
    add_tap(&ns, "tap0");
    let up = sandbox.run(&ns, None, &helper("kvm-natup"), &["tap0"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let alice = User::alice();
    for json in [false, true] {
        let args: &[&str] = if json { &["status", "--json"] } else { &["status"] };
        let out = sandbox.run(&ns, Some(&alice), &helper("kvm-net"), args);
        let (text, errors) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "status as alice failed: {errors}");
        assert!(text.contains("br0") && text.contains("tap0"), "{text}");
        if json {
            let status: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let network = &status["networks"][0];
            assert_eq!(network["state"], "up");
            assert_eq!(network["needs_root"], serde_json::json!(["rules", "guest filter"]), "{text}");
            assert!(network["dnsmasq"]["pid"].is_number(), "{text}");
        } else {
            assert!(text.contains("(needs root)") && text.contains("run kvm-net status as root"), "{text}");
        }
    }
    let root = sandbox.run(&ns, None, &helper("kvm-net"), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&root.stdout).expect("JSON");
    assert_eq!(status["networks"][0]["needs_root"], serde_json::json!([]));
    assert!(status["networks"][0]["rules"].as_array().is_some_and(|r| !r.is_empty()));
}

#[test]
fn check_warns_of_a_forward_to_an_unreserved_guest_on_a_shared_network() {
    let shared = |users: &str| {
        format!(
            r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"
allow_users = [{users}]
guest_spoofing = "deny"
[network.default.dhcp]
hosts = [
  {{ mac = "52:54:00:00:00:10", ip = "192.168.100.10", name = "web1" }},
  {{ mac = "52:54:00:00:00:20", ip = "192.168.100.20", name = "db", tap = "db-*" }},
]
[[network.default.forwards]]
host_port = 8080
guest = "web1"
guest_port = 80
[[network.default.forwards]]
host_port = 5432
guest = "db"
"#
        )
    };
    let host = Netns::new();
    let config = ConfigFile::new(&shared("\"kvmnet-alice\", \"kvmnet-bob\""));
    let out = run(&host, "kvm-net", &["check"], &[("KVM_NET_CONFIG", config.path())]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("warning [forward-unreserved]: forward tcp 8080 of network default goes to web1"), "{text}");
    assert!(text.contains("add tap = \"PATTERN\" to the dhcp.hosts entry of web1"), "{text}");
    assert!(!text.contains("forward tcp 5432 of network default goes to db"), "db is reserved: {text}");
    // One user only: nobody else's guest could take web1's place.
    let single = ConfigFile::new(&shared("\"kvmnet-alice\""));
    let out = run(&host, "kvm-net", &["check"], &[("KVM_NET_CONFIG", single.path())]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("forward-unreserved"), "{text}");
}
