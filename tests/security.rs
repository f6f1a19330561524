//! The helpers installed setuid root or with file capabilities, run by real
//! unprivileged users (made with useradd) in a sandbox of their own: every
//! attack of docs/security.md fails and changes nothing, and what the
//! grants allow still works. Root and legitimate users are tried alongside.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kvm_net_tests::host::{assert_ok, assert_refused_as, config, listing, Host};
use kvm_net_tests::inspect::{assert_no_nat_network, controller_of, has_chain, is_up, link_exists};
use kvm_net_tests::run::stderr;
use kvm_net_tests::sandbox::{Install, Sandbox};

#[test]
fn a_user_without_a_grant_is_refused_before_anything_changes() {
    let host = Host::new(Install::Setuid);
    let bob = host.bob.clone();
    // lan is alice's only; grp is for a group bob is not in.
    host.refused(&bob, "kvm-ifup", "lan-a", "user kvmnet-bob may not use network lan");
    let says = "user kvmnet-bob may not use network grp (chosen by tap grp-g matches grp-*)";
    host.refused(&bob, "kvm-natup", "grp-g", says);
    host.refused(&bob, "kvm-natdown", "grp-g", "may not use network grp");
    // Without a config file, the one network is root's alone.
    fs::remove_file(host.sandbox.etc_dir().join("kvm-net.toml")).expect("remove config");
    host.refused(&host.alice, "kvm-natup", "tap-a", "user kvmnet-alice may not use network default");
    host.refused(&host.alice, "kvm-ifup", "tap-a", "may not use network default");
}

#[test]
fn a_user_may_use_only_tun_devices_of_their_own() {
    let host = Host::new(Install::Setuid);
    let alice = host.alice.clone();
    host.refused(&alice, "kvm-ifdown", "up0", "user kvmnet-alice may not use up0: it is a veth link");
    assert!(is_up(&host.ns, "up0"), "the uplink went down");
    host.refused(&alice, "kvm-natup", "up0", "may not use up0: it is a veth link, not a tun/tap device");
    host.refused(&alice, "kvm-natup", "tap-b", &format!("may not use tap-b: it belongs to uid {}", host.bob.uid));
    host.refused(&alice, "kvm-natup", "tap-r", "may not use tap-r: it has no owner");
    host.refused(&alice, "kvm-natup", "lanbr", "lanbr is a bridge, not a VM's tap");
    // Bob attaches his own tap; alice can neither detach it nor take the network down with it.
    assert_ok(&host.run(&host.bob, "kvm-natup", "tap-b"));
    assert_eq!(controller_of(&host.ns, "tap-b").as_deref(), Some("br0"));
    host.refused(&alice, "kvm-natdown", "tap-b", "may not use tap-b");
    host.refused(&alice, "kvm-ifdown", "tap-b", "may not use tap-b");
    assert_eq!(controller_of(&host.ns, "tap-b").as_deref(), Some("br0"));
    assert_ok(&host.run(&host.bob, "kvm-natdown", "tap-b"));
    assert!(!link_exists(&host.ns, "br0"));
}

#[test]
fn the_name_a_helper_runs_under_counts_only_when_granted() {
    let host = Host::new(Install::Setuid);
    let alice = host.alice.clone();
    // A symlink in a directory of alice's own, named for bob's network.
    let home = host.sandbox.scratch("alice-home");
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&home, Some(alice.uid), Some(alice.gid)).expect("chown");
    let link = home.join("kvm-natup@lab");
    std::os::unix::fs::symlink(host.helper("kvm-natup"), &link).expect("symlink");
    let says = "user kvmnet-alice may not use network lab (chosen by the helper's name ends in @lab)";
    assert_refused_as(&host.sandbox, &host.ns, &alice, &link, &["tap-a"], says);
    // exec -a: the same through argv[0] alone.
    let script = format!("exec -a kvm-natup@lab {} tap-a", host.helper("kvm-natup").display());
    assert_refused_as(&host.sandbox, &host.ns, &alice, Path::new("bash"), &["-c", &script], says);
    assert!(!link_exists(&host.ns, "lab0"));
    // Bob's tap on bob's network: alice cannot move or detach it by naming the network.
    let bob_link = host.sandbox.scratch("bob").join("kvm-natup@lab");
    std::os::unix::fs::symlink(host.helper("kvm-natup"), &bob_link).expect("symlink");
    assert_ok(&host.sandbox.run(&host.ns, Some(&host.bob), &bob_link, &["tap-b"]));
    assert_eq!(controller_of(&host.ns, "tap-b").as_deref(), Some("lab0"));
    let script = format!("exec -a kvm-natup@default {} tap-b", host.helper("kvm-natup").display());
    assert_refused_as(&host.sandbox, &host.ns, &alice, Path::new("bash"), &["-c", &script], "may not use tap-b");
    let script = format!("exec -a kvm-natdown@lab {} tap-b", host.helper("kvm-natdown").display());
    assert_refused_as(&host.sandbox, &host.ns, &alice, Path::new("bash"), &["-c", &script], "may not use network lab");
    assert_eq!(controller_of(&host.ns, "tap-b").as_deref(), Some("lab0"));
}

#[test]
fn granted_users_and_groups_use_their_own_taps() {
    let host = Host::new(Install::Setuid);
    let alice = &host.alice;
    // By user: NAT.
    assert_ok(&host.run(alice, "kvm-natup", "tap-a"));
    assert_eq!(controller_of(&host.ns, "tap-a").as_deref(), Some("br0"));
    assert!(has_chain(&host.ns, "NAT", "br0"));
    // By group: a tap of alice's group on the group's network.
    assert_ok(&host.run(alice, "kvm-natup", "grp-g"));
    assert_eq!(controller_of(&host.ns, "grp-g").as_deref(), Some("grp0"));
    // Bridged: attach only, with the bridge's MTU.
    assert_ok(&host.run(alice, "kvm-ifup", "lan-a"));
    assert_eq!(controller_of(&host.ns, "lan-a").as_deref(), Some("lanbr"));
    assert!(host.ns.ok(&["ip", "-o", "link", "show", "dev", "lan-a"]).contains("mtu 1400"));
    for (helper, tap) in [("kvm-natdown", "tap-a"), ("kvm-natdown", "grp-g"), ("kvm-ifdown", "lan-a")] {
        assert_ok(&host.run(alice, helper, tap));
        assert_eq!(controller_of(&host.ns, tap), None, "{tap}");
    }
    assert!(!link_exists(&host.ns, "br0") && !link_exists(&host.ns, "grp0"));
    assert_no_nat_network(&host.ns, "br0");
    assert_no_nat_network(&host.ns, "grp0");
}

#[test]
fn root_is_not_restricted_by_grants_in_any_install() {
    for install in [Install::Root, Install::Setuid] {
        let host = Host::new(install);
        fs::remove_file(host.sandbox.etc_dir().join("kvm-net.toml")).expect("remove config");
        let out = host.sandbox.run(&host.ns, None, &host.helper("kvm-natup"), &["tap-r"]);
        assert_ok(&out);
        assert_eq!(controller_of(&host.ns, "tap-r").as_deref(), Some("br0"), "{install:?}");
        assert_ok(&host.sandbox.run(&host.ns, None, &host.helper("kvm-natdown"), &["tap-r"]));
        assert!(!link_exists(&host.ns, "br0"));
    }
}

#[test]
fn file_capability_helpers_check_the_same_and_leave_managed_networks_to_root() {
    let host = Host::new(Install::Capabilities);
    let alice = host.alice.clone();
    assert_ok(&host.run(&alice, "kvm-ifup", "lan-a"));
    assert_eq!(controller_of(&host.ns, "lan-a").as_deref(), Some("lanbr"));
    host.refused(&host.bob, "kvm-ifup", "lan-a", "user kvmnet-bob may not use network lan");
    host.refused(&alice, "kvm-ifdown", "up0", "may not use up0");
    host.refused(&alice, "kvm-ifup", "lan-b", "may not use lan-b");
    host.refused(
        &alice,
        "kvm-natup",
        "tap-a",
        "kvm-natup runs with file capabilities, but a managed network needs root",
    );
    assert_ok(&host.run(&alice, "kvm-ifdown", "lan-a"));
    assert_eq!(controller_of(&host.ns, "lan-a"), None);
}

#[test]
fn a_privileged_helper_ignores_the_callers_environment() {
    let host = Host::new(Install::Setuid);
    let evil = host.sandbox.scratch("evil").join("evil.toml");
    fs::write(&evil, "[network.default]\nmode = \"nat\"\nbridge = \"evil0\"\nipv4 = \"10.66.0.1/24\"\nallow_users = [\"kvmnet-alice\"]\n")
        .expect("write");
    let config_var = format!("KVM_NET_CONFIG={}", evil.display());
    let helper = host.helper("kvm-natup");
    let args = [
        config_var.as_str(),
        "KVM_NET_BRIDGE=evil1",
        "KVM_NET_NETWORK=lab",
        "KVM_NET_DEBUG=1",
        "PATH=/nonexistent",
        helper.to_str().expect("UTF-8 path"),
        "tap-a",
    ];
    let out = host.sandbox.run(&host.ns, Some(&host.alice), Path::new("env"), &args);
    assert_ok(&out);
    assert!(stderr(&out).is_empty(), "KVM_NET_DEBUG must be ignored too: {}", stderr(&out));
    assert!(!link_exists(&host.ns, "evil0") && !link_exists(&host.ns, "evil1"));
    assert_eq!(controller_of(&host.ns, "tap-a").as_deref(), Some("br0"), "the system config applies");
}

/// The files of the network's DHCP server and lock, as a NAT network with
/// DHCP run by alice with umask 000 leaves them.
#[test]
fn files_under_run_are_roots_with_fixed_modes_whatever_the_umask() {
    let host = Host::new(Install::Setuid);
    let text = config(&host.alice, &host.bob).replace("dhcp = { enabled = false }\n", "");
    host.sandbox.config(&text);
    let script = format!("umask 000; exec {} tap-a", host.helper("kvm-natup").display());
    assert_ok(&host.sandbox.run(&host.ns, Some(&host.alice), Path::new("sh"), &["-c", &script]));
    let tag = format!("{}-br0", host.ns.id());
    for (path, mode) in [
        ("kvm-net".to_owned(), 0o755),
        ("kvm-net/lock".to_owned(), 0o700),
        (format!("kvm-net/lock/{tag}.lock"), 0o600),
        ("kvm-net/dnsmasq".to_owned(), 0o755),
        (format!("kvm-net/dnsmasq/{tag}"), 0o755),
        (format!("kvm-net/dnsmasq/{tag}/dnsmasq.conf"), 0o644),
        (format!("kvm-net/dnsmasq/{tag}/dnsmasq.log"), 0o600),
    ] {
        assert_eq!(host.sandbox.owner_and_mode(&path), (0, 0, mode), "{path}");
    }
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
}

/// A file a planted symlink points at: it must come out unchanged.
fn victim(sandbox: &Sandbox) -> PathBuf {
    let path = sandbox.scratch("victim").join("shadow");
    fs::write(&path, "secret\n").expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

#[track_caller]
fn assert_untouched(path: &Path) {
    let meta = fs::metadata(path).expect("victim");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o600), "{}", path.display());
    assert_eq!(fs::read_to_string(path).expect("read"), "secret\n");
}

#[test]
fn planted_files_under_run_are_refused_or_replaced_never_followed() {
    let host = Host::new(Install::Setuid);
    let target = victim(&host.sandbox);
    let tag = format!("{}-br0", host.ns.id());
    let lock_dir = host.sandbox.run_dir().join("kvm-net/lock");
    fs::create_dir_all(&lock_dir).expect("mkdir");
    fs::set_permissions(host.sandbox.run_dir().join("kvm-net"), fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::symlink(&target, lock_dir.join(format!("{tag}.lock"))).expect("symlink");
    // What an earlier kvm-net left under a caller's umask of 000: anyone could have planted that link.
    fs::set_permissions(&lock_dir, fs::Permissions::from_mode(0o777)).expect("chmod");
    host.refused(
        &host.alice,
        "kvm-natup",
        "tap-a",
        "/run/kvm-net/lock is unsafe to use: its mode 0777 lets others write",
    );
    // A directory of the caller's own.
    fs::set_permissions(&lock_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::lchown(&lock_dir, Some(host.alice.uid), None).expect("chown");
    host.refused(&host.alice, "kvm-natup", "tap-a", &format!("is owned by uid {}, not root", host.alice.uid));
    // Root's and closed, but with a link in it: never followed.
    std::os::unix::fs::lchown(&lock_dir, Some(0), None).expect("chown");
    let out = host.run(&host.alice, "kvm-natup", "tap-a");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!link_exists(&host.ns, "br0"));
    assert_untouched(&target);
    fs::remove_file(lock_dir.join(format!("{tag}.lock"))).expect("rm");
    // The dnsmasq log is created afresh: a link in its place is replaced.
    host.sandbox.config(&config(&host.alice, &host.bob).replace("dhcp = { enabled = false }\n", ""));
    let dnsmasq_dir = host.sandbox.run_dir().join(format!("kvm-net/dnsmasq/{tag}"));
    fs::create_dir_all(&dnsmasq_dir).expect("mkdir");
    std::os::unix::fs::symlink(&target, dnsmasq_dir.join("dnsmasq.log")).expect("symlink");
    std::os::unix::fs::symlink(&target, dnsmasq_dir.join("dnsmasq.conf")).expect("symlink");
    assert_ok(&host.run(&host.alice, "kvm-natup", "tap-a"));
    assert_untouched(&target);
    assert!(!dnsmasq_dir.join("dnsmasq.log").is_symlink() && !dnsmasq_dir.join("dnsmasq.conf").is_symlink());
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
    assert_untouched(&target);
}

#[test]
fn no_other_user_can_hold_a_lock_and_a_stuck_holder_is_waited_for_with_a_bound() {
    let host = Host::new(Install::Setuid);
    assert_ok(&host.run(&host.alice, "kvm-natup", "tap-a"));
    let lock = format!("/run/kvm-net/lock/{}-br0.lock", host.ns.id());
    // flock needs only a read descriptor: alice cannot even open one.
    let out = host.sandbox.run(&host.ns, Some(&host.alice), Path::new("flock"), &["-s", &lock, "true"]);
    assert!(!out.status.success(), "alice locked {lock}");
    // A kvm-net run of root's that hangs with the lock: the next one gives up with a message.
    // -o: sleep does not inherit the lock, so killing flock releases it.
    let mut holder = host.sandbox.command(&host.ns, None, Path::new("flock"), &["-o", "-x", &lock, "sleep", "30"]);
    let mut holder = holder.stdout(Stdio::null()).spawn().expect("flock");
    let started = Instant::now();
    while host.sandbox.run(&host.ns, None, Path::new("flock"), &["-n", "-x", &lock, "true"]).status.success() {
        assert!(started.elapsed() < Duration::from_secs(30), "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = host.run(&host.bob, "kvm-natup", "tap-b");
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another kvm-net run has held the lock of bridge br0 for 10 s"), "{}", stderr(&out));
    assert_eq!(controller_of(&host.ns, "tap-b"), None);
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
}

#[test]
fn closed_standard_descriptors_do_not_catch_the_helpers_messages() {
    let host = Host::new(Install::Setuid);
    // stderr closed: the lock file must not become fd 2 and receive the refusal.
    let script = format!("exec {} tap-b 2>&-", host.helper("kvm-natup").display());
    let out = host.sandbox.run(&host.ns, Some(&host.alice), Path::new("sh"), &["-c", &script]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(listing(&host.sandbox.run_dir()), Vec::<String>::new(), "nothing is created for a refusal");
    let script = format!("exec {} tap-a 1>&- 2>&-", host.helper("kvm-natup").display());
    assert_ok(&host.sandbox.run(&host.ns, Some(&host.alice), Path::new("sh"), &["-c", &script]));
    let lock = host.sandbox.run_dir().join(format!("kvm-net/lock/{}-br0.lock", host.ns.id()));
    assert_eq!(fs::metadata(lock).expect("lock").len(), 0);
    assert_ok(&host.run(&host.alice, "kvm-natdown", "tap-a"));
}
