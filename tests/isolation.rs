//! What docs/modes.md promises about traffic between networks, whatever
//! order they started in: nothing is forwarded into or out of an isolated
//! network, and nothing opens a new connection into a NAT guest; routed
//! guests stay reachable. Guests are namespaces on veth pairs, the upstream
//! host routes every guest subnet back to this host (as a hostile LAN could).

use std::net::Ipv4Addr;
use std::time::Duration;

use kvm_net_tests::lab::{connect_from, connect_within, Lab, UpstreamServer, HOST_UPLINK, UPSTREAM};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const NETWORKS: &str = r#"
[network.nat]
mode = "nat"
bridge = "natbr"
ipv4 = "192.168.100.1/24"
dhcp = { enabled = false }
taps = ["nat-*"]

[network.iso]
mode = "isolated"
bridge = "isobr"
ipv4 = "10.88.0.1/24"
dhcp = { enabled = false }
taps = ["iso-*"]

[network.rt]
mode = "routed"
bridge = "rtbr"
ipv4 = "10.77.0.1/24"
dhcp = { enabled = false }
taps = ["rt-*"]
"#;

const NAT_GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
const ISO_GUEST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const RT_GUEST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);

/// Long enough for any answer between namespaces; a dropped SYN never gets one.
const BLOCKED: Duration = Duration::from_secs(1);

struct Guest {
    ns: Netns,
    server: UpstreamServer,
}

fn guest(lab: &Lab, tap: &str, ip: Ipv4Addr, gateway: &str) -> Guest {
    let ns = lab.guest(tap, &format!("{ip}/24"), Some(gateway));
    let server = UpstreamServer::start(&ns, ip);
    Guest { ns, server }
}

#[track_caller]
fn assert_blocked(from: &Netns, to: Ipv4Addr, server: &UpstreamServer, what: &str) {
    let result = connect_within(from, to, server, what, BLOCKED);
    assert!(result.is_err(), "{what}: connected ({result:?})");
}

/// Brings the three networks up in `order` (tap prefixes), then tries every
/// way in and out.
fn three_networks_started_in(order: [&str; 3]) {
    let config = ConfigFile::new(NETWORKS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    for subnet in ["192.168.100.0/24", "10.88.0.0/24", "10.77.0.0/24"] {
        lab.upstream.ok(&["ip", "route", "add", subnet, "via", &HOST_UPLINK.to_string()]);
    }
    let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let nat = guest(&lab, "nat-g", NAT_GUEST, "192.168.100.1");
    let iso = guest(&lab, "iso-g", ISO_GUEST, "10.88.0.1");
    let rt = guest(&lab, "rt-g", RT_GUEST, "10.77.0.1");
    for prefix in order {
        ok_with(&lab.host, "kvm-natup", &format!("{prefix}-g"), &env);
    }
    // What must work: NAT and routed guests out, routed guests in.
    assert_eq!(connect_from(&nat.ns, UPSTREAM, &upstream, "nat-out").expect("nat out"), format!("seen {HOST_UPLINK}"));
    assert_eq!(connect_from(&rt.ns, UPSTREAM, &upstream, "rt-out").expect("routed out"), format!("seen {RT_GUEST}"));
    assert_eq!(
        connect_from(&lab.upstream, RT_GUEST, &rt.server, "rt-in").expect("routed in"),
        format!("seen {UPSTREAM}")
    );
    // The isolated network, both ways, with every neighbour.
    assert_blocked(&nat.ns, ISO_GUEST, &iso.server, "nat guest to isolated guest");
    assert_blocked(&iso.ns, NAT_GUEST, &nat.server, "isolated guest to nat guest");
    assert_blocked(&rt.ns, ISO_GUEST, &iso.server, "routed guest to isolated guest");
    assert_blocked(&iso.ns, RT_GUEST, &rt.server, "isolated guest to routed guest");
    assert_blocked(&iso.ns, UPSTREAM, &upstream, "isolated guest to upstream");
    assert_blocked(&lab.upstream, ISO_GUEST, &iso.server, "upstream to isolated guest");
    // New connections into the NAT guest, from outside and from another network.
    assert_blocked(&lab.upstream, NAT_GUEST, &nat.server, "upstream to nat guest");
    assert_blocked(&rt.ns, NAT_GUEST, &nat.server, "routed guest to nat guest");
    // Guests of the isolated network still reach its host address.
    let host_server = UpstreamServer::start(&lab.host, Ipv4Addr::new(10, 88, 0, 1));
    assert!(connect_from(&iso.ns, Ipv4Addr::new(10, 88, 0, 1), &host_server, "iso-host").is_ok());
    // And `kvm-net check` agrees that every network is as it should be.
    let out = run(&lab.host, "kvm-net", &["check"], &env);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("network iso") && !said.contains("rules-missing"), "{said}");
    for prefix in order {
        ok_with(&lab.host, "kvm-natdown", &format!("{prefix}-g"), &env);
    }
}

#[test]
fn isolation_and_closed_nat_hold_with_the_isolated_network_first() {
    three_networks_started_in(["iso", "nat", "rt"]);
}

#[test]
fn isolation_and_closed_nat_hold_with_the_isolated_network_last() {
    three_networks_started_in(["rt", "nat", "iso"]);
}

#[test]
fn isolation_and_closed_nat_hold_with_the_nat_network_last() {
    three_networks_started_in(["iso", "rt", "nat"]);
}
