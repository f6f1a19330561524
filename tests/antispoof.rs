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

use kvm_net_tests::frames::{
    arp_reply, client_id_of, ethernet, fragments, icmp_echo, mac, mac_of, neighbour, router_advertisement, send,
    tcp_syn, DhcpMessage, Mac, DHCPDECLINE, DHCPRELEASE, DHCPREQUEST,
};
use kvm_net_tests::inspect::assert_no_nat_network;
use kvm_net_tests::lab::{
    connect_from, connect_within, lease, lease_named, resolve, udhcpc, Lab, UpstreamServer, HOST_UPLINK, UPSTREAM,
};
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
    /// The addresses a and b leased.
    a_ip: Ipv4Addr,
    b_ip: Ipv4Addr,
}

impl Shared {
    /// The network up with guests a (the attacker) and b (the victim), each
    /// with its fixed lease, bridged frames through the firewall or not.
    fn new(spoofing: &str, bridge_netfilter: bool) -> Self {
        Self::with_config(&config(spoofing), bridge_netfilter)
    }

    /// As [`Shared::new`], with a config of the test's own.
    fn with_config(text: &str, bridge_netfilter: bool) -> Self {
        let lab = Lab::new();
        lab.host.sh(&format!("echo {} > /proc/sys/net/bridge/bridge-nf-call-iptables", u8::from(bridge_netfilter)));
        let config = ConfigFile::new(text);
        let upstream = UpstreamServer::start(&lab.upstream, UPSTREAM);
        lab.upstream.sh(&format!(
            "nft add table ip watch; nft add chain ip watch in '{{ type filter hook input priority 0; }}'; \
             nft add rule ip watch in tcp dport {SPOOF_PORT} counter; nft add rule ip watch in icmp id {SPOOF_ICMP_ID} counter"
        ));
        let a = Self::guest(&lab, &config, "vm-a", A_MAC);
        let b = Self::guest(&lab, &config, "vm-b", B_MAC);
        let gateway_mac = mac_of(&lab.host, "br0");
        let [a_ip, b_ip] = [&a, &b].map(|guest| {
            let (server, address) = take_lease(guest).expect("a first lease");
            assert_eq!(server, GATEWAY, "the first lease is kvm-net's");
            address
        });
        Self { lab, config, a, b, gateway_mac, upstream, a_ip, b_ip }
    }

    /// A guest namespace on tap `tap` with NIC MAC `mac`, not yet addressed.
    fn guest(lab: &Lab, config: &ConfigFile, tap: &str, mac: &str) -> Netns {
        let guest = lab.guest(tap, "0.0.0.0/32", None);
        // No duplicate address detection: the link-local address is usable at
        // once; no router solicitations, which would move the guest's MAC
        // back on the bridge in the middle of an attack.
        guest.sh(&format!(
            "ip link set eth0 down; ip link set eth0 address {mac}; echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad; \
             echo 0 > /proc/sys/net/ipv6/conf/eth0/router_solicitations; ip link set eth0 up"
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
    // Before b sends anything again, which would take its MAC back (b's MLD
    // reports do now and then, and a loaded machine checks late: more tries,
    // each checked at once).
    let mut mac_moved = shared.port_of(B_MAC).as_deref() == Some("vm-a");
    for _ in 0..20 {
        if mac_moved {
            break;
        }
        send(&shared.a, "eth0", &ethernet(shared.gateway_mac, b_mac, 0x0800, &icmp_echo(B_IP, UPSTREAM, 1)));
        mac_moved = shared.port_of(B_MAC).as_deref() == Some("vm-a");
    }
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

/// A "deny" network whose guests lease dynamically from `range`, and whose
/// dnsmasq publishes guests' names (the barrier below uses one).
fn dynamic_config(range: &str) -> String {
    format!(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nguest_spoofing = \"deny\"\n[network.default.dhcp]\nrange = {range}\n"
    )
}

impl Shared {
    /// Waits until the network's dnsmasq and its lease hook have handled
    /// everything guests sent so far: guest a asks for its own lease under
    /// a new host name, and the name is answered once the hook published it
    /// (dnsmasq answers requests, and its hook runs, in order). Bounded:
    /// a build that publishes no names ends the wait after 3 s.
    fn barrier(&self, round: u32) {
        let name = format!("sync{round}");
        assert!(lease_named(&self.a, &name).is_some(), "a's own lease");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while resolve(&self.lab.host, &name, GATEWAY).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the guest filter binds to `port`, as `kvm-net status` says.
    fn bound_to(&self, port: &str) -> Option<Ipv4Addr> {
        let out = run(&self.lab.host, "kvm-net", &["status", "--json"], &self.env());
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let ports = status["networks"][0]["ports"].as_array().cloned().unwrap_or_default();
        let entry = ports.iter().find(|p| p["name"] == port)?;
        entry["bound_address"].as_str()?.parse().ok()
    }

    /// The leases dnsmasq holds, as `(MAC, address)`.
    fn leases(&self) -> Vec<(String, String)> {
        let out = run(&self.lab.host, "kvm-net", &["status", "--json"], &self.env());
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        status["networks"][0]["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| (l["mac"].as_str().unwrap_or("").to_owned(), l["address"].as_str().unwrap_or("").to_owned()))
            .collect()
    }

    /// Panics unless b still holds its address and reaches upstream with it.
    fn victim_unharmed(&self, attack: &str) {
        assert_eq!(self.bound_to("vm-b"), Some(self.b_ip), "{attack}: b's binding changed");
        assert_eq!(
            self.leases().iter().filter(|(mac, _)| mac == B_MAC).map(|(_, ip)| ip.clone()).collect::<Vec<_>>(),
            [self.b_ip.to_string()],
            "{attack}: b's leases changed"
        );
        assert_eq!(
            connect_from(&self.b, UPSTREAM, &self.upstream, "b").ok(),
            Some(format!("seen {HOST_UPLINK}")),
            "{attack}: b was cut off"
        );
    }
}

#[test]
fn no_guest_releases_or_declines_another_guests_lease() {
    let shared = Shared::with_config(&dynamic_config("[\"192.168.100.100\", \"192.168.100.150\"]"), true);
    let (a, b) = (mac(A_MAC), mac(B_MAC));
    let release = |chaddr, client_id| DhcpMessage {
        ciaddr: shared.b_ip,
        server: Some(GATEWAY),
        client_id,
        ..DhcpMessage::new(DHCPRELEASE, chaddr)
    };
    let decline = |chaddr, client_id| DhcpMessage {
        requested: Some(shared.b_ip),
        server: Some(GATEWAY),
        client_id,
        ..DhcpMessage::new(DHCPDECLINE, chaddr)
    };
    // b's MAC from a's port; a's own MAC with b's client id; each from 0.0.0.0.
    for message in
        [release(b, None), release(a, Some(client_id_of(b))), decline(b, None), decline(a, Some(client_id_of(b)))]
    {
        send(&shared.a, "eth0", &message.broadcast_from(a));
    }
    shared.barrier(1);
    shared.victim_unharmed("a release or decline naming b");
}

#[test]
fn no_guest_rebinds_another_guests_mac_to_an_address_of_its_choosing() {
    let shared = Shared::with_config(&dynamic_config("[\"192.168.100.100\", \"192.168.100.150\"]"), true);
    let (a, b) = (mac(A_MAC), mac(B_MAC));
    let stolen = Ipv4Addr::new(192, 168, 100, 140);
    // A client id of a's making: dnsmasq keys leases by client id first.
    let request = DhcpMessage {
        requested: Some(stolen),
        client_id: Some(b"attacker".to_vec()),
        ..DhcpMessage::new(DHCPREQUEST, b)
    };
    send(&shared.a, "eth0", &request.broadcast_from(a));
    shared.barrier(1);
    shared.victim_unharmed("a request for b's MAC under a's client id");
    // The same request cut in two, b's MAC in the second fragment, from
    // 0.0.0.0 and from a's own address (unicast to the server, as a renewal).
    for (source, destination) in [(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST), (shared.a_ip, GATEWAY)] {
        let destination_mac = if destination == GATEWAY { shared.gateway_mac } else { [0xff; 6] };
        for fragment in fragments(&request.packet(source, destination), 16) {
            send(&shared.a, "eth0", &ethernet(destination_mac, a, 0x0800, &fragment));
        }
    }
    shared.barrier(2);
    shared.victim_unharmed("a fragmented request for b's MAC");
}

#[test]
fn no_guest_exhausts_the_pool_and_each_port_holds_one_lease() {
    // Four dynamic addresses: a and b hold two.
    let shared = Shared::with_config(&dynamic_config("[\"192.168.100.200\", \"192.168.100.203\"]"), true);
    let a = mac(A_MAC);
    for (index, last) in (200..=203u8).enumerate() {
        let requested = Some(Ipv4Addr::new(192, 168, 100, last));
        // Made-up client hardware addresses, from a's own frames.
        let made_up = [0x52, 0x54, 0, 0xee, 0, u8::try_from(index).expect("small")];
        send(&shared.a, "eth0", &DhcpMessage { requested, ..DhcpMessage::new(DHCPREQUEST, made_up) }.broadcast_from(a));
        // a's own MAC under client ids of its choosing.
        let client_id = Some(vec![0, 0x6b, 0x76, u8::try_from(index).expect("small")]);
        send(
            &shared.a,
            "eth0",
            &DhcpMessage { requested, client_id, ..DhcpMessage::new(DHCPREQUEST, a) }.broadcast_from(a),
        );
    }
    shared.barrier(1);
    let leases = shared.leases();
    assert_eq!(leases.iter().filter(|(mac, _)| mac == A_MAC).count(), 1, "a holds more than one lease: {leases:?}");
    assert!(leases.iter().all(|(mac, _)| mac == A_MAC || mac == B_MAC), "leases of made-up MACs: {leases:?}");
    // A guest started afterwards gets a lease.
    let c = Shared::guest(&shared.lab, &shared.config, "vm-c", "52:54:00:00:00:0c");
    assert!(lease(&c).is_some(), "the pool is exhausted: {:?}", shared.leases());
}

#[test]
fn a_rebuilt_filter_restores_the_bindings_in_force_not_what_the_bridge_learned() {
    let shared = Shared::new("deny", true);
    shared.lab.host.ok(&["nft", "flush", "ruleset"]);
    // Unfiltered meanwhile, a sends from b's MAC: the bridge now has b's MAC behind a's port.
    let b = mac(B_MAC);
    // b's own frames (MLD reports) take its MAC back now and then: until the bridge has it behind a.
    for _ in 0..20 {
        send(&shared.a, "eth0", &ethernet(shared.gateway_mac, b, 0x0800, &icmp_echo(B_IP, UPSTREAM, 1)));
        if shared.port_of(B_MAC).as_deref() == Some("vm-a") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(shared.port_of(B_MAC).as_deref(), Some("vm-a"), "the bridge learned b's MAC on a's port");
    // The next VM start rebuilds the filter.
    let _c = Shared::guest(&shared.lab, &shared.config, "vm-c", "52:54:00:00:00:0c");
    assert_eq!(shared.bound_to("vm-b"), Some(B_IP), "b's binding");
    assert_eq!(shared.bound_to("vm-a"), Some(shared.a_ip), "a's binding");
    let bound = shared.lab.host.ok(&["nft", "list", "set", "bridge", "kvm_net", "portmac-br0"]);
    assert!(bound.contains(&format!("\"vm-b\" . {B_MAC}")), "{bound}");
    assert!(!bound.contains(&format!("\"vm-a\" . {B_MAC}")), "{bound}");
    // b works (and so the bridge learns its MAC back), and a cannot send as b.
    assert!(connect_from(&shared.b, UPSTREAM, &shared.upstream, "b").is_ok());
    assert_eq!(attack(&shared), Got::default());
}

const WEB1_MAC: &str = "52:54:00:00:00:10";
const WEB1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);

/// web1 is reserved for taps `web1-*`, and a forward goes to it.
fn reserved_config(spoofing: &str) -> String {
    format!(
        r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"
guest_spoofing = "{spoofing}"
[network.default.dhcp]
hosts = [{{ mac = "{WEB1_MAC}", ip = "{WEB1_IP}", name = "web1", tap = "web1-*" }}]
[[network.default.forwards]]
host_port = 2222
guest = "web1"
guest_port = 22
"#
    )
}

/// While web1 is stopped, guest a takes web1's MAC on its own tap and asks
/// for web1's lease: it gets nothing, and web1, started afterwards on a tap
/// its reservation names, gets its address and the forward's connections.
fn reserved_for_its_taps(spoofing: &str) {
    let lab = Lab::new();
    let config = ConfigFile::new(&reserved_config(spoofing));
    let thief = Shared::guest(&lab, &config, "vm-a", WEB1_MAC);
    assert_eq!(lease(&thief), None, "{spoofing}: another tap got web1's lease");
    // No address of web1's for the thief (it took none), and nothing bound to it.
    let web1 = Shared::guest(&lab, &config, "web1-0", WEB1_MAC);
    assert_eq!(lease(&web1).as_deref(), Some("192.168.100.10"), "{spoofing}: web1's own lease");
    web1.sh(&format!("ip addr add {WEB1_IP}/24 dev eth0; ip route add default via {GATEWAY}"));
    let ssh = UpstreamServer::start_on(&web1, WEB1_IP, 22);
    let reached = kvm_net_tests::lab::connect_to(&lab.upstream, HOST_UPLINK, 2222, "hello", Duration::from_secs(2));
    assert_eq!(reached.ok(), Some(format!("seen {UPSTREAM}")), "{spoofing}: the forward");
    assert_eq!(ssh.seen().len(), 1, "{spoofing}: web1 took the forward's connection");
    for tap in ["vm-a", "web1-0"] {
        ok_with(&lab.host, "kvm-natdown", tap, &[("KVM_NET_CONFIG", config.path())]);
    }
    assert_no_nat_network(&lab.host, "br0");
}

#[test]
fn a_reserved_hosts_mac_and_address_are_its_taps_alone_under_deny() {
    reserved_for_its_taps("deny");
}

#[test]
fn a_reservation_decides_who_gets_the_lease_without_deny_too() {
    reserved_for_its_taps("allow");
}

#[test]
fn gc_releases_everything_a_killed_vms_tap_held() {
    let shared = Shared::new("deny", true);
    // a's VM is killed: no downscript, its tap vanishes.
    shared.lab.host.ok(&["ip", "link", "del", "vm-a"]);
    let dry = run(&shared.lab.host, "kvm-net", &["gc", "--dry-run"], &shared.env());
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(said.contains("would release port vm-a from the guest filter of br0"), "{said}");
    let out = run(&shared.lab.host, "kvm-net", &["gc"], &shared.env());
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && said.contains("released port vm-a from the guest filter of br0"), "{said}");
    for set in ["taken-br0", "portmac-br0", "bound-br0"] {
        let listing = shared.lab.host.ok(&["nft", "list", "set", "bridge", "kvm_net", set]);
        assert!(!listing.contains(A_MAC) && !listing.contains("vm-a"), "{set}: {listing}");
        assert!(
            listing.contains(B_MAC) || set == "bound-br0" && listing.contains(&B_IP.to_string()),
            "{set}: {listing}"
        );
    }
    assert_eq!(shared.bound_to("vm-b"), Some(B_IP));
}
