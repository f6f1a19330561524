//! Port forwards, from every direction, under the firewall backend under
//! test: from another machine (the guest sees the real client), from the
//! host itself, from another guest of the same network (hairpin, with
//! bridged frames through the firewall or not), from a guest of another
//! network; never for 127.0.0.1, never for traffic passing through to
//! another host, and only the forwarded ports. Ranges map one to one, UDP
//! too, `host_address` narrows a forward to one address; forwards go with
//! their network, heal with it, and every bad forward is refused whole.

use std::net::Ipv4Addr;
use std::time::Duration;

use kvm_net_tests::inspect::{assert_no_nat_network, backend, Backend};
use kvm_net_tests::lab::{connect_to, udp_exchange, Lab, UdpServer, UpstreamServer, HOST_UPLINK, UPSTREAM};
use kvm_net_tests::run::{add_tap, assert_refused, ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const CONFIG: &str = r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"
taps = ["vm-*"]
[network.default.dhcp]
hosts = [{ mac = "52:54:00:00:00:10", ip = "192.168.100.10", name = "web1" }]

[[network.default.forwards]]
host_port = 2222
guest = "web1"
guest_port = 22

[[network.default.forwards]]
host_port = "8000-8002"
guest = "web1"
guest_port = "9000-9002"

[[network.default.forwards]]
proto = "udp"
host_port = 5353
guest = "192.168.100.10"
guest_port = 5300

[[network.default.forwards]]
host_port = 7000
guest = "web1"
host_address = "203.0.113.1"

[network.other]
mode = "nat"
bridge = "br1"
ipv4 = "192.168.200.1/24"
taps = ["ot-*"]
dhcp = { enabled = false }
"#;

const WEB1: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 10);
const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 10);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

/// Long enough for any answer between namespaces; a dropped SYN never gets one.
const WAIT: Duration = Duration::from_secs(1);

/// The lab: web1 (with services on 22, 23, 9000-9002 and udp 5300), a
/// neighbour on the same network, a guest of network other, and a "far"
/// host behind the host (198.51.100.7), reached through it from upstream.
struct Forwards {
    lab: Lab,
    config: ConfigFile,
    web1: Netns,
    neighbour: Netns,
    other: Netns,
    ssh: UpstreamServer,
    /// web1's services on 9000, 9001 and 9002.
    ranged: Vec<UpstreamServer>,
    _telnet: UpstreamServer,
    _udp: UdpServer,
}

impl Forwards {
    fn new() -> Self {
        let lab = Lab::new();
        let config = ConfigFile::new(CONFIG);
        let web1 = lab.guest("vm-web1", &format!("{WEB1}/24"), Some("192.168.100.1"));
        let neighbour = lab.guest("vm-b", &format!("{NEIGHBOUR}/24"), Some("192.168.100.1"));
        let other = lab.guest("ot-c", &format!("{OTHER}/24"), Some("192.168.200.1"));
        let ssh = UpstreamServer::start_on(&web1, WEB1, 22);
        let ranged = [9000, 9001, 9002].map(|port| UpstreamServer::start_on(&web1, WEB1, port)).into();
        let telnet = UpstreamServer::start_on(&web1, WEB1, 23);
        let udp = UdpServer::start_on(&web1, WEB1, 5300);
        let forwards = Self { lab, config, web1, neighbour, other, ssh, ranged, _telnet: telnet, _udp: udp };
        for tap in ["vm-web1", "vm-b", "ot-c"] {
            forwards.natup(tap);
        }
        forwards
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("KVM_NET_CONFIG", self.config.path())]
    }

    fn natup(&self, tap: &str) {
        ok_with(&self.lab.host, "kvm-natup", tap, &self.env());
    }

    fn natdown(&self, tap: &str) {
        ok_with(&self.lab.host, "kvm-natdown", tap, &self.env());
    }

    /// Sets `net.bridge.bridge-nf-call-iptables` (on in every new namespace here, off on many hosts).
    fn bridge_netfilter(&self, on: bool) {
        self.lab.host.sh(&format!("echo {} > /proc/sys/net/bridge/bridge-nf-call-iptables", u8::from(on)));
    }
}

/// What a connection from `ns` to `ip`:`port` gets back (`seen PEER`), or the error.
fn reach(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<String, String> {
    connect_to(ns, ip, port, "hello", WAIT).map_err(|err| err.to_string())
}

#[test]
fn from_another_machine_the_guest_sees_the_real_client() {
    let f = Forwards::new();
    assert_eq!(reach(&f.lab.upstream, HOST_UPLINK, 2222), Ok(format!("seen {UPSTREAM}")));
    assert_eq!(f.ssh.seen().last().map(|s| s.peer), Some(UPSTREAM.into()));
}

#[test]
fn from_the_host_itself_to_its_own_addresses() {
    let f = Forwards::new();
    for address in [HOST_UPLINK, GATEWAY] {
        assert!(reach(&f.lab.host, address, 2222).is_ok_and(|r| r.starts_with("seen ")), "{address}");
    }
    // 127.0.0.1 is not forwarded (a guest could not answer it; see docs/firewall.md): nothing listens there.
    let refused = reach(&f.lab.host, Ipv4Addr::LOCALHOST, 2222);
    assert!(refused.as_ref().is_err_and(|e| e.contains("refused")), "{refused:?}");
}

#[test]
fn from_another_guest_of_the_network_through_the_hosts_address_both_ways_of_bridging() {
    let f = Forwards::new();
    for bridge_netfilter in [true, false] {
        f.bridge_netfilter(bridge_netfilter);
        for address in [HOST_UPLINK, GATEWAY] {
            // The hairpin masquerade: the reply comes back through the host, from the address called.
            let reply = reach(&f.neighbour, address, 2222);
            assert_eq!(reply, Ok(format!("seen {GATEWAY}")), "{address}, bridge-nf-call-iptables={bridge_netfilter}");
        }
    }
}

#[test]
fn from_a_guest_of_another_network() {
    let f = Forwards::new();
    assert!(reach(&f.other, HOST_UPLINK, 2222).is_ok_and(|r| r.starts_with("seen ")));
    assert!(reach(&f.other, GATEWAY, 2222).is_ok_and(|r| r.starts_with("seen ")));
}

#[test]
fn only_the_forwarded_ports_open_and_only_to_the_hosts_addresses() {
    let f = Forwards::new();
    // A LAN that routes the guests' subnet to the host (as a hostile one could).
    f.lab.upstream.ok(&["ip", "route", "add", "192.168.100.0/24", "via", &HOST_UPLINK.to_string()]);
    assert!(reach(&f.lab.upstream, WEB1, 22).is_err(), "the forwarded service, but not through the forward");
    assert!(reach(&f.lab.upstream, WEB1, 23).is_err(), "a service no forward names");
    assert!(reach(&f.lab.upstream, HOST_UPLINK, 2223).is_err(), "a port no forward names");
    // Traffic passing through the host to another host on a forwarded port is not forwarded.
    let far = Netns::new();
    f.lab.host.ok(&["ip", "link", "add", "far0", "type", "veth", "peer", "name", "eth0"]);
    f.lab.host.move_link("eth0", &far);
    f.lab.host.sh("ip addr add 198.51.100.1/24 dev far0; ip link set far0 up");
    far.sh("ip addr add 198.51.100.7/24 dev eth0; ip link set eth0 up; ip route add default via 198.51.100.1");
    f.lab.upstream.ok(&["ip", "route", "add", "198.51.100.0/24", "via", &HOST_UPLINK.to_string()]);
    let _far_service = UpstreamServer::start_on(&far, Ipv4Addr::new(198, 51, 100, 7), 2222);
    assert_eq!(reach(&f.lab.upstream, Ipv4Addr::new(198, 51, 100, 7), 2222), Ok(format!("seen {UPSTREAM}")));
}

#[test]
fn a_range_maps_one_to_one_and_udp_is_forwarded_too() {
    let f = Forwards::new();
    for (index, host_port) in (8000u16..=8002).enumerate() {
        assert_eq!(reach(&f.lab.upstream, HOST_UPLINK, host_port), Ok(format!("seen {UPSTREAM}")), "{host_port}");
        let landed: Vec<usize> = f.ranged.iter().map(|server| server.seen().len()).collect();
        let expected: Vec<usize> = (0..3).map(|i| usize::from(i <= index)).collect();
        assert_eq!(landed, expected, "host port {host_port} must land on guest port {}", 9000 + index);
    }
    assert!(reach(&f.lab.upstream, HOST_UPLINK, 8003).is_err());
    assert_eq!(udp_exchange(&f.lab.upstream, HOST_UPLINK, 5353, WAIT).ok(), Some(format!("seen {UPSTREAM}")));
    assert!(udp_exchange(&f.lab.upstream, HOST_UPLINK, 5354, WAIT).is_err());
}

#[test]
fn host_address_narrows_a_forward_to_that_address() {
    let f = Forwards::new();
    assert!(reach(&f.lab.upstream, HOST_UPLINK, 7000).is_err(), "web1 has no service on 7000");
    let _service = UpstreamServer::start_on(&f.web1, WEB1, 7000);
    assert_eq!(reach(&f.lab.upstream, HOST_UPLINK, 7000), Ok(format!("seen {UPSTREAM}")));
    // The bridge's address is the host's too, but not the forward's.
    assert!(reach(&f.neighbour, GATEWAY, 7000).is_err());
    assert!(reach(&f.lab.host, GATEWAY, 7000).is_err());
}

#[test]
fn forwards_go_with_their_network_and_heal_with_it() {
    let f = Forwards::new();
    match backend() {
        Backend::Nftables => f.lab.host.ok(&["nft", "flush", "ruleset"]),
        Backend::Iptables => f.lab.host.sh("iptables -t nat -F; iptables -t nat -X"),
    };
    assert!(reach(&f.lab.upstream, HOST_UPLINK, 2222).is_err(), "flushed");
    let out = run(&f.lab.host, "kvm-net", &["repair", "default"], &f.env());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(reach(&f.lab.upstream, HOST_UPLINK, 2222).is_ok(), "repair must bring the forward back");
    for tap in ["vm-web1", "vm-b", "ot-c"] {
        f.natdown(tap);
    }
    assert_no_nat_network(&f.lab.host, "br0");
    assert_no_nat_network(&f.lab.host, "br1");
    assert!(reach(&f.lab.upstream, HOST_UPLINK, 2222).is_err(), "the forward outlived its network");
}

/// `[network.default]` with one forward of `forward`'s lines, and `extra` after it.
fn one_forward(forward: &str, extra: &str) -> String {
    format!(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\n\
         [network.default.dhcp]\nhosts = [{{ mac = \"52:54:00:00:00:10\", ip = \"192.168.100.10\", name = \"web1\" }}]\n\
         [[network.default.forwards]]\n{forward}\n{extra}"
    )
}

#[test]
fn bad_forwards_are_refused_naming_file_network_and_field_and_nothing_changes() {
    let host = Netns::new();
    add_tap(&host, "tap0");
    let cases = [
        (one_forward("host_port = 2222\nguest = \"10.0.0.5\"", ""), "network default: field forwards[0].guest: 10.0.0.5 is not a guest's address in 192.168.100.0/24"),
        (one_forward("host_port = 2222\nguest = \"db1\"", ""), "field forwards[0].guest: \"db1\" is no IPv4 address and no dhcp.hosts entry is named so"),
        (one_forward("host_port = \"8000-8010\"\nguest = \"web1\"\nguest_port = \"9000-9005\"", ""), "field forwards[0].guest_port: 9000-9005 holds 6 ports and host_port 8000-8010 11"),
        (one_forward("host_port = \"8000-8010\"\nguest = \"web1\"\nguest_port = 22", ""), "field forwards[0].guest_port"),
        (one_forward("host_port = 2222\nguest = \"web1\"", "[[network.default.forwards]]\nhost_port = \"2200-2300\"\nguest = \"192.168.100.11\"\n"), "field forwards[1].host_port: tcp 2200-2300 overlaps forwards[0] (tcp 2222)"),
        (one_forward("host_port = 70000\nguest = \"web1\"", ""), "field forwards[0].host_port: 70000 is not a port"),
        (one_forward("host_port = 2222\nguest = \"web1\"\nproto = \"sctp\"", ""), "field forwards[0].proto"),
        (one_forward("host_port = 53\nproto = \"udp\"\nguest = \"web1\"", ""), "would take the DNS that guests of network default ask their gateway for; set host_address"),
        (
            one_forward("host_port = 2222\nguest = \"web1\"\nhost_address = \"203.0.113.1\"", "[network.b]\nmode = \"nat\"\nbridge = \"br1\"\nipv4 = \"10.5.0.1/24\"\n[[network.b.forwards]]\nhost_port = \"2000-3000\"\nguest = \"10.5.0.9\"\n"),
            "network b: field forwards[0].host_port: tcp 2000-3000 overlaps forwards[0] of network default (tcp 203.0.113.1:2222)",
        ),
        (
            "[network.default]\nmode = \"isolated\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\n[[network.default.forwards]]\nhost_port = 22\nguest = \"192.168.100.10\"\n".to_owned(),
            "field forwards: port forwards need a nat or routed network, and default is isolated",
        ),
        (
            "[network.default]\nmode = \"bridged\"\nbridge = \"br0\"\n[[network.default.forwards]]\nhost_port = 22\nguest = \"192.168.100.10\"\n".to_owned(),
            "field forwards: port forwards need a nat or routed network, and default is bridged",
        ),
    ];
    for (text, says) in cases {
        let config = ConfigFile::new(&text);
        let said = assert_refused(&host, "kvm-natup", &["tap0"], &[("KVM_NET_CONFIG", config.path())], says);
        assert!(said.contains(config.path()), "{said}");
    }
    // Two forwards on the same port of different addresses, and the same
    // port for tcp and udp, do not overlap.
    let fine = one_forward(
        "host_port = 2222\nguest = \"web1\"\nhost_address = \"203.0.113.1\"",
        "[[network.default.forwards]]\nhost_port = 2222\nguest = \"web1\"\nhost_address = \"203.0.113.9\"\n\
         [[network.default.forwards]]\nproto = \"udp\"\nhost_port = 2222\nguest = \"web1\"\nhost_address = \"203.0.113.1\"\n",
    );
    let config = ConfigFile::new(&fine);
    ok_with(&host, "kvm-natup", "tap0", &[("KVM_NET_CONFIG", config.path())]);
    ok_with(&host, "kvm-natdown", "tap0", &[("KVM_NET_CONFIG", config.path())]);
}

#[test]
fn status_lists_forwards_and_leases_and_check_finds_a_forward_going_nowhere() {
    let lab = Lab::new();
    let config = ConfigFile::new(&one_forward("host_port = 2222\nguest = \"web1\"\nguest_port = 22", ""));
    let env = [("KVM_NET_CONFIG", config.path())];
    let guest = lab.guest("vm0", "0.0.0.0/32", None);
    guest.sh("ip link set eth0 down; ip link set eth0 address 52:54:00:00:00:10; ip link set eth0 up");
    ok_with(&lab.host, "kvm-natup", "vm0", &env);
    let check = |what: &str| {
        let out = run(&lab.host, "kvm-net", &["check"], &env);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        (said.lines().any(|l| l.starts_with(&format!("warning [{what}]"))), said)
    };
    let (found, said) = check("forward-no-lease");
    assert!(found && said.contains("forward tcp 2222 of network default goes to web1 (192.168.100.10):22, which no guest holds a lease for") && said.contains("its MAC must be 52:54:00:00:00:10"), "{said}");
    assert_eq!(kvm_net_tests::lab::lease(&guest).as_deref(), Some("192.168.100.10"));
    assert!(!check("forward-no-lease").0, "{}", check("forward-no-lease").1);
    let status = String::from_utf8_lossy(&run(&lab.host, "kvm-net", &["status", "--json"], &env).stdout).into_owned();
    for expected in [
        "\"host_ports\": \"2222\"",
        "\"guest\": \"web1\"",
        "\"guest_address\": \"192.168.100.10\"",
        "\"guest_ports\": \"22\"",
        "\"mac\": \"52:54:00:00:00:10\"",
        "\"address\": \"192.168.100.10\"",
        "\"tap\": \"vm0\"",
    ] {
        assert!(status.contains(expected), "{expected} missing in:\n{status}");
    }
    let table = String::from_utf8_lossy(&run(&lab.host, "kvm-net", &["status"], &env).stdout).into_owned();
    assert!(table.contains("forward of default: tcp 2222 -> web1 (192.168.100.10):22"), "{table}");
    assert!(table.contains("lease of default: 192.168.100.10 52:54:00:00:00:10"), "{table}");
    // A local service on the forwarded port: check says which one loses.
    let _local = UpstreamServer::start_on(&lab.host, Ipv4Addr::UNSPECIFIED, 2222);
    let (found, said) = check("forward-port-in-use");
    assert!(found && said.contains("a local process listens on tcp 0.0.0.0:2222 too"), "{said}");
    ok_with(&lab.host, "kvm-natdown", "vm0", &env);
}

/// A guest that sends one datagram from a forwarded host port (5353) to a
/// client must not receive what that client sends to the forward: the
/// guest's connection leaves with another port, and the client's datagrams
/// reach the forward's target (web1) alone.
#[test]
fn no_guest_shadows_a_forwarded_port_by_sending_from_it() {
    use std::net::{SocketAddr, UdpSocket};
    let f = Forwards::new();
    let client = f.lab.upstream.enter(|| UdpSocket::bind((UPSTREAM, 40001))).expect("the client's socket");
    let shadow = f.neighbour.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353))).expect("the guest's socket");
    for socket in [&client, &shadow] {
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
    }
    shadow.send_to(b"from the neighbour", (UPSTREAM, 40001)).expect("the guest's datagram");
    let mut buffer = [0u8; 512];
    let (_, from) = client.recv_from(&mut buffer).expect("the guest's datagram reaches the client");
    assert_eq!(from.ip(), std::net::IpAddr::from(HOST_UPLINK), "masqueraded");
    client.send_to(b"hello", SocketAddr::from((HOST_UPLINK, 5353))).expect("the client's datagram");
    let stolen = shadow.recv_from(&mut buffer);
    assert!(stolen.is_err(), "the guest received the forward's datagram: {stolen:?}");
    assert_ne!(from.port(), 5353, "the guest's connection kept the forwarded port");
    let (len, _) = client.recv_from(&mut buffer).expect("web1's answer");
    assert_eq!(String::from_utf8_lossy(&buffer[..len]), format!("seen {UPSTREAM}"));
}
