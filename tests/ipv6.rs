//! IPv6 guests that configure themselves: router advertisements and
//! DHCPv6 from the network's dnsmasq (`ipv6_autoconfig`), as the guests'
//! own clients see them (the kernel's SLAAC with `accept_ra=2`, rdisc6,
//! ISC `dhclient -6`), names in the network's DNS, forwards on the host's
//! IPv6 addresses, isolation over IPv6, and the uplink that keeps its
//! router advertisements when forwarding comes on.

use std::net::{IpAddr, Ipv6Addr};

use kvm_net_tests::frames::{mac_of, router_advertisement, send};
use kvm_net_tests::inspect::assert_no_nat_network;
use kvm_net_tests::lab::{
    autoconfigured, connect_from, dhcpv6_lease, global6, resolve6, solicit, Lab, UpstreamServer, HOST_UPLINK6,
    UPSTREAM6,
};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::Netns;

const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 1);
const WEB_MAC: &str = "52:54:00:00:60:10";
const WEB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 0x10);

/// Network `v6` on v6br0 in `mode`, with `extra` lines, and web1's entry.
fn config(mode: &str, extra: &str, dhcp: &str) -> ConfigFile {
    let ipv4 = if mode == "routed" { "" } else { "ipv4 = \"192.168.60.1/24\"\n" };
    let hosts = if ipv4.is_empty() {
        String::new()
    } else {
        format!(
            "[network.v6.dhcp]\nhosts = [{{ mac = \"{WEB_MAC}\", ip = \"192.168.60.10\", ipv6 = \"{WEB6}\", name = \"web1\" }}]\n{dhcp}\n"
        )
    };
    ConfigFile::new(&format!(
        "[network.v6]\nmode = \"{mode}\"\nbridge = \"v6br0\"\ntaps = [\"vm*\"]\n{ipv4}ipv6 = \"fd00:60::1/64\"\n{extra}\n{hosts}"
    ))
}

/// A guest on tap `tap` of network v6, brought up with kvm-natup.
fn guest(lab: &Lab, config: &ConfigFile, tap: &str, mac: Option<&str>) -> Netns {
    let guest = lab.autoconf_guest(tap, mac);
    ok_with(&lab.host, "kvm-natup", tap, &[("KVM_NET_CONFIG", config.path())]);
    guest
}

fn in_prefix(address: Ipv6Addr) -> bool {
    address.segments()[..4] == [0xfd00, 0x60, 0, 0]
}

#[test]
fn slaac_guests_configure_themselves_reach_upstream_over_nat66_and_find_names() {
    let config = config("nat", "", "");
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let guest = guest(&lab, &config, "vm0", Some(WEB_MAC));
    let address = autoconfigured(&guest, true).expect("an address and a default route from the advertisement");
    assert!(in_prefix(address), "{address}");
    let advertised = solicit(&guest);
    for line in [
        "Stateful address conf.    :           No",
        "Stateful other conf.      :          Yes",
        "Autonomous address conf.:          Yes",
        "Recursive DNS server     : fd00:60::1",
    ] {
        assert!(advertised.contains(line), "{line:?} missing from:\n{advertised}");
    }
    let route = guest.ok(&["ip", "-6", "route", "show", "default"]);
    assert!(route.contains("via fe80::"), "the default route goes to the bridge's link-local address: {route}");
    assert_eq!(connect_from(&guest, UPSTREAM6, &server, "v6").ok(), Some(format!("seen {HOST_UPLINK6}")));
    // The names of dhcp.hosts, by their IPv6 address, through the bridge's own.
    assert_eq!(resolve6(&guest, "web1", IpAddr::V6(GATEWAY6)), Some(WEB6));
    ok_with(&lab.host, "kvm-natdown", "vm0", &[("KVM_NET_CONFIG", config.path())]);
    assert_no_nat_network(&lab.host, "v6br0");
    assert!(lab.host.processes().is_empty(), "the last kvm-natdown leaves no router advertisement sender");
}

#[test]
fn an_isolated_network_gives_addresses_and_no_default_route() {
    let config = config("isolated", "", "");
    let lab = Lab::new();
    let guest = guest(&lab, &config, "vm0", None);
    let address = autoconfigured(&guest, false).expect("an address from the advertisement");
    assert!(in_prefix(address), "{address}");
    let advertised = solicit(&guest);
    assert!(advertised.contains("Router lifetime           :            0"), "{advertised}");
    assert!(guest.ok(&["ip", "-6", "route", "show", "default"]).trim().is_empty(), "no default route");
    assert!(guest.output(&["ping", "-6", "-c", "1", "-W", "2", &GATEWAY6.to_string()]).status.success());
}

#[test]
fn dhcpv6_leases_from_the_range_and_gives_a_host_its_fixed_address_by_mac() {
    let config = config("nat", "ipv6_autoconfig = \"dhcpv6\"", "ipv6_range = [\"fd00:60::1000\", \"fd00:60::1fff\"]");
    let lab = Lab::new();
    let any = guest(&lab, &config, "vm0", Some("52:54:00:00:60:20"));
    let web = guest(&lab, &config, "vm1", Some(WEB_MAC));
    let advertised = solicit(&any);
    assert!(
        advertised.contains(" from fe80::"),
        "from the first VM on, from the bridge's link-local address:\n{advertised}"
    );
    for line in ["Stateful address conf.    :          Yes", "Autonomous address conf.:           No"] {
        assert!(advertised.contains(line), "{line:?} missing from:\n{advertised}");
    }
    let leased = dhcpv6_lease(&any, "any").expect("a DHCPv6 lease");
    let range = "fd00:60::1000".parse::<Ipv6Addr>().expect("ip")..="fd00:60::1fff".parse().expect("ip");
    assert!(range.contains(&leased), "{leased} is outside the range");
    assert!(global6(&any).iter().all(|a| range.contains(a)), "no SLAAC address besides the lease");
    assert_eq!(dhcpv6_lease(&web, "web"), Some(WEB6), "web1's fixed address, by its MAC");
    assert_eq!(resolve6(&any, "web1", IpAddr::V6(GATEWAY6)), Some(WEB6));
}

#[test]
fn off_sends_no_advertisement_and_leaves_addresses_to_the_guests() {
    let config = config("nat", "ipv6_autoconfig = \"off\"", "");
    let lab = Lab::new();
    let guest = guest(&lab, &config, "vm0", None);
    assert_eq!(solicit(&guest), "", "no router advertisement");
    assert!(global6(&guest).is_empty());
    let text = std::fs::read_dir(lab.host.kvm_net_dir().join("dnsmasq"))
        .expect("dnsmasq's directory")
        .flatten()
        .map(|entry| std::fs::read_to_string(entry.path().join("dnsmasq.conf")).unwrap_or_default())
        .collect::<String>();
    assert!(!text.contains("enable-ra") && text.contains("dhcp-range=192.168.60."), "{text}");
}

#[test]
fn a_routed_ipv6_only_network_advertises_without_a_dhcp_section() {
    let config = config("routed", "", "");
    let lab = Lab::new();
    lab.upstream.ok(&["ip", "-6", "route", "add", "fd00:60::/64", "via", &HOST_UPLINK6.to_string()]);
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let guest = guest(&lab, &config, "vm0", None);
    let address = autoconfigured(&guest, true).expect("an address and a default route");
    let advertised = solicit(&guest);
    assert!(!advertised.contains("Recursive DNS server"), "no DNS served, none advertised:\n{advertised}");
    assert_eq!(
        connect_from(&guest, UPSTREAM6, &server, "routed").ok(),
        Some(format!("seen {address}")),
        "routed: upstream sees the guest's own address"
    );
}

#[test]
fn kvm_net_status_and_check_see_an_uplink_that_lost_its_advertisements() {
    let config = config("nat", "", "");
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    // up0 learns a default route from upstream's advertisement (as a host on a LAN does).
    lab.host.sh("echo 1 > /proc/sys/net/ipv6/conf/up0/accept_ra");
    let upstream_mac = mac_of(&lab.upstream, "wan0");
    let link_local: Ipv6Addr = {
        let line = lab.upstream.ok(&["ip", "-6", "-o", "addr", "show", "dev", "wan0", "scope", "link"]);
        let word = line.split_whitespace().skip_while(|w| *w != "inet6").nth(1).expect("a link-local address");
        word.split('/').next().and_then(|a| a.parse().ok()).expect("an address")
    };
    let advertise = || {
        send(&lab.upstream, "wan0", &router_advertisement(upstream_mac, link_local, "2001:db8:2::".parse().expect("p")))
    };
    advertise();
    let learned = || lab.host.ok(&["ip", "-6", "route", "show", "default"]).contains("proto ra");
    assert!(wait(learned), "up0 learned no default route");
    // Someone else turns forwarding on: up0 stops listening, check says so.
    lab.host.sh("echo 1 > /proc/sys/net/ipv6/conf/all/forwarding");
    let _guest = guest(&lab, &config, "vm0", None);
    let check = run(&lab.host, "kvm-net", &["check"], &env);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("uplink-ignores-ra") && said.contains("up0"), "{said}");
    assert!(said.contains("net.ipv6.conf.up0.accept_ra=2"), "{said}");
}

/// Whether `condition` holds within 5 s.
fn wait(condition: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !condition() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    true
}

#[test]
fn forwarding_turned_on_by_kvm_net_keeps_the_uplinks_advertisements() {
    let config = config("nat", "", "");
    let lab = Lab::new();
    lab.host.sh("echo 1 > /proc/sys/net/ipv6/conf/up0/accept_ra");
    let _guest = guest(&lab, &config, "vm0", None);
    assert_eq!(lab.host.ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).trim(), "1");
    assert_eq!(lab.host.ok(&["cat", "/proc/sys/net/ipv6/conf/up0/accept_ra"]).trim(), "2");
    // An advertisement after forwarding came on is still taken.
    let upstream_mac = mac_of(&lab.upstream, "wan0");
    let line = lab.upstream.ok(&["ip", "-6", "-o", "addr", "show", "dev", "wan0", "scope", "link"]);
    let word = line.split_whitespace().skip_while(|w| *w != "inet6").nth(1).expect("a link-local address");
    let link_local: Ipv6Addr = word.split('/').next().and_then(|a| a.parse().ok()).expect("an address");
    send(&lab.upstream, "wan0", &router_advertisement(upstream_mac, link_local, "2001:db8:2::".parse().expect("p")));
    assert!(wait(|| lab.host.ok(&["ip", "-6", "route", "show", "default"]).contains("proto ra")));
    let check = run(&lab.host, "kvm-net", &["check"], &[("KVM_NET_CONFIG", config.path())]);
    assert!(!String::from_utf8_lossy(&check.stdout).contains("uplink-ignores-ra"));
}

/// How long a connection attempt may take.
const WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Network v6 in `mode` with web1's forward 2222 -> 22, web1 up on vm1
/// with its fixed address and a service there.
fn forwarded(mode: &str) -> (Lab, ConfigFile, Netns, UpstreamServer) {
    let config = ConfigFile::new(&format!(
        "[network.v6]\nmode = \"{mode}\"\nbridge = \"v6br0\"\ntaps = [\"vm*\"]\nipv4 = \"192.168.60.1/24\"\nipv6 = \"fd00:60::1/64\"\n\
         [network.v6.dhcp]\nhosts = [{{ mac = \"{WEB_MAC}\", ip = \"192.168.60.10\", ipv6 = \"{WEB6}\", name = \"web1\" }}]\n\
         [[network.v6.forwards]]\nhost_port = 2222\nguest = \"web1\"\nguest_port = 22\n"
    ));
    let lab = Lab::new();
    let web = guest(&lab, &config, "vm1", Some(WEB_MAC));
    web.ok(&["ip", "-6", "addr", "add", &format!("{WEB6}/64"), "dev", "eth0", "nodad"]);
    autoconfigured(&web, true).expect("a default route");
    let service = UpstreamServer::start_on(&web, WEB6, 22);
    (lab, config, web, service)
}

fn reach(ns: &Netns, ip: Ipv6Addr, port: u16) -> Result<String, String> {
    kvm_net_tests::lab::connect_to(ns, ip, port, "hello", WAIT).map_err(|err| err.to_string())
}

#[test]
fn an_ipv6_forward_reaches_its_guest_from_upstream_and_from_the_host_and_opens_only_its_port() {
    for mode in ["nat", "routed"] {
        let (lab, _config, _web, service) = forwarded(mode);
        assert_eq!(reach(&lab.upstream, HOST_UPLINK6, 2222), Ok(format!("seen {UPSTREAM6}")), "{mode}");
        assert_eq!(service.seen().last().map(|s| s.peer), Some(UPSTREAM6.into()), "{mode}: the real client");
        for address in [HOST_UPLINK6, GATEWAY6] {
            assert!(
                reach(&lab.host, address, 2222).is_ok_and(|r| r.starts_with("seen ")),
                "{mode}: from the host to {address}"
            );
        }
        let loopback = reach(&lab.host, Ipv6Addr::LOCALHOST, 2222);
        assert!(loopback.as_ref().is_err_and(|e| e.contains("refused")), "{mode}: ::1 is not forwarded: {loopback:?}");
        assert!(reach(&lab.upstream, HOST_UPLINK6, 2223).is_err(), "{mode}: a port no forward names");
        // A LAN that routes the guests' prefix to the host.
        lab.upstream.ok(&["ip", "-6", "route", "add", "fd00:60::/64", "via", &HOST_UPLINK6.to_string()]);
        let direct = reach(&lab.upstream, WEB6, 22);
        match mode {
            "nat" => assert!(direct.is_err(), "nat: the guest's service, but not through the forward: {direct:?}"),
            _ => assert_eq!(direct, Ok(format!("seen {UPSTREAM6}")), "routed: the guest is reachable itself"),
        }
    }
}

#[test]
fn isolated_guests_do_not_reach_each_other_over_ipv6_whatever_bridge_nf_call_ip6tables_says() {
    let config = config("nat", "isolate_guests = true", "");
    let lab = Lab::new();
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM6);
    let a = guest(&lab, &config, "vm0", None);
    let b = guest(&lab, &config, "vm1", None);
    let b_global = autoconfigured(&b, true).expect("b's address");
    autoconfigured(&a, true).expect("a's address");
    let b_link_local = {
        let line = b.ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
        let word = line.split_whitespace().skip_while(|w| *w != "inet6").nth(1).expect("a link-local address");
        word.split('/').next().expect("an address").to_owned()
    };
    for setting in [1, 0] {
        lab.host.sh(&format!("echo {setting} > /proc/sys/net/bridge/bridge-nf-call-ip6tables"));
        let ping = |to: &str| a.output(&["ping", "-6", "-c", "1", "-W", "2", to]).status.success();
        assert!(!ping(&b_global.to_string()), "bridge-nf-call-ip6tables={setting}: a reached b's global address");
        assert!(
            !ping(&format!("{b_link_local}%eth0")),
            "bridge-nf-call-ip6tables={setting}: a reached b's link-local address"
        );
        assert!(ping(&GATEWAY6.to_string()), "bridge-nf-call-ip6tables={setting}: a lost the gateway");
        assert_eq!(connect_from(&a, UPSTREAM6, &server, "a").ok(), Some(format!("seen {HOST_UPLINK6}")));
    }
}
