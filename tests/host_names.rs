//! A network's DNS domain and upstream resolvers, and its guests' names on
//! the host through the NSS module `libnss_kvmnet.so.2`:
//!
//! - a guest gets the domain by DHCP (option 15, and the search list when
//!   it asks); the network's dnsmasq answers names in it and in the
//!   subnets' reverse zones, NXDOMAIN for the rest, and never forwards a
//!   query for them (an upstream resolver in its
//!   own namespace logs every query it gets); other queries go to
//!   `upstream_dns` alone, not to the host's resolv.conf;
//! - the module answers `getent hosts` and Python's `getaddrinfo`, as root
//!   and as an ordinary user, in a private mount namespace whose
//!   nsswitch.conf says `hosts: files kvmnet dns`: `dhcp.hosts` names plain
//!   and qualified, guests' lease names qualified only, nothing of a
//!   network that is down or of another network namespace, a guest's name
//!   for its DHCPv6 lease too (and over the network's DNS), and nothing
//!   crashes, hangs or leaks whatever the files under /run hold.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use kvm_net_tests::lab::{
    dhcpv6_lease, lease, lease_named, resolve, resolve6, udhcpc_with, Lab, HOST_UPLINK6, UPSTREAM, UPSTREAM6,
};
use kvm_net_tests::resolver::{HostResolver, UpstreamResolver};
use kvm_net_tests::run::{ok_with, run, ConfigFile};
use kvm_net_tests::sandbox::User;
use kvm_net_tests::Netns;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const WEB1: &str = "10.88.0.10";
const WEB1_V6: &str = "fd00:88::10";
const WEB1_MAC: &str = "52:54:00:00:00:10";

/// The network of the issue, its resolvers given by `upstream_dns`.
fn config(upstream_dns: &str) -> ConfigFile {
    config_with("", upstream_dns)
}

/// As [`config`], with `network` (more of the network's own keys).
fn config_with(network: &str, upstream_dns: &str) -> ConfigFile {
    ConfigFile::new(&format!(
        r#"
[network.lab]
mode = "nat"
bridge = "labbr0"
ipv4 = "10.88.0.1/24"
ipv6 = "fd00:88::1/64"
taps = ["vm*"]
{network}

[network.lab.dhcp]
domain = "vm.internal"
{upstream_dns}
hosts = [{{ mac = "{WEB1_MAC}", ip = "{WEB1}", ipv6 = "{WEB1_V6}", name = "web1" }}]
"#
    ))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// `check` until it holds (the lease hook publishes within moments), at most 5 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest on tap `tap` of the lab network that leases an address with
/// the host name `name`; the guest and its address.
fn named_guest(lab: &Lab, config: &ConfigFile, tap: &str, mac: Option<&str>, name: &str) -> (Netns, String) {
    let guest = lab.guest(tap, "0.0.0.0/32", None);
    if let Some(mac) = mac {
        guest.ok(&["ip", "link", "set", "eth0", "address", mac]);
    }
    ok_with(&lab.host, "kvm-natup", tap, &[("KVM_NET_CONFIG", config.path())]);
    let address = lease_named(&guest, name).expect("a lease");
    guest.ok(&["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
    (guest, address)
}

#[test]
fn a_guest_gets_the_domain_by_dhcp_and_dns_answers_it_here_alone() {
    let config = config(&format!("upstream_dns = [\"{UPSTREAM}\"]"));
    let lab = Lab::new();
    let upstream = UpstreamResolver::start(&lab.upstream, &[IpAddr::V4(UPSTREAM)]);
    let guest = lab.guest("vm1", "0.0.0.0/32", None);
    ok_with(&lab.host, "kvm-natup", "vm1", &[("KVM_NET_CONFIG", config.path())]);
    // Option 15 always; the search list (119) because this client asks for it.
    let said = udhcpc_with(
        &guest,
        "udhcpc-domain.sh",
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $ip domain $domain search $search dns $dns\"\nexit 0\n",
        &["-x", "hostname:db1", "-O", "search"],
    );
    let lease = said.lines().find_map(|l| l.strip_prefix("lease ")).unwrap_or_else(|| panic!("no lease: {said}"));
    let words: Vec<&str> = lease.split_whitespace().collect();
    assert_eq!(&words[1..], ["domain", "vm.internal", "search", "vm.internal", "dns", "10.88.0.1"], "{said}");
    let address = words[0].to_owned();
    guest.ok(&["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
    guest.ok(&["ip", "route", "add", "default", "via", "10.88.0.1"]);
    // The network's own names, in the domain.
    assert_eq!(resolve(&guest, "web1.vm.internal", GATEWAY), Some(WEB1.parse().expect("ip")));
    assert_eq!(resolve(&guest, "web1", GATEWAY), Some(WEB1.parse().expect("ip")));
    eventually("the guest's own name in the domain", || {
        resolve(&guest, "db1.vm.internal", GATEWAY).map(|a| a.to_string()).as_deref() == Some(address.as_str())
    });
    // Everything else in the domain is NXDOMAIN, answered here.
    let nx = guest.output(&["busybox", "nslookup", "-type=a", "nobody.vm.internal", "10.88.0.1"]);
    let nx_said = String::from_utf8_lossy(&nx.stdout).into_owned() + &String::from_utf8_lossy(&nx.stderr);
    assert!(nx_said.contains("NXDOMAIN"), "{nx_said}");
    let _ = guest.output(&["busybox", "nslookup", "-type=aaaa", "other.vm.internal", "10.88.0.1"]);
    let _ = guest.output(&["busybox", "nslookup", "-type=mx", "vm.internal", "10.88.0.1"]);
    // The network's reverse zones too: its names answered, the rest NXDOMAIN, here.
    let ptr = |name: &str| {
        let out = guest.output(&["busybox", "nslookup", "-type=ptr", name, "10.88.0.1"]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let web1_ptr = ptr("10.0.88.10.in-addr.arpa");
    assert!(web1_ptr.contains("web1"), "{web1_ptr}");
    assert!(ptr("99.0.88.10.in-addr.arpa").contains("NXDOMAIN"));
    assert!(ptr("9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.8.0.0.0.0.d.f.ip6.arpa").contains("NXDOMAIN"));
    // Other names go upstream, to upstream_dns.
    assert_eq!(resolve(&guest, "www.example.test", GATEWAY), Some(UpstreamResolver::ANSWER.parse().expect("ip")));
    let queries = upstream.queries();
    assert!(queries.iter().any(|q| q.contains("www.example.test")), "nothing forwarded upstream: {queries:?}");
    let leaked: Vec<&String> = queries
        .iter()
        .filter(|q| q.contains("vm.internal") || q.contains("88.10.in-addr") || q.contains("8.8.0.0.0.0.d.f.ip6"))
        .collect();
    assert!(leaked.is_empty(), "queries in the network's domain or reverse zones went upstream: {leaked:?}");
    ok_with(&lab.host, "kvm-natdown", "vm1", &[("KVM_NET_CONFIG", config.path())]);
}

/// The host's own resolv.conf names a decoy resolver: a network with
/// `upstream_dns` never asks it (over IPv6 here), one without it does.
#[test]
fn upstream_dns_replaces_the_hosts_resolv_conf() {
    let lab = Lab::new();
    lab.upstream.ok(&["ip", "addr", "add", "203.0.113.3/24", "dev", "wan0"]);
    let upstream = UpstreamResolver::start(&lab.upstream, &[IpAddr::V6(UPSTREAM6)]);
    let decoy = UpstreamResolver::start(&lab.upstream, &[ip("203.0.113.3")]);
    let resolv = ConfigFile::scratch_dir().join(format!("resolv-{}.conf", std::process::id()));
    std::fs::write(&resolv, "nameserver 203.0.113.3\n").expect("resolv.conf");
    lab.host.sh(&format!("mount -n --bind '{}' /etc/resolv.conf", resolv.display()));
    let cases = [
        (format!("upstream_dns = [\"{UPSTREAM6}\"]"), &upstream, "vm1", "via-upstream-dns"),
        (String::new(), &decoy, "vm2", "via-resolv-conf"),
    ];
    for (upstream_dns, via, tap, label) in cases {
        let config = config(&upstream_dns);
        let env = [("KVM_NET_CONFIG", config.path())];
        let guest = lab.guest(tap, "10.88.0.50/24", Some("10.88.0.1"));
        ok_with(&lab.host, "kvm-natup", tap, &env);
        let name = format!("{label}.example.test");
        assert_eq!(resolve(&guest, &name, GATEWAY), Some(UpstreamResolver::ANSWER.parse().expect("ip")), "{name}");
        assert!(via.queries().iter().any(|q| q.contains(&name)), "{name} did not go where it should");
        ok_with(&lab.host, "kvm-natdown", tap, &env);
        drop(guest);
    }
    let asked_decoy: Vec<String> = decoy.queries().into_iter().filter(|q| q.contains("via-upstream-dns")).collect();
    assert!(asked_decoy.is_empty(), "a network with upstream_dns asked resolv.conf's resolver: {asked_decoy:?}");
    let over_ipv6 = format!("from {HOST_UPLINK6}");
    assert!(upstream.queries().iter().all(|q| q.ends_with(&over_ipv6)), "{:?}", upstream.queries());
    let _ = std::fs::remove_file(&resolv);
}

#[test]
fn the_module_answers_every_user_with_names_of_networks_that_are_up() {
    let config = config("");
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    let host = HostResolver::enable(&lab.host);
    let alice = User::alice();
    let up = run(&lab.host, "kvm-net", &["up", "lab"], &env);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let web1 = vec![ip(WEB1_V6)];
    for user in [None, Some(&alice)] {
        // getent hosts asks for IPv6 first: web1 has both.
        assert_eq!(host.getent(user, "web1"), web1, "as {user:?}");
        assert_eq!(host.getent(user, "WEB1.vm.internal."), web1, "as {user:?}");
        let v4 = host.run(user, &["getent", "ahostsv4", "web1.vm.internal"]);
        assert!(String::from_utf8_lossy(&v4.stdout).starts_with(&format!("{WEB1} ")), "{v4:?}");
        let both = host.getaddrinfo(user, "web1.vm.internal");
        assert!(both.contains(&ip(WEB1_V6)) && both.contains(&ip(WEB1)) && both.len() == 2, "{both:?}");
        assert!(host.getent(user, "web2").is_empty(), "as {user:?}");
        assert!(host.getent(user, "vm.internal").is_empty(), "as {user:?}");
    }
    // Guests' own names: qualified only, and never shadowing anything.
    let (_db, db_ip) = named_guest(&lab, &config, "vm1", None, "db1");
    let (_mail, mail_ip) = named_guest(&lab, &config, "vm2", None, "mail");
    let (_host_name, _) = named_guest(&lab, &config, "vm3", None, "localhost");
    let (_bad, bad_ip) = named_guest(&lab, &config, "vm4", None, "bad_name");
    let (_thief, thief_ip) = named_guest(&lab, &config, "vm5", None, "web1");
    eventually("db1.vm.internal by the module", || host.getent(Some(&alice), "db1.vm.internal") == vec![ip(&db_ip)]);
    eventually("mail.vm.internal by the module", || {
        host.getent(Some(&alice), "mail.vm.internal") == vec![ip(&mail_ip)]
    });
    assert!(host.getent(Some(&alice), "db1").is_empty(), "a lease name answered unqualified");
    assert!(host.getent(Some(&alice), "mail").is_empty(), "a guest shadows the host name mail");
    assert!(!host.getent(None, "localhost").contains(&ip(&thief_ip)), "a guest shadows localhost");
    assert!(host.getent(None, "localhost.vm.internal").is_empty());
    let mut web1_both = host.getaddrinfo(Some(&alice), "web1");
    web1_both.sort();
    assert_eq!(web1_both, vec![ip(WEB1), ip(WEB1_V6)], "web1 taken by a guest");
    assert!(!host.getaddrinfo(None, "web1.vm.internal").contains(&ip(&thief_ip)));
    assert!(
        host.getent(None, "bad_name.vm.internal").is_empty() && host.getent(None, "bad-name.vm.internal").is_empty()
    );
    let published = lab.host.kvm_net_dir().join("hosts");
    let mut everything = String::new();
    for entry in std::fs::read_dir(&published).expect("the published names") {
        let entry = entry.expect("an entry");
        let meta = entry.metadata().expect("metadata");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{:?}", entry.path());
        everything.push_str(&std::fs::read_to_string(entry.path()).expect("readable"));
    }
    assert_eq!(std::fs::metadata(&published).expect("dir").permissions().mode() & 0o7777, 0o755);
    assert!(!everything.contains("52:54:00") && !everything.contains(&bad_ip), "more than names:\n{everything}");
    for line in everything.lines() {
        let (address, name) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(address.parse::<IpAddr>().is_ok() && !name.contains(' '), "{line:?}");
    }
    // A namespace of its own sees none of these.
    let elsewhere = Netns::new();
    let other = HostResolver::enable(&elsewhere);
    std::fs::create_dir_all(elsewhere.kvm_net_dir().join("hosts")).expect("hosts dir");
    // The very files, under their names (the lab's namespace's cookie): not this one's.
    for entry in std::fs::read_dir(&published).expect("names").flatten() {
        std::fs::copy(entry.path(), elsewhere.kvm_net_dir().join("hosts").join(entry.file_name())).expect("copy");
    }
    assert!(other.getent(None, "web1").is_empty(), "another namespace's names answered");
    // The network down: nothing answered, nothing left.
    let down = run(&lab.host, "kvm-net", &["down", "lab", "--force"], &env);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    for name in ["web1", "web1.vm.internal", "db1.vm.internal"] {
        assert!(host.getent(Some(&alice), name).is_empty(), "{name} answered for a network that is down");
    }
    assert_eq!(std::fs::read_dir(&published).map(|d| d.count()).unwrap_or(0), 0, "names left behind");
}

/// Under `ipv6_autoconfig = "dhcpv6"` a guest's name names its DHCPv6
/// lease as well as its IPv4 one (DHCPv6 clients seldom send a name: the
/// MAC's is taken), on the host and in the network's DNS; another guest's
/// lease without a name of its own gets none, and the name still cannot
/// be taken by another MAC.
#[test]
fn a_guests_name_names_its_dhcpv6_lease_too() {
    let config = config_with("ipv6_autoconfig = \"dhcpv6\"", "");
    let lab = Lab::new();
    let host = HostResolver::enable(&lab.host);
    let alice = User::alice();
    let (db, db_ip) = named_guest(&lab, &config, "vm1", Some("52:54:00:00:88:01"), "db7");
    let db6 = dhcpv6_lease(&db, "db7").expect("db7's DHCPv6 lease");
    let quiet = lab.guest("vm2", "0.0.0.0/32", None);
    quiet.ok(&["ip", "link", "set", "eth0", "address", "52:54:00:00:88:02"]);
    ok_with(&lab.host, "kvm-natup", "vm2", &[("KVM_NET_CONFIG", config.path())]);
    let quiet_ip = lease(&quiet).expect("the quiet guest's lease");
    quiet.ok(&["ip", "addr", "add", &format!("{quiet_ip}/24"), "dev", "eth0"]);
    let quiet6 = dhcpv6_lease(&quiet, "quiet").expect("the quiet guest's DHCPv6 lease");
    eventually("db7.vm.internal, both addresses, by the module", || {
        let mut got = host.getaddrinfo(Some(&alice), "db7.vm.internal");
        got.sort();
        got == vec![ip(&db_ip), IpAddr::V6(db6)]
    });
    assert!(host.getent(Some(&alice), "db7").is_empty(), "a lease name answered unqualified");
    assert_eq!(resolve6(&quiet, "db7.vm.internal", GATEWAY.into()), Some(db6), "AAAA in the network's DNS");
    assert_eq!(resolve(&quiet, "db7.vm.internal", GATEWAY), db_ip.parse().ok(), "A in the network's DNS");
    let published = lab.host.kvm_net_dir().join("hosts");
    let everything: String = std::fs::read_dir(&published)
        .expect("the published names")
        .map(|entry| std::fs::read_to_string(entry.expect("an entry").path()).expect("readable"))
        .collect();
    assert!(!everything.contains(&quiet6.to_string()), "a lease without a name published: {everything}");
    // Another MAC asking for db7 over DHCPv4 does not get it, nor its addresses.
    let (_thief, thief_ip) = named_guest(&lab, &config, "vm3", Some("52:54:00:00:88:03"), "db7");
    std::thread::sleep(Duration::from_millis(300));
    let got = host.getaddrinfo(None, "db7.vm.internal");
    assert!(!got.contains(&ip(&thief_ip)), "db7 taken by another MAC: {got:?}");
    assert!(got.contains(&IpAddr::V6(db6)), "{got:?}");
}

/// Whatever the files under /run/kvm-net/hosts hold (garbage, huge, a link,
/// a FIFO, unreadable, not root's, rewritten as it reads), the module answers what is
/// well formed, never hangs, and leaves its caller as it found it.
#[test]
fn the_module_survives_hostile_files() {
    let ns = Netns::new();
    let host = HostResolver::enable(&ns);
    let alice = User::alice();
    let dir = ns.kvm_net_dir().join("hosts");
    std::fs::create_dir_all(&dir).expect("hosts dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let ours = |name: &str| dir.join(format!("{}-{name}", ns.id()));
    // The module reads the files of bridges that exist: one for each file here.
    for bridge in ["garbage", "huge", "empty", "truncated", "link", "fifo", "dir", "private", "churn", "alices", "open"]
    {
        ns.ok(&["ip", "link", "add", "name", bridge, "type", "bridge"]);
    }
    // Garbage: random bytes, NULs, overlong lines, binary around a good line.
    let mut garbage: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    garbage.extend(b"\n10.1.2.3 good.vm.internal\n\0\0\0 10.1.2.4 nul.vm.internal\n");
    garbage.extend(std::iter::repeat_n(b'x', 100_000));
    garbage.extend(b" 10.1.2.5 tail.vm.internal\n10.1.2.6 bad_name.vm.internal\n::ffff:1.2.3.4 mapped\n");
    std::fs::write(ours("garbage.leases"), &garbage).expect("garbage");
    // Huge: 40 MiB of lines the module must give up on, then a name.
    let huge = std::fs::File::create(ours("huge.leases")).expect("huge");
    huge.set_len(40 << 20).expect("a sparse 40 MiB");
    std::fs::OpenOptions::new()
        .append(true)
        .open(ours("huge.leases"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\n10.9.9.9 beyond.vm.internal\n"))
        .expect("append");
    // Empty, truncated mid-line, a link to a file it must not follow, a FIFO, a directory.
    std::fs::write(ours("empty.hosts"), b"").expect("empty");
    std::fs::write(ours("truncated.hosts"), b"10.1.2.7 trunc.vm.internal\n10.1.2.").expect("truncated");
    std::fs::write(ns.kvm_net_dir().join("secret"), b"10.6.6.6 followed.vm.internal\n").expect("secret");
    std::os::unix::fs::symlink("../secret", ours("link.hosts")).expect("symlink");
    ns.ok(&["mkfifo", &format!("/run/kvm-net/hosts/{}-fifo.hosts", ns.id())]);
    std::fs::create_dir(ours("dir.hosts")).expect("a directory");
    // Unreadable by alice (a file root alone may read).
    std::fs::write(ours("private.hosts"), b"10.7.7.7 private.vm.internal\n").expect("private");
    std::fs::set_permissions(ours("private.hosts"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // Not kvm-net's: a file of alice's, a file anyone may write.
    std::fs::write(ours("alices.hosts"), b"10.5.5.5 alices.vm.internal\n").expect("alice's");
    ns.ok(&["chown", &alice.name, &ours("alices.hosts").to_string_lossy()]);
    std::fs::write(ours("open.hosts"), b"10.5.5.6 open.vm.internal\n").expect("open");
    std::fs::set_permissions(ours("open.hosts"), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    // Rewritten all the while, as kvm-net replaces a file.
    std::fs::write(ours("churn.leases"), b"10.8.8.8 churn.vm.internal\n").expect("churn");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churner = {
        let (stop, target, temporary) = (stop.clone(), ours("churn.leases"), dir.join("churn.tmp"));
        std::thread::spawn(move || {
            let mut round = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut text = "10.8.8.8 churn.vm.internal\n".to_owned();
                text.push_str(&format!("10.8.{}.{} n{round}.vm.internal\n", round % 250, round % 200).repeat(50));
                std::fs::write(&temporary, &text).expect("churn");
                std::fs::rename(&temporary, &target).expect("rename");
                // And now and then truncated in place, as a careless writer would.
                if round.is_multiple_of(7) {
                    std::fs::write(&target, &text.as_bytes()[..text.len() / 3]).expect("truncate");
                }
                round += 1;
            }
        })
    };
    for user in [None, Some(&alice)] {
        assert_eq!(host.getent(user, "good.vm.internal"), vec![ip("10.1.2.3")], "as {user:?}");
        assert_eq!(host.getent(user, "trunc.vm.internal"), vec![ip("10.1.2.7")], "as {user:?}");
        for refused in [
            "nul.vm.internal",
            "tail.vm.internal",
            "bad_name.vm.internal",
            "beyond.vm.internal",
            "followed.vm.internal",
            "alices.vm.internal",
            "open.vm.internal",
        ] {
            assert!(host.getent(user, refused).is_empty(), "{refused} answered as {user:?}");
        }
        for _ in 0..20 {
            let got = host.getent(user, "churn.vm.internal");
            assert!(got.is_empty() || got == vec![ip("10.8.8.8")], "{got:?}");
        }
    }
    assert_eq!(host.getent(None, "private.vm.internal"), vec![ip("10.7.7.7")]);
    // A network whose bridge is gone (its files not yet removed: a crash) is not answered.
    ns.ok(&["ip", "link", "del", "truncated"]);
    assert!(host.getent(None, "trunc.vm.internal").is_empty(), "a name of a bridge that is gone");
    assert!(host.getent(Some(&alice), "private.vm.internal").is_empty(), "alice read a file root alone may read");
    // A directory anyone may write to is not kvm-net's: nothing in it is believed.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert!(host.getent(None, "good.vm.internal").is_empty(), "a name from a directory anyone may write to");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(host.getent(None, "good.vm.internal"), vec![ip("10.1.2.3")]);
    // In one process, a thousand lookups: no descriptor and no memory kept.
    let script = "import os, resource, socket\n\
                  def ask():\n    try:\n        socket.getaddrinfo('churn.vm.internal', None)\n    except socket.gaierror:\n        pass\n    try:\n        socket.getaddrinfo('nothing.vm.internal', None)\n    except socket.gaierror:\n        pass\n\
                  for _ in range(50):\n    ask()\n\
                  fds = len(os.listdir('/proc/self/fd'))\n\
                  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n\
                  for _ in range(1000):\n    ask()\n\
                  print(fds, len(os.listdir('/proc/self/fd')), rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n";
    let out = host.run(Some(&alice), &["timeout", "120", "/usr/bin/python3", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    let numbers: Vec<u64> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|n| n.parse().ok()).collect();
    assert_eq!(numbers.len(), 4, "{out:?}");
    assert_eq!(numbers[0], numbers[1], "descriptors leaked: {numbers:?}");
    assert!(numbers[3] <= numbers[2] + 1024, "memory grew by {} KiB over 2000 lookups", numbers[3] - numbers[2]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churner.join().expect("the churner");
}
