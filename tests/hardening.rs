//! The second round of attacks on privileged installs (setuid-root helpers
//! run by real unprivileged users, in a sandbox of their own), each of which
//! worked before kvm-net 0.3: another user's tap taken through a shared
//! group, a helper stopped from the caller's terminal while others wait for
//! its lock, a bridge filled with one user's taps, daemons left with the
//! caller's nice value and OOM score, a limit that left a network half-made,
//! and root's dnsmasq not found by a user's helper.

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use kvm_net_tests::bridge::{call, hold_in, qemu_arguments, tap_of, Received};
use kvm_net_tests::host::{assert_ok, assert_refused_as, config, Host};
use kvm_net_tests::inspect::{alive, assert_network_gone_within, controller_of, link_exists};
use kvm_net_tests::sandbox::{add_owned_tap, Install, User, TEST_GROUP};
use kvm_net_tests::Netns;

/// carol: a member of [`TEST_GROUP`], like alice.
fn carol() -> User {
    User::ensure("kvmnet-carol", &[TEST_GROUP])
}

/// The numeric ID of a group.
fn gid_of(group: &str) -> u32 {
    let out = std::process::Command::new("getent").args(["group", group]).output().expect("getent");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2).and_then(|gid| gid.trim().parse().ok()).expect("a gid")
}

/// The host's config with DHCP on for the default network, alice's and bob's.
fn config_with_dhcp(host: &Host) -> String {
    config(&host.alice, &host.bob).replace("dhcp = { enabled = false }\n", "")
}

/// The bridge helper run as `user`, as QEMU runs it for `-netdev
/// bridge,br=NETWORK`, from a shell that first runs `setup` (limits, nice,
/// OOM score) and then execs `wrapper` (chrt) with the helper.
fn bridge_helper(host: &Host, user: &User, network: &str, setup: &str, wrapper: &str) -> Received {
    let helper = host.helper("kvm-net-bridge-helper");
    let args = qemu_arguments(network, true).join(" ");
    let script = format!("{setup} exec {wrapper} {} {args}", helper.display());
    call(host.sandbox.command(&host.ns, Some(user), Path::new("sh"), &["-c", &script]))
}

#[track_caller]
fn assert_helper_refused(received: &Received, says: &str) {
    assert_eq!(received.output.status.code(), Some(1), "{}", received.stderr());
    assert!(received.tap.is_none(), "a refused helper sent a tap");
    assert!(received.stderr().contains(says), "{:?} lacks {says:?}", received.stderr());
    assert_eq!(received.stderr().lines().count(), 1, "{}", received.stderr());
}

/// The line of `ip -d link show` that describes a tun device.
fn tun_details(ns: &Netns, tap: &str) -> String {
    let details = ns.ok(&["ip", "-d", "link", "show", "dev", tap]);
    details.lines().find(|l| l.contains("tun type")).unwrap_or_default().trim().to_owned()
}

#[test]
fn a_shared_group_does_not_make_another_users_tap_yours() {
    let host = Host::new(Install::Setuid);
    let (alice, carol) = (host.alice.clone(), carol());
    // Carol's tap, with the group both are in (`ip tuntap add ... user carol group kvmnet-lab`):
    // the kernel lets only carol open it, and so must kvm-net.
    add_owned_tap(&host.ns, "grp-c", Some(&carol), Some(TEST_GROUP));
    assert_ok(&host.run(&carol, "kvm-natup", "grp-c"));
    assert_eq!(controller_of(&host.ns, "grp-c").as_deref(), Some("grp0"));
    let says = format!("user kvmnet-alice may not use grp-c: it belongs to uid {}", carol.uid);
    host.refused(&alice, "kvm-ifdown", "grp-c", &says);
    host.refused(&alice, "kvm-natdown", "grp-c", &says);
    host.refused(&alice, "kvm-natup", "grp-c", &says);
    // Moving carol's VM onto alice's network (default is alice's) is the same refusal.
    let script = format!("exec -a kvm-natup@default {} grp-c", host.helper("kvm-natup").display());
    assert_refused_as(&host.sandbox, &host.ns, &alice, Path::new("bash"), &["-c", &script], &says);
    assert_eq!(controller_of(&host.ns, "grp-c").as_deref(), Some("grp0"), "carol's VM was moved");
    // Alice's own tap with a group she is not in: the kernel refuses her that tap too.
    add_owned_tap(&host.ns, "tap-ag", Some(&alice), Some("root"));
    host.refused(&alice, "kvm-natup", "tap-ag", "its group is root, which kvmnet-alice is not in");
    assert_ok(&host.run(&carol, "kvm-natdown", "grp-c"));
}

#[test]
fn the_bridge_helpers_taps_belong_to_their_user_alone() {
    let host = Host::new(Install::Setuid);
    host.sandbox.config(&config_with_dhcp(&host));
    // Alice's QEMU runs with the group she shares with carol as its primary group (`sg kvmnet-lab`).
    let alice = User { gid: gid_of(TEST_GROUP), ..host.alice.clone() };
    let received = bridge_helper(&host, &alice, "default", "", "");
    assert!(received.succeeded(), "{}", received.stderr());
    let fd = received.tap.expect("a tap");
    let tap = tap_of(&fd).0;
    let details = tun_details(&host.ns, &tap);
    assert!(details.contains("user kvmnet-alice") && !details.contains(" group "), "{details}");
    let holder = hold_in(&host.ns, fd);
    // Carol shares that group: she still cannot take alice's VM off the network.
    let carol = carol();
    host.refused(&carol, "kvm-ifdown", &tap, &format!("may not use {tap}: it belongs to uid {}", alice.uid));
    assert_eq!(controller_of(&host.ns, &tap).as_deref(), Some("br0"));
    stop(holder);
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The state letter of a process (`R`, `S`, `T` for stopped, `Z`).
fn state_of(pid: u32) -> char {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

/// Whether a process has a file open whose path ends in `name` (the lock it waits for).
fn waits_for(pid: u32, name: &str) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().ends_with(name)))
}

#[test]
fn the_callers_terminal_cannot_stop_or_kill_a_privileged_helper() {
    let host = Host::new(Install::Setuid);
    assert_ok(&host.run(&host.bob, "kvm-natup", "tap-b"));
    // A kvm-net run of root's holds the bridge's lock for a moment: alice's helper waits for it.
    let lock = format!("/run/kvm-net/lock/{}-br0.lock", host.ns.id());
    let mut holder = host.sandbox.command(&host.ns, None, Path::new("flock"), &["-o", "-x", &lock, "sleep", "30"]);
    let holder = holder.stdout(Stdio::null()).spawn().expect("flock");
    let free = || host.sandbox.run(&host.ns, None, Path::new("flock"), &["-n", "-x", &lock, "true"]).status.success();
    let started = Instant::now();
    while free() {
        assert!(started.elapsed() < Duration::from_secs(10), "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut natup = host.sandbox.command(&host.ns, Some(&host.alice), &host.helper("kvm-natup"), &["tap-a"]);
    let mut natup = natup.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("kvm-natup");
    let pid = natup.id();
    let started = Instant::now();
    while !(waits_for(pid, "-br0.lock") && state_of(pid) == 'S') {
        assert!(started.elapsed() < Duration::from_secs(5), "kvm-natup never waited for the lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    // What ^Z, ^C, ^\, a hang-up and background terminal I/O send, with no permission check.
    for signal in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGINT, libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: kill sends a signal to a child of this test; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    }
    // Each signal is either discarded as it is sent (ignored) or acted on
    // when kvm-natup next runs (stop, kill): none pending means all were.
    let started = Instant::now();
    while signals_pending(pid) {
        assert!(started.elapsed() < Duration::from_secs(5), "kvm-natup never took its signals");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(alive(pid) && state_of(pid) != 'T', "kvm-natup was stopped or killed (state {})", state_of(pid));
    stop(holder);
    let status = natup.wait().expect("kvm-natup");
    let mut said = String::new();
    std::io::Read::read_to_string(natup.stderr.as_mut().expect("stderr"), &mut said).expect("stderr");
    assert!(status.success(), "{said}");
    assert_eq!(controller_of(&host.ns, "tap-a").as_deref(), Some("br0"));
    // And the next user's VM start is not held up.
    assert_ok(&host.run(&host.bob, "kvm-natdown", "tap-b"));
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
}

#[test]
fn one_user_cannot_fill_a_bridge_through_the_bridge_helper() {
    let host = Host::new(Install::Setuid);
    let text = config(&host.alice, &host.bob)
        .replace(
            "allow_users = [\"kvmnet-alice\", \"kvmnet-bob\"]\n",
            "allow_users = [\"kvmnet-alice\", \"kvmnet-bob\"]\nmax_taps_per_user = 3\n",
        )
        .replace("bridge = \"lanbr\"\n", "bridge = \"lanbr\"\nmax_taps_per_user = 2\n");
    host.sandbox.config(&text);
    let alice = host.alice.clone();
    let mut held = Vec::new();
    for _ in 0..3 {
        let received = bridge_helper(&host, &alice, "default", "", "");
        assert!(received.succeeded(), "{}", received.stderr());
        held.push(received.tap.expect("a tap"));
    }
    let before = host.ns.snapshot();
    let refused = bridge_helper(&host, &alice, "default", "", "");
    assert_helper_refused(&refused, "user kvmnet-alice already has 3 taps on network default (max_taps_per_user)");
    assert_eq!(host.ns.snapshot(), before, "a refused tap changed the network");
    // Another user, and root, are not held back by alice's taps.
    let bob = bridge_helper(&host, &host.bob, "default", "", "");
    assert!(bob.succeeded(), "{}", bob.stderr());
    let root = call(host.sandbox.command(
        &host.ns,
        None,
        &host.helper("kvm-net-bridge-helper"),
        &qemu_arguments("default", true).iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert!(root.succeeded(), "{}", root.stderr());
    // A bridged network has its own bound (and no lock: counted after the attach).
    for _ in 0..2 {
        let received = bridge_helper(&host, &alice, "lan", "", "");
        assert!(received.succeeded(), "{}", received.stderr());
        held.push(received.tap.expect("a tap"));
    }
    let refused = bridge_helper(&host, &alice, "lan", "", "");
    assert_helper_refused(&refused, "already has 2 taps on network lan");
    let lan_ports = host.ns.ok(&["ip", "-o", "link", "show", "master", "lanbr"]).lines().count();
    assert_eq!(lan_ports, 2, "the refused tap stayed on the bridge");
}

/// `nice`, `oom_score_adj` and scheduling policy of a process.
fn scheduling_of(pid: i32) -> (i64, i32, u32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command: state is field 3, nice 19, policy 41 (1-based in proc(5)).
    let nice = fields.get(16).and_then(|f| f.parse().ok()).unwrap_or(99);
    let policy = fields.get(38).and_then(|f| f.parse().ok()).unwrap_or(99);
    let oom =
        fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(99);
    (nice, oom, policy)
}

/// What runs in the namespace (the watcher, dnsmasq), by name.
/// Whether process `pid` has signals sent to it that it has not taken yet.
fn signals_pending(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .any(|l| l.split_whitespace().nth(1).is_some_and(|mask| !mask.trim_start_matches('0').is_empty()))
}

fn daemons(ns: &Netns) -> Vec<(i32, String)> {
    ns.processes()
        .into_iter()
        .filter(|pid| alive(pid))
        .map(|pid| (pid, fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()))
        .collect()
}

#[test]
fn what_a_privileged_helper_leaves_running_gets_a_services_scheduling() {
    let host = Host::new(Install::Setuid);
    host.sandbox.config(&config_with_dhcp(&host));
    // A hostile caller: lowest priority, idle scheduling, first to be killed under memory pressure.
    let setup = "echo 1000 > /proc/self/oom_score_adj; renice -n 19 $$ >/dev/null;";
    let received = bridge_helper(&host, &host.alice, "default", setup, "chrt --idle 0");
    assert!(received.succeeded(), "{}", received.stderr());
    let running = daemons(&host.ns);
    let names: Vec<&str> = running.iter().map(|(_, name)| name.as_str()).collect();
    assert!(names.contains(&"kvm-net-watch") && names.contains(&"dnsmasq"), "{running:?}");
    for (pid, name) in &running {
        assert_eq!(scheduling_of(*pid), (0, 0, 0), "{name} ({pid}): nice, oom_score_adj, policy");
    }
    drop(received);
    assert_network_gone_within(&host.ns, "br0", Duration::from_secs(1));
}

#[test]
fn a_setuid_natup_gives_its_dnsmasq_a_services_scheduling() {
    let host = Host::new(Install::Setuid);
    host.sandbox.config(&config_with_dhcp(&host));
    let script = format!(
        "echo 1000 > /proc/self/oom_score_adj; renice -n 19 $$ >/dev/null; exec chrt --idle 0 {} tap-a",
        host.helper("kvm-natup").display()
    );
    assert_ok(&host.sandbox.run(&host.ns, Some(&host.alice), Path::new("sh"), &["-c", &script]));
    let running = daemons(&host.ns);
    assert!(running.iter().any(|(_, name)| name == "dnsmasq"), "{running:?}");
    for (pid, name) in &running {
        assert_eq!(scheduling_of(*pid), (0, 0, 0), "{name} ({pid}): nice, oom_score_adj, policy");
    }
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
}

/// Whether this machine lets a setuid helper raise a lowered hard limit
/// (CAP_SYS_RESOURCE in the capability bounding set): containers and
/// hardened units often do not, and neither do these test machines.
fn limits_can_be_raised() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap_or("0");
    u64::from_str_radix(bounding.trim(), 16).is_ok_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[test]
fn a_limit_that_cannot_be_lifted_is_refused_before_anything_changes() {
    let host = Host::new(Install::Setuid);
    host.sandbox.config(&config_with_dhcp(&host));
    let natup = host.helper("kvm-natup").display().to_string();
    for (limit, says) in [
        ("ulimit -f 0", "the hard limit RLIMIT_FSIZE (ulimit -f) is 0 B; kvm-net needs 16 MiB"),
        ("ulimit -t 30", "the hard limit RLIMIT_CPU (ulimit -t) is 30 s; kvm-net needs unlimited"),
        ("ulimit -v 65536", "the hard limit RLIMIT_AS (ulimit -v) is 64 MiB; kvm-net needs 256 MiB"),
    ] {
        let script = format!("{limit}; exec {natup} tap-a");
        if limits_can_be_raised() {
            assert_ok(&host.sandbox.run(&host.ns, Some(&host.alice), Path::new("sh"), &["-c", &script]));
            assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
            continue;
        }
        assert_refused_as(&host.sandbox, &host.ns, &host.alice, Path::new("sh"), &["-c", &script], says);
        assert!(!link_exists(&host.ns, "br0"), "{limit}: a bridge was made");
        let received = bridge_helper(&host, &host.alice, "default", &format!("{limit};"), "");
        assert_helper_refused(&received, says);
        assert!(!link_exists(&host.ns, "br0"), "{limit}: the bridge helper made a bridge");
        assert!(host.ns.processes().is_empty(), "{limit}: something was left running");
    }
    // No half-written file either: nothing under /run/kvm-net/dnsmasq.
    let dnsmasq = host.sandbox.run_dir().join("kvm-net/dnsmasq");
    let left: Vec<_> = fs::read_dir(&dnsmasq).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn root_and_a_user_share_one_dnsmasq_whoever_starts_first() {
    let host = Host::new(Install::Setuid);
    host.sandbox.config(&config_with_dhcp(&host));
    let dnsmasqs = |ns: &Netns| {
        let all: Vec<i32> = daemons(ns).into_iter().filter(|(_, name)| name == "dnsmasq").map(|(pid, _)| pid).collect();
        kvm_net_tests::netns::without_children(&all).len()
    };
    // Root first (its dnsmasq gives its pidfile to its own user), then alice.
    assert_ok(&host.sandbox.run(&host.ns, None, &host.helper("kvm-natup"), &["tap-r"]));
    assert_ok(&host.run(&host.alice, "kvm-natup", "tap-a"));
    assert_eq!(dnsmasqs(&host.ns), 1, "{:?}", daemons(&host.ns));
    // With the pidfile lost, alice's helper still finds root's dnsmasq by its command line.
    let pidfile = host.sandbox.run_dir().join(format!("kvm-net/dnsmasq/{}-br0/dnsmasq.pid", host.ns.id()));
    fs::remove_file(&pidfile).expect("removing the pidfile");
    assert_ok(&host.run(&host.bob, "kvm-natup", "tap-b"));
    assert_eq!(dnsmasqs(&host.ns), 1, "{:?}", daemons(&host.ns));
    for (user, tap) in [(Some(&host.alice), "tap-a"), (Some(&host.bob), "tap-b"), (None, "tap-r")] {
        assert_ok(&host.sandbox.run(&host.ns, user, &host.helper("kvm-natdown"), &[tap]));
    }
    assert!(!link_exists(&host.ns, "br0"));
    assert_eq!(dnsmasqs(&host.ns), 0, "the last VM's stop must stop dnsmasq");
    // A user first, then root.
    assert_ok(&host.run(&host.alice, "kvm-natup", "tap-a"));
    assert_ok(&host.sandbox.run(&host.ns, None, &host.helper("kvm-natup"), &["tap-r"]));
    assert_eq!(dnsmasqs(&host.ns), 1, "{:?}", daemons(&host.ns));
}

#[test]
fn the_lease_hook_binds_for_a_setuid_natup_and_serves_no_one_else() {
    let host = Host::new(Install::Setuid);
    host.sandbox.config(&config_with_dhcp(&host).replace(
        "[network.default]\nmode = \"nat\"\n",
        "[network.default]\nmode = \"nat\"\nguest_spoofing = \"deny\"\n",
    ));
    assert_ok(&host.run(&host.alice, "kvm-natup", "tap-a"));
    let ports = host.ns.ok(&["nft", "list", "map", "bridge", "kvm_net", "ports"]);
    assert!(ports.contains("\"tap-a\" : jump spoof-br0"), "{ports}");
    let dnsmasq = host.sandbox.run_dir().join(format!("kvm-net/dnsmasq/{}-br0/dnsmasq.conf", host.ns.id()));
    let conf = fs::read_to_string(&dnsmasq).expect("dnsmasq.conf");
    let hook = host.helper("kvm-net-lease").canonicalize().expect("the installed hook");
    assert!(conf.contains(&format!("dhcp-script={}", hook.display())), "{conf}");
    // Run by anyone but that dnsmasq, the hook binds nothing.
    for user in [Some(&host.alice), None] {
        let out = host.sandbox.run(
            &host.ns,
            user,
            &host.helper("kvm-net-lease"),
            &["add", "52:54:00:00:00:99", "192.168.100.99"],
        );
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let bound = host.ns.ok(&["nft", "list", "set", "bridge", "kvm_net", "bound-br0"]);
    assert!(!bound.contains("192.168.100.99"), "{bound}");
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
}
