//! `guest_spoofing = "deny"` over IPv6, against a hostile guest a and a
//! victim b that configure themselves (SLAAC), with bridged frames through
//! the firewall (`bridge-nf-call-ip6tables=1`) and without: a's frames
//! from b's global and link-local addresses, from outside the prefix,
//! from the gateway's address, neighbour advertisements for b's address
//! and the gateway's, a DHCPv6 range address it holds no lease of, and a
//! `dhcp.hosts` address not its own, neighbour discovery that gives b's MAC
//! for a's own address. And what must keep working: both
//! guests' own addresses (privacy addresses too), `kvm-net status`'s view
//! of them, and a guest that comes back on another tap.

use std::net::Ipv6Addr;
use std::time::Duration;

use kvm_net_tests::frames::{
    echo6, ethernet, link_layer_option, mac, mac_of, neighbour, neighbour_advertisement, neighbour_advertisement_with,
    neighbour_solicitation, router_advertisement, send, tcp_syn6,
};
use kvm_net_tests::lab::{
    autoconfigured, connect_from, dhcpv6_lease, global6, Lab, UpstreamServer, HOST_UPLINK6, UPSTREAM6,
};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const A_MAC: &str = "52:54:00:00:60:0a";
const B_MAC: &str = "52:54:00:00:60:0b";
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 1);
/// A port and an ICMPv6 id only the attacks use: upstream and the host count what arrives.
const SPOOF_PORT: u16 = 4444;
const SPOOF_ICMP_ID: u16 = 4242;

fn config(extra: &str, dhcp: &str) -> String {
    format!(
        "[network.v6]\nmode = \"nat\"\nbridge = \"v6br0\"\ntaps = [\"vm*\"]\nipv4 = \"192.168.60.1/24\"\n\
         ipv6 = \"fd00:60::1/64\"\nguest_spoofing = \"deny\"\n{extra}\n[network.v6.dhcp]\n{dhcp}\n"
    )
}

struct Shared {
    lab: Lab,
    config: ConfigFile,
    a: Netns,
    b: Netns,
    upstream: UpstreamServer,
    /// b's global address.
    b_ip: Ipv6Addr,
}

impl Shared {
    fn new(text: &str, bridge_netfilter: bool) -> Self {
        let lab = Lab::new();
        lab.host.sh(&format!("echo {} > /proc/sys/net/bridge/bridge-nf-call-ip6tables", u8::from(bridge_netfilter)));
        let config = ConfigFile::new(text);
        let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM6);
        // What the attacks try to get through: counted upstream and on the host.
        lab.upstream.sh(&format!(
            "nft add table ip6 watch; nft add chain ip6 watch in '{{ type filter hook input priority 0; }}'; \
             nft add rule ip6 watch in tcp dport {SPOOF_PORT} counter"
        ));
        lab.host.sh(&format!(
            "nft add table ip6 watch; nft add chain ip6 watch in '{{ type filter hook input priority 0; }}'; \
             nft add rule ip6 watch in icmpv6 type echo-request icmpv6 id {SPOOF_ICMP_ID} counter"
        ));
        let a = Self::guest(&lab, &config, "vm-a", A_MAC);
        let b = Self::guest(&lab, &config, "vm-b", B_MAC);
        let b_ip = autoconfigured(&b, true).expect("b's address");
        autoconfigured(&a, true).expect("a's address");
        Self { lab, config, a, b, upstream, b_ip }
    }

    fn guest(lab: &Lab, config: &ConfigFile, tap: &str, mac: &str) -> Netns {
        let guest = lab.autoconf_guest(tap, Some(mac));
        ok_with(&lab.host, "kvm-natup", tap, &[("KVM_NET_CONFIG", config.path())]);
        guest
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("KVM_NET_CONFIG", self.config.path())]
    }

    /// Sends `packet` from a, in a frame from a's own MAC to the gateway's.
    fn send_from_a(&self, packet: &[u8]) {
        let frame = ethernet(mac_of(&self.lab.host, "v6br0"), mac(A_MAC), 0x86dd, packet);
        send(&self.a, "eth0", &frame);
    }

    /// The attacks' packets that arrived upstream and at the host.
    fn spoofed(&self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        [&self.lab.upstream, &self.lab.host]
            .iter()
            .flat_map(|ns| {
                let listing = ns.ok(&["nft", "list", "chain", "ip6", "watch", "in"]);
                listing
                    .split("counter packets ")
                    .skip(1)
                    .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

/// `ns`'s link-local address on `ifname`.
fn link_local(ns: &Netns, ifname: &str) -> Ipv6Addr {
    let line = ns.ok(&["ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "link"]);
    let word = line.split_whitespace().skip_while(|w| *w != "inet6").nth(1).expect("a link-local address");
    word.split('/').next().and_then(|a| a.parse().ok()).expect("an IPv6 address")
}

/// What a hostile guest a got away with.
#[derive(Debug, Default, PartialEq, Eq)]
struct Got {
    /// Packets with another's (or no one's) address that arrived upstream or at the host.
    spoofed: u64,
    /// The host now sends to b through a.
    host_poisoned: bool,
    /// b now sends to the gateway through a.
    victim_poisoned: bool,
}

fn attack(shared: &Shared) -> Got {
    let b_link_local = link_local(&shared.b, "eth0");
    let gateway_link_local = link_local(&shared.lab.host, "v6br0");
    let outside: Ipv6Addr = "2001:db8:bad::1".parse().expect("an address");
    for source in [shared.b_ip, outside, GATEWAY6] {
        shared.send_from_a(&tcp_syn6(source, UPSTREAM6, 40000, SPOOF_PORT));
    }
    for source in [b_link_local, gateway_link_local, shared.b_ip] {
        shared.send_from_a(&echo6(source, gateway_link_local, SPOOF_ICMP_ID));
        shared.send_from_a(&echo6(source, GATEWAY6, SPOOF_ICMP_ID));
    }
    // Neighbour entries to poison: b knows the gateway, the host knows b.
    assert!(shared.b.output(&["ping", "-6", "-c", "1", "-W", "2", &GATEWAY6.to_string()]).status.success());
    assert!(shared.lab.host.output(&["ping", "-6", "-c", "1", "-W", "2", &shared.b_ip.to_string()]).status.success());
    let a_mac = mac(A_MAC);
    let a_link_local = link_local(&shared.a, "eth0");
    for _ in 0..3 {
        for target in [shared.b_ip, GATEWAY6, gateway_link_local] {
            send(&shared.a, "eth0", &neighbour_advertisement(a_mac, a_link_local, target, a_mac));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    Got {
        spoofed: shared.spoofed(),
        host_poisoned: neighbour(&shared.lab.host, shared.b_ip) == Some(a_mac),
        victim_poisoned: neighbour(&shared.b, GATEWAY6) == Some(a_mac)
            || neighbour(&shared.b, gateway_link_local) == Some(a_mac),
    }
}

#[test]
fn a_guest_on_a_network_left_at_allow_can_impersonate_another_over_ipv6() {
    let text = config("", "").replace("guest_spoofing = \"deny\"", "guest_spoofing = \"allow\"");
    let shared = Shared::new(&text, true);
    let got = attack(&shared);
    assert!(got.spoofed > 0 && got.host_poisoned && got.victim_poisoned, "{got:?}");
}

fn denied(bridge_netfilter: bool) {
    let shared = Shared::new(&config("", ""), bridge_netfilter);
    assert_eq!(attack(&shared), Got::default(), "bridge-nf-call-ip6tables={bridge_netfilter}");
    // A rogue router: b takes no address of a's prefix.
    let a_link_local = link_local(&shared.a, "eth0");
    for _ in 0..3 {
        send(&shared.a, "eth0", &router_advertisement(mac(A_MAC), a_link_local, "2001:db8:bad::".parse().expect("p")));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!shared.b.ok(&["ip", "-6", "addr"]).contains("2001:db8:bad:"), "b took a's advertisement");
    // The victim, and the attacker as itself, still work.
    for (guest, name) in [(&shared.b, "b"), (&shared.a, "a")] {
        assert_eq!(
            connect_from(guest, UPSTREAM6, &shared.upstream, name).ok(),
            Some(format!("seen {HOST_UPLINK6}")),
            "{name}, bridge-nf-call-ip6tables={bridge_netfilter}"
        );
    }
}

#[test]
fn deny_stops_ipv6_address_and_neighbour_spoofing_with_bridged_frames_through_the_firewall() {
    denied(true);
}

#[test]
fn deny_stops_ipv6_address_and_neighbour_spoofing_with_bridged_frames_past_the_firewall() {
    denied(false);
}

/// a, from its own address, tells the host that this address is at b's
/// MAC: in an advertisement's target link-layer option, in a
/// solicitation's source link-layer option, and in an advertisement whose
/// first option hides the second. Each time, whether the host took it
/// (and would send a's traffic to b: a flood a aims at b).
fn links_to_b(shared: &Shared) -> Vec<&'static str> {
    let (a_mac, b_mac) = (mac(A_MAC), mac(B_MAC));
    let a_ip = global6(&shared.a).first().copied().expect("a's address");
    let nonce = [14, 1, 1, 2, 3, 4, 5, 6];
    let attacks = [
        ("target option", neighbour_advertisement(a_mac, a_ip, a_ip, b_mac)),
        ("source option", neighbour_solicitation(a_mac, a_ip, GATEWAY6, &link_layer_option(1, b_mac))),
        (
            "second option",
            neighbour_advertisement_with(a_mac, a_ip, a_ip, &[&nonce[..], &link_layer_option(2, b_mac)].concat()),
        ),
    ];
    let mut taken = Vec::new();
    for (what, frame) in attacks {
        // The host knows a at a's MAC first.
        shared.lab.host.sh(&format!("ip -6 neigh del {a_ip} dev v6br0 2>/dev/null || true"));
        assert!(shared.lab.host.output(&["ping", "-6", "-c", "1", "-W", "2", &a_ip.to_string()]).status.success());
        for _ in 0..3 {
            send(&shared.a, "eth0", &frame);
            std::thread::sleep(Duration::from_millis(100));
        }
        if neighbour(&shared.lab.host, a_ip) == Some(b_mac) {
            taken.push(what);
        }
    }
    taken
}

#[test]
fn a_guest_cannot_give_another_guests_mac_for_its_own_address() {
    let allowed = Shared::new(&config("", "").replace("guest_spoofing = \"deny\"", "guest_spoofing = \"allow\""), true);
    assert_eq!(links_to_b(&allowed), ["target option", "source option", "second option"], "without the filter");
    drop(allowed);
    for bridge_netfilter in [true, false] {
        let shared = Shared::new(&config("", ""), bridge_netfilter);
        let under = format!("under deny, bridge-nf-call-ip6tables={bridge_netfilter}");
        assert_eq!(links_to_b(&shared), Vec::<&str>::new(), "{under}");
        // Neighbour discovery as guests do it still works, both ways.
        for (guest, name) in [(&shared.a, "a"), (&shared.b, "b")] {
            assert_eq!(
                connect_from(guest, UPSTREAM6, &shared.upstream, name).ok(),
                Some(format!("seen {HOST_UPLINK6}")),
                "{name}, {under}"
            );
        }
        let b_ip = shared.b_ip.to_string();
        let ping = shared.lab.host.output(&["ping", "-6", "-c", "1", "-W", "2", &b_ip]);
        assert!(ping.status.success(), "the host to b, {under}");
        assert_eq!(neighbour(&shared.lab.host, shared.b_ip), Some(mac(B_MAC)), "{under}");
    }
}

#[test]
fn privacy_addresses_work_status_shows_each_ports_addresses_and_they_go_with_the_tap() {
    let shared = Shared::new(&config("", ""), true);
    // b takes a temporary (privacy) address, and uses it first.
    shared.b.sh("echo 2 > /proc/sys/net/ipv6/conf/eth0/use_tempaddr; ip link set eth0 down; ip link set eth0 up");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let temporary = loop {
        let listing = shared.b.ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0", "temporary", "-tentative"]);
        if let Some(word) = listing.split_whitespace().skip_while(|w| *w != "inet6").nth(1) {
            break word.split('/').next().and_then(|a| a.parse::<Ipv6Addr>().ok()).expect("an address");
        }
        assert!(std::time::Instant::now() < deadline, "no temporary address");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        connect_from(&shared.b, UPSTREAM6, &shared.upstream, "temporary").ok(),
        Some(format!("seen {HOST_UPLINK6}")),
        "b from its temporary address {temporary}"
    );
    let status =
        String::from_utf8_lossy(&run(&shared.lab.host, "kvm-net", &["status", "--json"], &shared.env()).stdout)
            .into_owned();
    let json: serde_json::Value = serde_json::from_str(&status).expect("status as JSON");
    let port_b = json["networks"][0]["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "vm-b"))
        .expect("vm-b in status")
        .clone();
    let bound: Vec<String> = port_b["bound_ipv6"]
        .as_array()
        .expect("bound_ipv6")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for address in [temporary.to_string(), link_local(&shared.b, "eth0").to_string()] {
        assert!(bound.contains(&address), "{address} missing from {bound:?}");
    }
    // b's VM stops; it comes back on another tap, with its MAC and so its
    // addresses: they went with vm-b, and are its again.
    let stable = shared.b_ip;
    ok_with(&shared.lab.host, "kvm-natdown", "vm-b", &shared.env());
    // Gone at once (a namespace dropped goes in the background, and would answer c's probe meanwhile).
    shared.lab.host.ok(&["ip", "link", "del", "vm-b"]);
    drop(shared.b);
    let again = Shared::guest(&shared.lab, &shared.config, "vm-c", B_MAC);
    autoconfigured(&again, true).expect("its address again");
    let now = global6(&again);
    assert!(now.contains(&stable), "the same stable address {stable}: {now:?}");
    assert_eq!(
        connect_from(&again, UPSTREAM6, &shared.upstream, "again").ok(),
        Some(format!("seen {HOST_UPLINK6}")),
        "the guest on its new tap"
    );
}

#[test]
fn under_dhcpv6_a_range_address_is_a_leases_and_a_hosts_address_its_macs() {
    let web6: Ipv6Addr = "fd00:60::10".parse().expect("an address");
    let text = config(
        "ipv6_autoconfig = \"dhcpv6\"",
        &format!(
            "ipv6_range = [\"fd00:60::1000\", \"fd00:60::1fff\"]\nhosts = [{{ mac = \"{B_MAC}\", ip = \"192.168.60.11\", ipv6 = \"{web6}\", name = \"web1\" }}]"
        ),
    );
    let lab = Lab::new();
    let config = ConfigFile::new(&text);
    let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let a = Shared::guest(&lab, &config, "vm-a", A_MAC);
    let b = Shared::guest(&lab, &config, "vm-b", B_MAC);
    let leased = dhcpv6_lease(&a, "a").expect("a's lease");
    assert_eq!(dhcpv6_lease(&b, "b"), Some(web6), "b's fixed address");
    for guest in [&a, &b] {
        autoconfigured(guest, true).expect("a default route from the advertisement");
    }
    for (guest, name) in [(&a, "a"), (&b, "b")] {
        assert_eq!(
            connect_from(guest, UPSTREAM6, &upstream, name).ok(),
            Some(format!("seen {HOST_UPLINK6}")),
            "{name} from its lease"
        );
    }
    // a takes an address of the range no one leased it, then b's fixed one:
    // neither is a's to use.
    a.sh("ip -6 addr flush dev eth0 scope global; ip -6 addr add fd00:60::1fff/128 dev eth0 nodad");
    assert!(connect_from(&a, UPSTREAM6, &upstream, "unleased").is_err(), "a from a range address not leased to it");
    a.sh(&format!("ip -6 addr flush dev eth0 scope global; ip -6 addr add {web6}/128 dev eth0 nodad"));
    assert!(connect_from(&a, UPSTREAM6, &upstream, "not its own").is_err(), "a from b's fixed address");
    a.sh(&format!("ip -6 addr flush dev eth0 scope global; ip -6 addr add {leased}/128 dev eth0 nodad"));
    assert!(connect_from(&a, UPSTREAM6, &upstream, "its own").is_ok(), "a from its lease");
}
