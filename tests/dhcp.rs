//! DHCP and DNS for managed networks: the dnsmasq kvm-net starts, restarts
//! and stops, seen from guest namespaces with busybox's udhcpc and nslookup.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;

use kvm_net_tests::inspect::{alive, assert_no_nat_network, backend, kvm_net_lines, nft_chain, Backend};
use kvm_net_tests::lab::{lease, Lab};
use kvm_net_tests::run::{add_tap, assert_refused, ok_with, ConfigFile};
use kvm_net_tests::{helper, Netns};

const DHCP_NETWORK: &str = r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"

[network.default.dhcp]
range = ["192.168.100.100", "192.168.100.199"]
lease_time = "2h"
hosts = [{ mac = "52:54:00:aa:00:50", ip = "192.168.100.50", name = "fixed" }]
records = [{ name = "upstream.lab", ip = "203.0.113.2" }]

[network.lab]
mode = "isolated"
bridge = "lab0"
ipv4 = "10.88.0.1/24"
taps = ["lab-*"]
"#;

/// The directory of the dnsmasq serving `bridge` in `ns`.
fn dnsmasq_dir(ns: &Netns, bridge: &str) -> PathBuf {
    ns.kvm_net_dir().join(format!("dnsmasq/{}-{bridge}", ns.id()))
}

/// The path dnsmasq's command line names its config by, as the helpers see it.
fn conf_arg(ns: &Netns, bridge: &str) -> String {
    format!("--conf-file=/run/kvm-net/dnsmasq/{}-{bridge}/dnsmasq.conf", ns.id())
}

fn dnsmasq_pid(ns: &Netns, bridge: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dnsmasq_dir(ns, bridge).join("dnsmasq.pid")).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

#[test]
fn guests_get_leases_fixed_addresses_and_names() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    let dynamic = lab.guest("vm1", "0.0.0.0/32", None);
    let fixed = lab.guest("vm2", "0.0.0.0/32", None);
    fixed.ok(&["ip", "link", "set", "eth0", "address", "52:54:00:aa:00:50"]);
    ok_with(&lab.host, "kvm-natup", "vm1", &env);
    ok_with(&lab.host, "kvm-natup", "vm2", &env);
    let address = lease(&dynamic).expect("a lease");
    let last: u8 = address.rsplit('.').next().and_then(|o| o.parse().ok()).expect("IPv4");
    assert!(address.starts_with("192.168.100.") && (100..=199).contains(&last), "{address} outside the range");
    assert_eq!(lease(&fixed).as_deref(), Some("192.168.100.50"));
    fixed.ok(&["ip", "addr", "add", "192.168.100.50/24", "dev", "eth0"]);
    // busybox nslookup also asks for AAAA, which has no answer here: judge the A answer.
    let resolve = |name: &str| {
        String::from_utf8_lossy(&fixed.output(&["busybox", "nslookup", name, "192.168.100.1"]).stdout).into_owned()
    };
    let answer = resolve("upstream.lab");
    assert!(answer.contains("Address: 203.0.113.2"), "{answer}");
    let answer = resolve("fixed");
    assert!(answer.contains("Address: 192.168.100.50"), "{answer}");
    let conf = std::fs::read_to_string(dnsmasq_dir(&lab.host, "br0").join("dnsmasq.conf")).expect("conf");
    assert!(
        conf.contains("interface=br0\n") && conf.contains("except-interface=lo\n") && conf.contains("bind-dynamic\n")
    );
    match backend() {
        Backend::Iptables => {
            assert!(kvm_net_lines(&lab.host, "filter").iter().any(|l| l.contains("--dport 67")));
            assert!(kvm_net_lines(&lab.host, "mangle").iter().any(|l| l.contains("CHECKSUM --checksum-fill")));
        }
        // nf_tables has no checksum filling: only the accepts.
        Backend::Nftables => {
            assert!(nft_chain(&lab.host, "ip", "in-br0").iter().any(|l| l.contains("udp dport 67 accept")))
        }
    }
    let pid = dnsmasq_pid(&lab.host, "br0").expect("dnsmasq runs");
    ok_with(&lab.host, "kvm-natdown", "vm1", &env);
    assert_eq!(dnsmasq_pid(&lab.host, "br0"), Some(pid), "stays while a VM is left");
    ok_with(&lab.host, "kvm-natdown", "vm2", &env);
    assert!(!alive(pid), "dnsmasq outlived its network");
    assert!(!dnsmasq_dir(&lab.host, "br0").exists(), "run directory left behind");
    assert_no_nat_network(&lab.host, "br0");
    assert!(kvm_net_lines(&lab.host, "mangle").is_empty());
}

#[test]
fn a_dead_dnsmasq_is_restarted_and_a_changed_config_reloads() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    for tap in ["tap0", "tap1", "tap2"] {
        add_tap(&host, tap);
    }
    ok_with(&host, "kvm-natup", "tap0", &env);
    let first = dnsmasq_pid(&host, "br0").expect("running");
    host.ok(&["kill", "-9", &first.to_string()]);
    // Dead, not dying: its sockets are closed once /proc no longer lists it.
    kvm_net_tests::inspect::wait_until_gone(first, std::time::Duration::from_secs(5), "the killed dnsmasq");
    ok_with(&host, "kvm-natup", "tap1", &env);
    let second = dnsmasq_pid(&host, "br0").expect("restarted");
    assert_ne!(first, second);
    let changed = ConfigFile::new(&DHCP_NETWORK.replace("lease_time = \"2h\"", "lease_time = \"3h\""));
    ok_with(&host, "kvm-natup", "tap2", &[("KVM_NET_CONFIG", changed.path())]);
    let third = dnsmasq_pid(&host, "br0").expect("restarted");
    assert_ne!(second, third, "a changed config must restart dnsmasq");
    assert!(!alive(second));
    let conf = std::fs::read_to_string(dnsmasq_dir(&host, "br0").join("dnsmasq.conf")).expect("conf");
    assert!(conf.contains(",3h\n"), "{conf}");
    for tap in ["tap0", "tap1", "tap2"] {
        ok_with(&host, "kvm-natdown", tap, &[("KVM_NET_CONFIG", changed.path())]);
    }
    assert!(!alive(third));
}

#[test]
fn a_pidfile_naming_another_process_is_not_obeyed() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    add_tap(&host, "tap0");
    let mut stranger = host.cmd("sleep").arg("60").spawn().expect("sleep");
    let dir = dnsmasq_dir(&host, "br0");
    std::fs::create_dir_all(&dir).expect("run dir");
    std::fs::write(dir.join("dnsmasq.pid"), format!("{}\n", stranger.id())).expect("pidfile");
    ok_with(&host, "kvm-natup", "tap0", &env);
    let ours = dnsmasq_pid(&host, "br0").expect("its own dnsmasq");
    assert_ne!(ours, stranger.id() as i32);
    ok_with(&host, "kvm-natdown", "tap0", &env);
    assert!(stranger.try_wait().expect("wait").is_none(), "kvm-net killed a process it did not start");
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[test]
fn two_networks_have_a_dnsmasq_each() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    add_tap(&host, "tap0");
    add_tap(&host, "lab-1");
    ok_with(&host, "kvm-natup", "tap0", &env);
    ok_with(&host, "kvm-natup", "lab-1", &env);
    let (a, b) = (dnsmasq_pid(&host, "br0").expect("br0"), dnsmasq_pid(&host, "lab0").expect("lab0"));
    assert_ne!(a, b);
    let lab_conf = std::fs::read_to_string(dnsmasq_dir(&host, "lab0").join("dnsmasq.conf")).expect("conf");
    assert!(
        lab_conf.contains("interface=lab0\n")
            && lab_conf.contains("dhcp-range=10.88.0.128,10.88.0.254,255.255.255.0,1h")
    );
    ok_with(&host, "kvm-natdown", "lab-1", &env);
    assert!(!alive(b));
    assert_eq!(dnsmasq_pid(&host, "br0"), Some(a), "the other network's dnsmasq stays");
    ok_with(&host, "kvm-natdown", "tap0", &env);
    assert!(!alive(a));
}

#[test]
fn dhcp_without_dnsmasq_is_a_clear_error_and_changes_nothing() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let host = Netns::new();
    add_tap(&host, "tap0");
    // A PATH with the firewall tools but no dnsmasq.
    let bin = ConfigFile::scratch_dir().join(format!("no-dnsmasq-{}", std::process::id()));
    std::fs::create_dir_all(&bin).expect("dir");
    for tool in ["iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"] {
        let _ = std::os::unix::fs::symlink(format!("/usr/sbin/{tool}"), bin.join(tool));
    }
    let says = "network default has DHCP on, and dnsmasq is not installed; install it (Debian and Ubuntu: apt-get install dnsmasq-base";
    let env = [("KVM_NET_CONFIG", config.path()), ("PATH", bin.to_str().expect("utf-8"))];
    assert_refused(&host, "kvm-natup", &["tap0"], &env, says);
    let _ = std::fs::remove_dir_all(&bin);
}

#[test]
fn dnsmasq_does_not_inherit_the_tap_descriptor() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let host = Netns::new();
    add_tap(&host, "tap0");
    // QEMU runs its scripts with the tap open as fd 3, without close-on-exec.
    let marker = ConfigFile::scratch_dir().join(format!("fd3-marker-{}", std::process::id()));
    let file = std::fs::File::create(&marker).expect("marker");
    let raw = file.as_raw_fd();
    let mut command = host.cmd(helper("kvm-natup"));
    command.arg("tap0").env("KVM_NET_CONFIG", config.path()).stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().expect("kvm-natup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = dnsmasq_pid(&host, "br0").expect("running");
    let leaked = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == marker);
    let _ = std::fs::remove_file(&marker);
    assert!(!leaked, "dnsmasq holds the descriptor QEMU passed as fd 3");
    ok_with(&host, "kvm-natdown", "tap0", &[("KVM_NET_CONFIG", config.path())]);
}

/// The dnsmasq daemons running with the config file of `bridge` in `ns`
/// (not their script helpers: children with the same command line).
fn dnsmasq_with_conf(ns: &Netns, bridge: &str) -> Vec<i32> {
    let conf = conf_arg(ns, bridge);
    let with_conf: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(pid))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).any(|arg| arg == conf.as_bytes())
        })
        .collect();
    kvm_net_tests::netns::without_children(&with_conf)
}

#[test]
fn a_dnsmasq_whose_pidfile_was_lost_is_found_and_stopped() {
    let config = ConfigFile::new(DHCP_NETWORK);
    let env = [("KVM_NET_CONFIG", config.path())];
    let host = Netns::new();
    add_tap(&host, "tap0");
    add_tap(&host, "tap1");
    ok_with(&host, "kvm-natup", "tap0", &env);
    let running = dnsmasq_with_conf(&host, "br0");
    assert_eq!(running.len(), 1);
    std::fs::remove_file(dnsmasq_dir(&host, "br0").join("dnsmasq.pid")).expect("remove the pidfile");
    // Not a second dnsmasq failing with "Address already in use".
    ok_with(&host, "kvm-natup", "tap1", &env);
    assert_eq!(dnsmasq_with_conf(&host, "br0"), running);
    ok_with(&host, "kvm-natdown", "tap0", &env);
    ok_with(&host, "kvm-natdown", "tap1", &env);
    assert_eq!(dnsmasq_with_conf(&host, "br0"), Vec::<i32>::new(), "dnsmasq outlived its network");
    assert_no_nat_network(&host, "br0");
}

/// Guests named by their own DHCP requests: first come, first served, never
/// a name the config gives, never a service's name, and only DNS labels.
#[test]
fn a_guests_host_name_never_takes_anothers_or_a_reserved_one() {
    use kvm_net_tests::lab::{lease_named, resolve};
    let config = ConfigFile::new(DHCP_NETWORK);
    let env = [("KVM_NET_CONFIG", config.path())];
    let lab = Lab::new();
    let [first, second, late] = ["vm1", "vm2", "vm3"].map(|tap| {
        let guest = lab.guest(tap, "0.0.0.0/32", None);
        ok_with(&lab.host, "kvm-natup", tap, &env);
        guest
    });
    let gateway: std::net::Ipv4Addr = "192.168.100.1".parse().expect("ip");
    // A name is answered once the lease hook has published it, within moments.
    let answer_for = |name: &str, expected: Option<&str>| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let got = resolve(&lab.host, name, gateway).map(|a| a.to_string());
            if got.as_deref() == expected || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let first_ip = lease_named(&first, "dbserver").expect("a lease");
    assert_eq!(answer_for("dbserver", Some(&first_ip)).as_deref(), Some(first_ip.as_str()));
    // The second guest asks for the same name, and for a service's, and a name the config gives.
    let second_ip = lease_named(&second, "DBServer").expect("a lease");
    let _ = lease_named(&second, "wpad");
    let _ = lease_named(&second, "fixed");
    // Its own request for a name of its own comes last: once answered, the others were handled.
    let _ = lease_named(&second, "second");
    assert_eq!(answer_for("second", Some(&second_ip)).as_deref(), Some(second_ip.as_str()));
    assert_eq!(resolve(&lab.host, "dbserver", gateway).map(|a| a.to_string()), Some(first_ip.clone()));
    assert_eq!(resolve(&lab.host, "wpad", gateway), None, "wpad was taken from a guest");
    let fixed: Option<std::net::Ipv4Addr> = "192.168.100.50".parse().ok();
    assert_eq!(resolve(&lab.host, "fixed", gateway), fixed, "a dhcp.hosts name was taken before its host leased");
    // A name that is no DNS label is not published.
    let late_ip = lease_named(&late, "bad_name").expect("a lease");
    let _ = lease_named(&late, "late");
    assert_eq!(answer_for("late", Some(&late_ip)).as_deref(), Some(late_ip.as_str()));
    assert_eq!(resolve(&lab.host, "bad_name", gateway), None);
    // The first guest releases its lease: its name is free again.
    use kvm_net_tests::frames::{mac_of, send, DhcpMessage, DHCPRELEASE};
    let first_mac = mac_of(&first, "eth0");
    let release = DhcpMessage {
        ciaddr: first_ip.parse().expect("an address"),
        server: Some(gateway),
        ..DhcpMessage::new(DHCPRELEASE, first_mac)
    };
    send(&first, "eth0", &release.broadcast_from(first_mac));
    let _ = lease_named(&second, "dbserver");
    assert_eq!(answer_for("dbserver", Some(&second_ip)).as_deref(), Some(second_ip.as_str()));
    for tap in ["vm1", "vm2", "vm3"] {
        ok_with(&lab.host, "kvm-natdown", tap, &env);
    }
    assert!(!dnsmasq_dir(&lab.host, "br0").exists(), "run directory left behind");
}
