//! What docs/modes.md promises about traffic between networks, whatever
//! order they started in, in IPv4 and IPv6: nothing is forwarded into or
//! out of an isolated network, and nothing opens a new connection into a
//! NAT guest; routed guests stay reachable. Guests are namespaces on veth
//! pairs, the upstream host routes every guest subnet back to this host (as
//! a hostile LAN could).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use kvm_net_tests::lab::{
    connect_from, connect_to, connect_within, Lab, UpstreamServer, HOST_UPLINK, HOST_UPLINK6, UPSTREAM, UPSTREAM6,
};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const NETWORKS: &str = r#"
[network.nat]
mode = "nat"
bridge = "natbr"
ipv4 = "192.168.100.1/24"
ipv6 = "fd00:100::1/64"
ipv6_autoconfig = "off"
dhcp = { enabled = false }
taps = ["nat-*"]

[network.iso]
mode = "isolated"
bridge = "isobr"
ipv4 = "10.88.0.1/24"
ipv6 = "fd00:88::1/64"
ipv6_autoconfig = "off"
dhcp = { enabled = false }
taps = ["iso-*"]

[network.rt]
mode = "routed"
bridge = "rtbr"
ipv4 = "10.77.0.1/24"
ipv6 = "fd00:77::1/64"
ipv6_autoconfig = "off"
dhcp = { enabled = false }
taps = ["rt-*"]
"#;

const NAT_GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
const ISO_GUEST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 10);
const RT_GUEST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
const NAT_GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 0x10);
const ISO_GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 0x10);
const RT_GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 0x10);

/// Long enough for any answer between namespaces; a dropped SYN never gets one.
const BLOCKED: Duration = Duration::from_secs(1);

struct Guest {
    ns: Netns,
    server: UpstreamServer,
    /// The same service on the guest's IPv6 address, where it has one.
    server6: Option<UpstreamServer>,
}

fn guest(lab: &Lab, tap: &str, ip: Ipv4Addr, gateway: &str) -> Guest {
    let ns = lab.guest(tap, &format!("{ip}/24"), Some(gateway));
    let server = UpstreamServer::start(&ns, ip);
    Guest { ns, server, server6: None }
}

/// A guest with an IPv6 address too (set by hand: the networks advertise
/// none), and its gateway's.
fn dual_guest(lab: &Lab, tap: &str, ip: Ipv4Addr, gateway: &str, ip6: Ipv6Addr) -> Guest {
    let mut guest = guest(lab, tap, ip, gateway);
    let gateway6 = Ipv6Addr::from(u128::from(ip6) & !0xffff | 1);
    guest.ns.sh(&format!("ip -6 addr add {ip6}/64 dev eth0 nodad; ip -6 route add default via {gateway6}"));
    guest.server6 = Some(UpstreamServer::start(&guest.ns, ip6));
    guest
}

impl Guest {
    fn server6(&self) -> &UpstreamServer {
        self.server6.as_ref().expect("an IPv6 service")
    }
}

#[track_caller]
fn assert_blocked(from: &Netns, to: impl Into<IpAddr>, server: &UpstreamServer, what: &str) {
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
    for subnet in ["fd00:100::/64", "fd00:88::/64", "fd00:77::/64"] {
        lab.upstream.ok(&["ip", "-6", "route", "add", subnet, "via", &HOST_UPLINK6.to_string()]);
    }
    let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let upstream6 = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let nat = dual_guest(&lab, "nat-g", NAT_GUEST, "192.168.100.1", NAT_GUEST6);
    let iso = dual_guest(&lab, "iso-g", ISO_GUEST, "10.88.0.1", ISO_GUEST6);
    let rt = dual_guest(&lab, "rt-g", RT_GUEST, "10.77.0.1", RT_GUEST6);
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
    // The same in IPv6.
    assert_eq!(
        connect_from(&nat.ns, UPSTREAM6, &upstream6, "nat-out6").expect("nat66 out"),
        format!("seen {HOST_UPLINK6}")
    );
    assert_eq!(
        connect_from(&rt.ns, UPSTREAM6, &upstream6, "rt-out6").expect("routed out"),
        format!("seen {RT_GUEST6}")
    );
    assert_eq!(
        connect_from(&lab.upstream, RT_GUEST6, rt.server6(), "rt-in6").expect("routed in"),
        format!("seen {UPSTREAM6}")
    );
    assert_blocked(&nat.ns, ISO_GUEST6, iso.server6(), "nat guest to isolated guest (IPv6)");
    assert_blocked(&iso.ns, NAT_GUEST6, nat.server6(), "isolated guest to nat guest (IPv6)");
    assert_blocked(&rt.ns, ISO_GUEST6, iso.server6(), "routed guest to isolated guest (IPv6)");
    assert_blocked(&iso.ns, RT_GUEST6, rt.server6(), "isolated guest to routed guest (IPv6)");
    assert_blocked(&iso.ns, UPSTREAM6, &upstream6, "isolated guest to upstream (IPv6)");
    assert_blocked(&lab.upstream, ISO_GUEST6, iso.server6(), "upstream to isolated guest (IPv6)");
    assert_blocked(&lab.upstream, NAT_GUEST6, nat.server6(), "upstream to nat guest (IPv6)");
    assert_blocked(&rt.ns, NAT_GUEST6, nat.server6(), "routed guest to nat guest (IPv6)");
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

const ISOLATED_GUESTS: &str = r#"
[network.nat]
mode = "nat"
bridge = "natbr"
ipv4 = "192.168.100.1/24"
isolate_guests = true
taps = ["nat-*"]
[network.nat.dhcp]
hosts = [{ mac = "52:54:00:00:00:10", ip = "192.168.100.10", name = "web1" }]
[[network.nat.forwards]]
host_port = 2222
guest = "web1"
guest_port = 22

[network.iso]
mode = "isolated"
bridge = "isobr"
ipv4 = "10.88.0.1/24"
isolate_guests = true
dhcp = { enabled = false }
taps = ["iso-*"]

[network.open]
mode = "nat"
bridge = "openbr"
ipv4 = "192.168.50.1/24"
dhcp = { enabled = false }
taps = ["open-*"]
"#;

/// Whether `bridge -d link` shows the port isolated.
fn port_isolated(ns: &Netns, port: &str) -> bool {
    ns.ok(&["bridge", "-d", "link", "show", "dev", port]).contains("isolated on")
}

/// isolate_guests, with bridged frames through the firewall (`on`) or not.
fn isolated_guests_with_bridge_netfilter(on: bool) {
    let config = ConfigFile::new(ISOLATED_GUESTS);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    lab.host.sh(&format!("echo {} > /proc/sys/net/bridge/bridge-nf-call-iptables", u8::from(on)));
    let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let a = lab.guest("nat-a", "192.168.100.10/24", Some("192.168.100.1"));
    let b = lab.guest("nat-b", "0.0.0.0/32", None);
    let a_ssh = UpstreamServer::start_on(&a, Ipv4Addr::new(192, 168, 100, 10), 22);
    let iso1 = guest(&lab, "iso-1", Ipv4Addr::new(10, 88, 0, 11), "10.88.0.1");
    let iso2 = guest(&lab, "iso-2", Ipv4Addr::new(10, 88, 0, 12), "10.88.0.1");
    let open1 = guest(&lab, "open-1", Ipv4Addr::new(192, 168, 50, 11), "192.168.50.1");
    let open2 = guest(&lab, "open-2", Ipv4Addr::new(192, 168, 50, 12), "192.168.50.1");
    for tap in ["nat-a", "nat-b", "iso-1", "iso-2", "open-1", "open-2"] {
        ok_with(&lab.host, "kvm-natup", tap, &env);
    }
    for tap in ["nat-a", "nat-b", "iso-1", "iso-2"] {
        assert!(port_isolated(&lab.host, tap), "{tap} is not an isolated port");
    }
    assert!(!port_isolated(&lab.host, "open-1"), "isolation is off by default");
    // What still works: a lease, the gateway, DNS's port, the way out, the forward from outside.
    let leased = kvm_net_tests::lab::lease(&b).expect("an isolated guest still gets a lease");
    b.sh(&format!("ip addr flush dev eth0; ip addr add {leased}/24 dev eth0; ip route add default via 192.168.100.1"));
    let b_server = UpstreamServer::start(&b, leased.parse::<Ipv4Addr>().expect("an IPv4 lease"));
    let gateway_server = UpstreamServer::start(&lab.host, Ipv4Addr::new(192, 168, 100, 1));
    for (guest, name) in [(&a, "a"), (&b, "b")] {
        assert!(
            connect_from(guest, Ipv4Addr::new(192, 168, 100, 1), &gateway_server, name).is_ok(),
            "{name} to the gateway"
        );
        assert_eq!(
            connect_from(guest, UPSTREAM, &upstream, name).ok(),
            Some(format!("seen {HOST_UPLINK}")),
            "{name} out"
        );
    }
    let from_upstream = connect_to(&lab.upstream, HOST_UPLINK, 2222, "in", BLOCKED);
    assert_eq!(from_upstream.ok(), Some(format!("seen {UPSTREAM}")), "the forward from outside");
    // What must not: guest to guest, both ways, also routed through the gateway.
    assert_blocked(&a, leased.parse::<Ipv4Addr>().expect("IPv4"), &b_server, "a to b");
    assert_blocked(&b, Ipv4Addr::new(192, 168, 100, 10), &a_ssh, "b to a");
    a.sh(&format!("ip route add {leased}/32 via 192.168.100.1"));
    assert_blocked(&a, leased.parse::<Ipv4Addr>().expect("IPv4"), &b_server, "a to b through the gateway");
    assert_blocked(&iso1.ns, Ipv4Addr::new(10, 88, 0, 12), &iso2.server, "isolated network, guest to guest");
    let iso_host = UpstreamServer::start(&lab.host, Ipv4Addr::new(10, 88, 0, 1));
    assert!(connect_from(&iso1.ns, Ipv4Addr::new(10, 88, 0, 1), &iso_host, "iso-host").is_ok());
    // Without isolate_guests, guests see each other as before.
    assert!(connect_from(&open1.ns, Ipv4Addr::new(192, 168, 50, 12), &open2.server, "open").is_ok());
    // b reaches a's forwarded port through the host's address only where bridged frames skip the
    // firewall: with br_netfilter on, the kernel bridges that connection port to port, and
    // isolation stops it (docs/modes.md).
    let hairpin = connect_to(&b, HOST_UPLINK, 2222, "hairpin", BLOCKED);
    assert_eq!(hairpin.is_ok(), !on, "hairpin with bridge-nf-call-iptables={on}: {hairpin:?}");
    for tap in ["nat-a", "nat-b", "iso-1", "iso-2", "open-1", "open-2"] {
        ok_with(&lab.host, "kvm-natdown", tap, &env);
    }
}

#[test]
fn isolated_guests_reach_the_gateway_and_the_outside_but_not_each_other() {
    isolated_guests_with_bridge_netfilter(false);
}

#[test]
fn isolated_guests_stay_apart_where_bridged_frames_pass_the_firewall() {
    isolated_guests_with_bridge_netfilter(true);
}
