//! Networks up at boot (`autostart = true`): `kvm-net up --autostart` and
//! `kvm-net down --autostart` as kvm-net.service runs them, run twice,
//! with one network failing, with VMs still on a network; an autostart
//! network staying up after its last VM; `kvm-net status`; the unit file
//! itself, verified by systemd against the binary it runs; and the config
//! fields refused with nothing changed.

use std::process::Output;

use kvm_net_tests::inspect::{assert_no_nat_network, link_exists, nft_ruleset};
use kvm_net_tests::run::{add_tap, assert_refusal, ok_with, run, ConfigFile};
use kvm_net_tests::{helper, Netns};

const CONFIG: &str = r#"
[network.lab]
mode = "nat"
bridge = "labbr0"
ipv4 = "10.88.0.1/24"
autostart = true
forwards = [{ proto = "tcp", host_port = 8022, guest = "10.88.0.10", guest_port = 22 }]

[network.lab.dhcp]
domain = "vm.internal"
hosts = [{ mac = "52:54:00:00:00:10", ip = "10.88.0.10", name = "web1" }]

[network.quiet]
mode = "isolated"
bridge = "quiet0"
ipv4 = "10.89.0.1/24"
autostart = true
dhcp = { enabled = false }
taps = ["q-*"]

[network.ondemand]
mode = "nat"
bridge = "od0"
ipv4 = "10.90.0.1/24"
taps = ["od-*"]
"#;

fn kvm_net(ns: &Netns, config: &ConfigFile, args: &[&str]) -> Output {
    run(ns, "kvm-net", args, &[("KVM_NET_CONFIG", config.path())])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The dnsmasq serving `bridge` in `ns`, if one runs.
fn dnsmasq_pid(ns: &Netns, bridge: &str) -> Option<String> {
    let dir = ns.kvm_net_dir().join(format!("dnsmasq/{}-{bridge}", ns.id()));
    std::fs::read_to_string(dir.join("dnsmasq.pid")).ok().map(|pid| pid.trim().to_owned())
}

#[test]
fn up_autostart_brings_up_every_autostart_network_once() {
    let config = ConfigFile::new(CONFIG);
    let host = Netns::new();
    let check = text(&kvm_net(&host, &config, &["check"]).stdout);
    assert!(check.contains("warning [autostart-down]: network lab has autostart = true and is down"), "{check}");
    assert!(!check.contains("network ondemand has autostart"), "{check}");
    let out = kvm_net(&host, &config, &["up", "--autostart"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let check = text(&kvm_net(&host, &config, &["check"]).stdout);
    assert!(!check.contains("autostart-down"), "{check}");
    assert_eq!(text(&out.stdout), "network lab is up on labbr0\nnetwork quiet is up on quiet0\n");
    assert!(link_exists(&host, "labbr0") && link_exists(&host, "quiet0"));
    assert!(!link_exists(&host, "od0"), "a network without autostart came up");
    assert!(host.ok(&["ip", "-o", "addr", "show", "dev", "labbr0"]).contains("10.88.0.1/24"));
    let ruleset = nft_ruleset(&host) + &host.ok(&["iptables-save"]);
    assert!(ruleset.contains("8022"), "the forward is missing:\n{ruleset}");
    let pid = dnsmasq_pid(&host, "labbr0").expect("the network's dnsmasq");
    assert!(dnsmasq_pid(&host, "quiet0").is_none(), "a network without DHCP got a dnsmasq");
    // Twice: nothing changes, not even the dnsmasq.
    let before = host.snapshot();
    let again = kvm_net(&host, &config, &["up", "--autostart"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), text(&out.stdout));
    assert_eq!(host.snapshot(), before, "a second kvm-net up --autostart changed something");
    assert_eq!(dnsmasq_pid(&host, "labbr0"), Some(pid));
    // status says which networks autostart, and their domain.
    let status = text(&kvm_net(&host, &config, &["status", "--json"]).stdout);
    let json: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let networks = json["networks"].as_array().expect("networks");
    let of = |name: &str| networks.iter().find(|n| n["name"] == name).expect("a network").clone();
    assert_eq!((of("lab")["autostart"].as_bool(), of("lab")["domain"].as_str()), (Some(true), Some("vm.internal")));
    assert_eq!((of("ondemand")["autostart"].as_bool(), of("ondemand")["domain"].is_null()), (Some(false), true));
    let table = text(&kvm_net(&host, &config, &["status"]).stdout);
    assert!(table.contains("domain of lab: vm.internal\n") && table.contains("lab starts at boot (autostart)\n"));
    assert!(!table.contains("ondemand starts at boot"), "{table}");
}

#[test]
fn an_autostart_network_stays_up_after_its_last_vm_whoever_brought_it_up() {
    let config = ConfigFile::new(CONFIG);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    // Brought up by a VM's start, not by kvm-net up.
    add_tap(&host, "q-1");
    ok_with(&host, "kvm-natup", "q-1", &env);
    ok_with(&host, "kvm-natdown", "q-1", &env);
    assert!(link_exists(&host, "quiet0"), "the last VM's stop removed an autostart network");
    assert_eq!(text(&kvm_net(&host, &config, &["gc"]).stdout), "nothing to remove\n");
    // A network without autostart still goes with its last VM.
    add_tap(&host, "od-1");
    ok_with(&host, "kvm-natup", "od-1", &env);
    ok_with(&host, "kvm-natdown", "od-1", &env);
    assert_no_nat_network(&host, "od0");
    let down = kvm_net(&host, &config, &["down", "--autostart"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(text(&down.stdout), "network lab is down\nnetwork quiet is down\n");
    assert_no_nat_network(&host, "quiet0");
}

#[test]
fn one_network_failing_stops_neither_the_others_nor_leaves_anything_of_itself() {
    let config = ConfigFile::new(&CONFIG.replace("bridge = \"quiet0\"", "bridge = \"taken0\""));
    let host = Netns::new();
    // Its bridge's name is a veth's: kvm-net must not touch it.
    host.ok(&["ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"]);
    let veth_before = host.ok(&["ip", "-d", "-o", "link", "show", "taken0"]);
    let mut config_text = std::fs::read_to_string(config.path()).expect("config");
    config_text.push_str(
        "\n[network.later]\nmode = \"routed\"\nbridge = \"later0\"\nipv4 = \"10.91.0.1/24\"\nautostart = true\n",
    );
    let config = ConfigFile::new(&config_text);
    let out = kvm_net(&host, &config, &["up", "--autostart"]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(text(&out.stdout), "network lab is up on labbr0\nnetwork later is up on later0\n");
    assert!(said.starts_with("kvm-net: network quiet: ") && said.contains("taken0"), "{said}");
    assert_eq!(said.lines().count(), 1, "one line per network: {said}");
    assert!(link_exists(&host, "labbr0") && link_exists(&host, "later0"));
    assert_eq!(host.ok(&["ip", "-d", "-o", "link", "show", "taken0"]), veth_before, "the veth was changed");
    assert!(!host.ok(&["ip", "-o", "addr", "show", "dev", "taken0"]).contains("10.89.0.1"));
    let rules = nft_ruleset(&host) + &host.ok(&["iptables-save"]);
    assert!(!rules.contains("taken0") && !rules.contains("10.89.0."), "rules of the failed network:\n{rules}");
    // Fixed, the next run brings it up and leaves the others as they are.
    host.ok(&["ip", "link", "del", "taken0"]);
    let before = dnsmasq_pid(&host, "labbr0");
    let fixed = kvm_net(&host, &config, &["up", "--autostart"]);
    assert!(fixed.status.success(), "{}", text(&fixed.stderr));
    assert!(link_exists(&host, "taken0"));
    assert_eq!(dnsmasq_pid(&host, "labbr0"), before);
}

#[test]
fn down_autostart_leaves_networks_with_vms_up_and_says_so() {
    let config = ConfigFile::new(CONFIG);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    assert!(kvm_net(&host, &config, &["up", "--autostart"]).status.success());
    add_tap(&host, "q-1");
    ok_with(&host, "kvm-natup", "q-1", &env);
    let out = kvm_net(&host, &config, &["down", "--autostart"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "network lab is down\nnetwork quiet stays up: VMs still use it (q-1)\n");
    assert_no_nat_network(&host, "labbr0");
    assert!(dnsmasq_pid(&host, "labbr0").is_none(), "the network's dnsmasq outlived it");
    assert!(link_exists(&host, "quiet0"));
    assert!(host.ok(&["ip", "-o", "link", "show", "q-1"]).contains("master quiet0"));
    // Its VM gone, the network still stays (it autostarts) until the next down.
    ok_with(&host, "kvm-natdown", "q-1", &env);
    assert!(link_exists(&host, "quiet0"));
    let again = kvm_net(&host, &config, &["down", "--autostart"]);
    assert_eq!(text(&again.stdout), "network lab is down\nnetwork quiet is down\n");
    assert_no_nat_network(&host, "quiet0");
}

#[test]
fn the_unit_file_runs_the_binary_it_names_and_systemd_accepts_it() {
    let unit_in = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/kvm-net.service.in"))
        .expect("packaging/kvm-net.service.in");
    let binary = helper("kvm-net").canonicalize().expect("kvm-net");
    let bin_dir = binary.parent().expect("a directory").to_str().expect("UTF-8");
    let unit = unit_in.replace("@BINDIR@", bin_dir);
    for line in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        &format!("ExecStart={bin_dir}/kvm-net up --autostart"),
        &format!("ExecStop={bin_dir}/kvm-net down --autostart"),
        "After=network-online.target nftables.service firewalld.service",
        "Wants=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from:\n{unit}");
    }
    let dir = ConfigFile::scratch_dir().join(format!("unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the unit");
    let path = dir.join("kvm-net.service");
    std::fs::write(&path, &unit).expect("the unit");
    // The manual pages are not installed here: make package-test verifies them too.
    let verify = |path: &std::path::Path| {
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(path)
            .output()
            .expect("systemd-analyze (Debian: apt-get install systemd)")
    };
    let out = verify(&path);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", text(&out.stderr));
    // And it would say so if the binary were not there.
    std::fs::write(&path, unit.replace(bin_dir, "/nonexistent")).expect("the unit");
    assert!(!verify(&path).status.success(), "systemd-analyze verify accepts a missing binary");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_autostart_domain_and_resolver_fields_are_refused_with_nothing_changed() {
    let host = Netns::new();
    add_tap(&host, "od-1");
    let cases = [
        ("[network.lan]\nmode = \"bridged\"\nbridge = \"lan0\"\nautostart = true\n", "network lan: field autostart"),
        ("[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\ndhcp = { domain = \"vm..internal\" }\n", "field dhcp.domain"),
        ("[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\ndhcp = { domain = \"-vm.internal\" }\n", "field dhcp.domain"),
        ("[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\ndhcp = { domain = \"vm_lab\" }\n", "field dhcp.domain"),
        ("[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\ndhcp = { domain = \"vm.internal.\" }\n", "field dhcp.domain"),
        (
            "[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\ndhcp = { upstream_dns = [\"10.0.0.999\"] }\n",
            "field dhcp.upstream_dns",
        ),
        (
            "[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\ndhcp = { upstream_dns = [\"dns.example\"] }\n",
            "field dhcp.upstream_dns",
        ),
        ("[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\nautostart = \"yes\"\n", "autostart"),
    ];
    // Resolvers that parse but cannot serve: none at all, the network's own
    // address (dnsmasq would ask itself), nowhere, a group, one twice.
    let resolvers = [
        ("[]", "at least one resolver"),
        ("[\"10.90.0.1\"]", "own address"),
        ("[\"fd00:90::1\"]", "own address"),
        ("[\"0.0.0.0\"]", "cannot be a resolver"),
        ("[\"::\"]", "cannot be a resolver"),
        ("[\"224.0.0.251\"]", "cannot be a resolver"),
        ("[\"255.255.255.255\"]", "cannot be a resolver"),
        ("[\"10.0.0.53\", \"10.0.0.53\"]", "given twice"),
    ]
    .map(|(list, says)| {
        let text = format!(
            "[network.lab]\nmode = \"nat\"\nbridge = \"od0\"\nipv4 = \"10.90.0.1/24\"\nipv6 = \"fd00:90::1/64\"\ndhcp = {{ upstream_dns = {list} }}\n"
        );
        (text, says)
    });
    let cases = cases.iter().map(|(text, says)| (text.to_string(), *says)).chain(resolvers);
    for (text_of, says) in cases {
        let text_of = text_of.as_str();
        let config = ConfigFile::new(text_of);
        let before = host.snapshot();
        for args in [&["up", "--autostart"][..], &["status"]] {
            let out = kvm_net(&host, &config, args);
            let stderr = assert_refusal(&out, 1, &format!("kvm-net {args:?} with {text_of}"), says);
            assert!(stderr.contains(config.path()), "the file is not named: {stderr}");
        }
        let out = run(&host, "kvm-natup", &["od-1"], &[("KVM_NET_CONFIG", config.path())]);
        assert_refusal(&out, 1, &format!("kvm-natup with {text_of}"), says);
        assert_eq!(host.snapshot(), before, "{text_of} changed something");
    }
}
