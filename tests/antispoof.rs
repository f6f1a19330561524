//! `guest_spoofing = "deny"` against a hostile guest on a NAT network shared
//! with a victim, with bridged frames through the firewall (br_netfilter)
//! and without: frames crafted from the attacker's namespace with the
//! victim's address or MAC, forged ARP replies, a rogue DHCP server, router
//! advertisements, and a new guest on a reused tap name. And what must keep
//! working: leases and renewals, a second guest, ARP and ARP probes, IPv6
//! link-local, traffic after the lease. The same attacks on a network left
//! at "allow" show what the filter stops.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use kvm_net_tests::frames::{arp_reply, ethernet, icmp_echo, mac, mac_of, router_advertisement, send, tcp_syn, Mac};
use kvm_net_tests::inspect::assert_no_nat_network;
use kvm_net_tests::lab::{connect_from, connect_within, udhcpc, Lab, UpstreamServer, HOST_UPLINK, UPSTREAM};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const A_MAC: &str = "52:54:00:00:00:0a";
const B_MAC: &str = "52:54:00:00:00:0b";
const A_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 11);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);
/// A port and an ICMP id only the attacks use: upstream counts what arrives.
const SPOOF_PORT: u16 = 4444;
const SPOOF_ICMP_ID: u16 = 4242;

fn config(spoofing: &str) -> String {
    format!(
        r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"
guest_spoofing = "{spoofing}"
[network.default.dhcp]
hosts = [
  {{ mac = "{A_MAC}", ip = "{A_IP}", name = "a" }},
  {{ mac = "{B_MAC}", ip = "{B_IP}", name = "b" }},
]
"#
    )
}

/// Asks for a lease from inside `guest` and applies it (a script that says
/// which server gave it); returns the server and address.
fn take_lease(guest: &Netns) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let said = udhcpc(
        guest,
        "udhcpc-apply4.sh",
        "#!/bin/sh\ncase \"$1\" in bound|renew)\n  ip -4 addr flush dev \"$interface\"\n  ip addr add \"$ip/24\" dev \"$interface\"\n  ip route replace default via \"$router\"\n  echo \"lease $ip server $serverid\";;\nesac\nexit 0\n",
    );
    let line = said.lines().find_map(|l| l.strip_prefix("lease "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Some((words.get(2)?.parse().ok()?, words.first()?.parse().ok()?))
}

struct Shared {
    lab: Lab,
    config: ConfigFile,
    a: Netns,
    b: Netns,
    gateway_mac: Mac,
    upstream: UpstreamServer,
}

impl Shared {
    /// The network up with guests a (the attacker) and b (the victim), each
    /// with its fixed lease, bridged frames through the firewall or not.
    fn new(spoofing: &str, bridge_netfilter: bool) -> Self {
        let lab = Lab::new();
        lab.host.sh(&format!("echo {} > /proc/sys/net/bridge/bridge-nf-call-iptables", u8::from(bridge_netfilter)));
        let config = ConfigFile::new(&config(spoofing));
        let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
        lab.upstream.sh(&format!(
            "nft add table ip watch; nft add chain ip watch in '{{ type filter hook input priority 0; }}'; \
             nft add rule ip watch in tcp dport {SPOOF_PORT} counter; nft add rule ip watch in icmp id {SPOOF_ICMP_ID} counter"
        ));
        let a = Self::guest(&lab, &config, "vm-a", A_MAC);
        let b = Self::guest(&lab, &config, "vm-b", B_MAC);
        let gateway_mac = mac_of(&lab.host, "br0");
        let shared = Self { lab, config, a, b, gateway_mac, upstream };
        for guest in [&shared.a, &shared.b] {
            let (server, _) = take_lease(guest).expect("a first lease");
            assert_eq!(server, GATEWAY, "the first lease is kvm-net's");
        }
        shared
    }

    /// A guest namespace on tap `tap` with NIC MAC `mac`, not yet addressed.
    fn guest(lab: &Lab, config: &ConfigFile, tap: &str, mac: &str) -> Netns {
        let guest = lab.guest(tap, "0.0.0.0/32", None);
        // No duplicate address detection: the link-local address is usable at once.
        guest.sh(&format!(
            "ip link set eth0 down; ip link set eth0 address {mac}; echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad; ip link set eth0 up"
        ));
        ok_with(&lab.host, "kvm-natup", tap, &[("KVM_NET_CONFIG", config.path())]);
        guest
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("KVM_NET_CONFIG", self.config.path())]
    }

    /// How many of the attacks' TCP SYNs and pings upstream received.
    fn spoofed_upstream(&self) -> u64 {
        let listing = self.lab.upstream.ok(&["nft", "list", "chain", "ip", "watch", "in"]);
        listing
            .split("counter packets ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Which port of br0 the bridge has `mac` behind.
    fn port_of(&self, mac: &str) -> Option<String> {
        let fdb = self.lab.host.ok(&["bridge", "fdb", "show", "br", "br0"]);
        let line = fdb.lines().find(|l| l.starts_with(mac) && !l.contains("permanent"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        words.windows(2).find(|w| w[0] == "dev").map(|w| w[1].to_owned())
    }
}

/// The MAC `ns` has for `ip` in its neighbour table.
fn neighbour(ns: &Netns, ip: Ipv4Addr) -> Option<Mac> {
    let line = ns.ok(&["ip", "neigh", "show", &ip.to_string()]);
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "lladdr").map(|w| mac(w[1]))
}

/// What a hostile guest a got away with.
#[derive(Debug, Default, PartialEq, Eq)]
struct Got {
    /// Packets with b's address that reached upstream.
    spoofed_upstream: u64,
    /// The bridge moved b's MAC to a's port.
    mac_moved: bool,
    /// b now sends to the gateway through a.
    victim_poisoned: bool,
    /// The host now sends to b through a.
    host_poisoned: bool,
}

fn attack(shared: &Shared) -> Got {
    let (a_mac, b_mac) = (mac(A_MAC), mac(B_MAC));
    // b's address, from a's MAC and then from b's own.
    for source_mac in [a_mac, b_mac] {
        send(
            &shared.a,
            "eth0",
            &ethernet(shared.gateway_mac, source_mac, 0x0800, &tcp_syn(B_IP, UPSTREAM, 40000, SPOOF_PORT)),
        );
        send(
            &shared.a,
            "eth0",
            &ethernet(shared.gateway_mac, source_mac, 0x0800, &icmp_echo(B_IP, UPSTREAM, SPOOF_ICMP_ID)),
        );
    }
    // Before b sends anything again, which would take its MAC back.
    let mac_moved = shared.port_of(B_MAC).as_deref() == Some("vm-a");
    // Neighbour entries to poison: b knows the gateway, the host knows b; past
    // their lock time (1 s), in which the kernel ignores other answers.
    assert!(shared.b.output(&["busybox", "ping", "-c", "1", "-W", "1", &GATEWAY.to_string()]).status.success());
    assert!(shared.lab.host.output(&["busybox", "ping", "-c", "1", "-W", "1", &B_IP.to_string()]).status.success());
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..3 {
        send(&shared.a, "eth0", &ethernet(b_mac, a_mac, 0x0806, &arp_reply(a_mac, GATEWAY, b_mac, B_IP)));
        send(
            &shared.a,
            "eth0",
            &ethernet(shared.gateway_mac, a_mac, 0x0806, &arp_reply(a_mac, B_IP, shared.gateway_mac, GATEWAY)),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    Got {
        spoofed_upstream: shared.spoofed_upstream(),
        mac_moved,
        victim_poisoned: neighbour(&shared.b, GATEWAY) == Some(a_mac),
        host_poisoned: neighbour(&shared.lab.host, B_IP) == Some(a_mac),
    }
}

/// a's IPv6 link-local address.
fn link_local_of(guest: &Netns) -> Ipv6Addr {
    let line = guest.ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
    let address = line.split_whitespace().skip_while(|w| *w != "inet6").nth(1).expect("a link-local address");
    address.split('/').next().and_then(|a| a.parse().ok()).expect("an IPv6 address")
}

/// a advertises itself as a router for 2001:db8:bad::/64; whether b took
/// an address in that prefix or a default route through a.
fn advertised(shared: &Shared) -> bool {
    let link_local = link_local_of(&shared.a);
    for _ in 0..3 {
        send(
            &shared.a,
            "eth0",
            &router_advertisement(mac(A_MAC), link_local, "2001:db8:bad::".parse().expect("prefix")),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let addresses = shared.b.ok(&["ip", "-6", "addr", "show", "dev", "eth0"]);
    let routes = shared.b.ok(&["ip", "-6", "route", "show", "default"]);
    addresses.contains("2001:db8:bad:") || !routes.trim().is_empty()
}

#[test]
fn a_guest_on_a_network_left_at_allow_can_impersonate_another() {
    // What the filter is for: without it, every one of these works.
    let shared = Shared::new("allow", true);
    let got = attack(&shared);
    assert!(got.spoofed_upstream > 0 && got.mac_moved && got.victim_poisoned && got.host_poisoned, "{got:?}");
    assert!(advertised(&shared), "b ignored a's router advertisement");
}

fn denied(bridge_netfilter: bool) {
    let shared = Shared::new("deny", bridge_netfilter);
    assert_eq!(attack(&shared), Got::default(), "bridge-nf-call-iptables={bridge_netfilter}");
    // The victim, and the attacker as itself, still work.
    for (guest, name) in [(&shared.b, "b"), (&shared.a, "a")] {
        assert_eq!(
            connect_from(guest, UPSTREAM, &shared.upstream, name).ok(),
            Some(format!("seen {HOST_UPLINK}")),
            "{name}"
        );
    }
    assert_eq!(shared.port_of(B_MAC).as_deref(), Some("vm-b"));
}

#[test]
fn deny_stops_address_mac_and_arp_spoofing_with_bridged_frames_through_the_firewall() {
    denied(true);
}

#[test]
fn deny_stops_address_mac_and_arp_spoofing_with_bridged_frames_past_the_firewall() {
    denied(false);
}

/// The servers a hostile guest may run, with bridged frames through the
/// firewall or not: a DHCP server, router advertisements.
fn no_rogue_servers(bridge_netfilter: bool) {
    let shared = Shared::new("deny", bridge_netfilter);
    let conf = ConfigFile::scratch_dir().join(format!("udhcpd-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!("interface eth0\nstart 192.168.100.200\nend 192.168.100.210\noption subnet 255.255.255.0\noption router {A_IP}\noption lease 60\nlease_file /dev/null\n"),
    )
    .expect("udhcpd config");
    let mut rogue = shared.a.cmd("busybox");
    let mut rogue = rogue
        .args(["udhcpd", "-f"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("udhcpd");
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..3 {
        let (server, address) = take_lease(&shared.b).expect("a lease");
        assert_eq!((server, address), (GATEWAY, B_IP), "round {round}: a lease from the rogue server");
    }
    let _ = rogue.kill();
    let _ = rogue.wait();
    let _ = std::fs::remove_file(&conf);
    // Router advertisements from a: b takes no address of a's prefix and no route via a.
    let link_local = link_local_of(&shared.a);
    assert!(!advertised(&shared), "b took a's router advertisement");
    // IPv6 link-local between guests keeps working.
    // With bridged frames through the firewall the first neighbour solicitation is often lost: allow for a retry.
    let ping6 = shared.b.output(&["busybox", "ping", "-6", "-c", "3", "-W", "5", &format!("{link_local}%eth0")]);
    assert!(
        ping6.status.success(),
        "IPv6 link-local must work: {}{}\n{}",
        String::from_utf8_lossy(&ping6.stdout),
        String::from_utf8_lossy(&ping6.stderr),
        shared.b.ok(&["ip", "-6", "addr", "show", "dev", "eth0"])
    );
}

#[test]
fn no_rogue_dhcp_server_or_router_advertisement_with_bridged_frames_through_the_firewall() {
    no_rogue_servers(true);
}

#[test]
fn no_rogue_dhcp_server_or_router_advertisement_with_bridged_frames_past_the_firewall() {
    no_rogue_servers(false);
}

#[test]
fn what_guests_need_keeps_working() {
    let shared = Shared::new("deny", true);
    // A renewal (unicast from the bound address), then traffic.
    assert_eq!(take_lease(&shared.b), Some((GATEWAY, B_IP)));
    assert!(connect_from(&shared.b, UPSTREAM, &shared.upstream, "after renew").is_ok());
    // ARP and traffic between the two guests.
    assert!(shared.a.output(&["busybox", "ping", "-c", "2", "-W", "2", &B_IP.to_string()]).status.success());
    // An RFC 5227 probe (sender 0.0.0.0) for a's address, which a answers: the conflict is found.
    let probe = shared.b.output(&["busybox", "arping", "-D", "-c", "2", "-w", "3", "-I", "eth0", &A_IP.to_string()]);
    assert!(
        !probe.status.success(),
        "b's probe for a's address got no answer: {}",
        String::from_utf8_lossy(&probe.stdout)
    );
    // status shows each port's bound MAC and address.
    let status =
        String::from_utf8_lossy(&run(&shared.lab.host, "kvm-net", &["status", "--json"], &shared.env()).stdout)
            .into_owned();
    for expected in [
        "\"guest_spoofing\": \"deny\"",
        &format!("\"bound_mac\": \"{A_MAC}\""),
        &format!("\"bound_address\": \"{B_IP}\""),
    ] {
        assert!(status.contains(expected), "{expected} missing:\n{status}");
    }
}

#[test]
fn a_new_guest_on_a_reused_tap_name_gets_nothing_of_the_old_one() {
    let shared = Shared::new("deny", true);
    // a's VM is killed: no downscript, its tap vanishes.
    shared.lab.host.ok(&["ip", "link", "del", "vm-a"]);
    // A new VM gets a tap of the same name, and tries the old guest's address.
    let c = shared.lab.guest("vm-a", &format!("{A_IP}/24"), Some(&GATEWAY.to_string()));
    ok_with(&shared.lab.host, "kvm-natup", "vm-a", &shared.env());
    let stolen = connect_within(&c, UPSTREAM, &shared.upstream, "stolen", Duration::from_secs(1));
    assert!(stolen.is_err(), "a new guest sent with the old guest's address: {stolen:?}");
    // With a lease of its own it works.
    c.sh("ip addr flush dev eth0");
    let (server, address) = take_lease(&c).expect("a lease for the new guest");
    assert_eq!(server, GATEWAY);
    assert_ne!(address, A_IP, "its MAC is not a's");
    assert!(connect_from(&c, UPSTREAM, &shared.upstream, "c").is_ok());
}

#[test]
fn the_filter_goes_with_the_network_and_comes_back_after_a_flush() {
    let shared = Shared::new("deny", true);
    shared.lab.host.ok(&["nft", "flush", "ruleset"]);
    // The next VM start puts it back, with the running guests' locks and addresses.
    let c = Shared::guest(&shared.lab, &shared.config, "vm-c", "52:54:00:00:00:0c");
    let listing = shared.lab.host.ok(&["nft", "list", "set", "bridge", "kvm_net", "bound-br0"]);
    assert!(listing.contains(&B_IP.to_string()) && listing.contains(&A_IP.to_string()), "{listing}");
    assert!(connect_from(&shared.b, UPSTREAM, &shared.upstream, "b").is_ok());
    let got = attack(&shared);
    assert_eq!(got, Got::default());
    drop(c);
    for tap in ["vm-a", "vm-b", "vm-c"] {
        ok_with(&shared.lab.host, "kvm-natdown", tap, &shared.env());
    }
    assert_no_nat_network(&shared.lab.host, "br0");
    let left = shared.lab.host.output(&["nft", "list", "table", "bridge", "kvm_net"]);
    assert!(!left.status.success(), "the bridge filter outlived its network");
}

#[test]
fn deny_without_dhcp_is_refused_with_the_reason() {
    let host = Netns::new();
    kvm_net_tests::run::add_tap(&host, "tap0");
    let config = ConfigFile::new("[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nguest_spoofing = \"deny\"\ndhcp = { enabled = false }\n");
    kvm_net_tests::run::assert_refused(
        &host,
        "kvm-natup",
        &["tap0"],
        &[("KVM_NET_CONFIG", config.path())],
        "field guest_spoofing: \"deny\" needs DHCP on the network",
    );
}
