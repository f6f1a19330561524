//! `mode = "ovs"`: taps as ports of a real Open vSwitch (ovsdb-server and
//! ovs-vswitchd, userspace datapath, in the test's namespaces), added and
//! removed through OVSDB by kvm-ifup, kvm-ifdown and the bridge helper.
//! Every failure (no bridge, OVS down, vswitchd dead, ovsdb frozen) is one
//! line within seconds and leaves nothing behind; grants and tap ownership
//! apply as for the other modes; status, check and gc see OVS ports.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use kvm_net_tests::bridge::{call, hold_in, qemu_arguments, tap_of, Received};
use kvm_net_tests::helper;
use kvm_net_tests::host::assert_ok;
use kvm_net_tests::inspect::is_up;
use kvm_net_tests::ovs::Ovs;
use kvm_net_tests::run::stderr;
use kvm_net_tests::run::ConfigFile;
use kvm_net_tests::sandbox::{add_owned_tap, Install, Sandbox, User};
use kvm_net_tests::Netns;

const CONFIG: &str = r#"
[network.ovn]
mode = "ovs"
bridge = "br-int"
taps = ["ovn-*"]

[network.tagged]
mode = "ovs"
bridge = "br-vlan"
taps = ["vl-*"]
iface_id = "vm-{tap}-nic0"
vlan = 10

[network.nowhere]
mode = "ovs"
bridge = "br-none"
taps = ["nw-*"]
"#;

/// Long enough for any bounded wait of kvm-net's (3 s per OVSDB answer, 5 s
/// for vswitchd) to have ended with its error, not a benchmark.
const BOUND: Duration = Duration::from_secs(12);

/// A namespace with Open vSwitch (bridges br-int and br-vlan) and the config.
struct Lab {
    ovs: Ovs,
    ns: Netns,
    config: ConfigFile,
}

impl Lab {
    fn new() -> Self {
        let ns = Netns::new();
        let ovs = Ovs::start(&ns, &["br-int", "br-vlan"]);
        Self { ovs, ns, config: ConfigFile::new(CONFIG) }
    }

    /// A kvm-net binary run as root beside OVS, with the lab's config.
    fn run(&self, bin: &str, args: &[&str]) -> Output {
        self.ovs.run(&self.ns, helper(bin), args, &[("KVM_NET_CONFIG", self.config.path())])
    }

    fn ok(&self, bin: &str, tap: &str) {
        let out = self.run(bin, &[tap]);
        assert_ok(&out);
        assert!(out.stderr.is_empty(), "{bin} {tap}: {}", stderr(&out));
    }

    /// Runs `bin tap`, which must fail with exit 1 saying `says`, within
    /// [`BOUND`], leaving the namespace and every OVS port as they were.
    fn refused(&self, bin: &str, tap: &str, says: &str) -> String {
        let (links, ports) = (self.ns.snapshot(), self.all_ports());
        let started = Instant::now();
        let out = self.run(bin, &[tap]);
        let elapsed = started.elapsed();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{bin} {tap}: {text}");
        assert!(text.contains(says), "{bin} {tap}: {text:?} lacks {says:?}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
        assert!(elapsed < BOUND, "{bin} {tap} took {elapsed:?}");
        assert_eq!(self.ns.snapshot(), links, "{bin} {tap} changed links");
        assert_eq!(self.all_ports(), ports, "{bin} {tap} changed OVS");
        text
    }

    /// Every bridge's ports, read from the database (no vswitchd needed).
    fn all_ports(&self) -> String {
        self.ovs.vsctl(&self.ns, &["--no-wait", "--format=csv", "--columns=name,ports", "list", "Bridge"])
    }

    fn ports(&self, bridge: &str) -> Vec<String> {
        let out = self.ovs.vsctl(&self.ns, &["--no-wait", "list-ports", bridge]);
        out.lines().map(str::to_owned).collect()
    }

    /// `external_ids:KEY` of the Interface `tap`, if set.
    fn external_id(&self, tap: &str, key: &str) -> Option<String> {
        let out = self
            .ovs
            .vsctl(&self.ns, &["--no-wait", "--if-exists", "get", "Interface", tap, &format!("external_ids:{key}")]);
        Some(out.trim_matches('"').to_owned()).filter(|v| !v.is_empty())
    }

    fn column(&self, table: &str, row: &str, column: &str) -> String {
        self.ovs.vsctl(&self.ns, &["--no-wait", "get", table, row, column])
    }

    fn tap(&self, name: &str) {
        self.ns.ok(&["ip", "tuntap", "add", "dev", name, "mode", "tap"]);
    }

    /// `kvm-net SUBCOMMAND --json`'s output and exit status.
    fn admin(&self, args: &[&str]) -> (String, Option<i32>) {
        let out = self.run("kvm-net", args);
        (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code())
    }
}

#[test]
fn a_tap_becomes_a_port_with_ovns_external_ids_and_leaves_on_ifdown() {
    let lab = Lab::new();
    lab.tap("ovn-a");
    lab.ok("kvm-ifup", "ovn-a");
    lab.ok("kvm-ifup", "ovn-a");
    assert_eq!(lab.ports("br-int"), ["ovn-a"], "one port, however often it is added");
    assert_eq!(lab.external_id("ovn-a", "iface-id").as_deref(), Some("ovn-a"), "default template {{tap}}");
    assert_eq!(lab.external_id("ovn-a", "iface-status").as_deref(), Some("active"));
    assert_eq!(lab.external_id("ovn-a", "kvm-net-network").as_deref(), Some("ovn"));
    let ofport: i64 = lab.column("Interface", "ovn-a", "ofport").parse().expect("an ofport");
    assert!(ofport > 0, "vswitchd opened it before kvm-ifup returned: ofport {ofport}");
    assert!(is_up(&lab.ns, "ovn-a"), "the tap is up");
    assert_eq!(lab.column("Port", "ovn-a", "tag"), "[]", "no vlan: no tag");

    lab.ok("kvm-ifdown", "ovn-a");
    lab.ok("kvm-ifdown", "ovn-a");
    assert!(lab.ports("br-int").is_empty(), "removed");
    assert!(!is_up(&lab.ns, "ovn-a"), "set down");
    lab.ns.ok(&["ip", "link", "del", "ovn-a"]);
    lab.ok("kvm-ifdown", "ovn-a");
}

#[test]
fn a_qemu_tap_with_virtio_net_headers_on_the_userspace_datapath_is_attached_with_a_warning() {
    let lab = Lab::new();
    lab.ns.ok(&["ip", "tuntap", "add", "dev", "ovn-v", "mode", "tap", "vnet_hdr"]);
    let out = lab.run("kvm-ifup", &["ovn-v"]);
    assert_ok(&out);
    let text = stderr(&out);
    assert!(text.starts_with("kvm-ifup: warning: Open vSwitch bridge br-int (the userspace datapath)"), "{text}");
    assert!(text.contains("vnet_hdr=off"), "{text}");
    assert_eq!(lab.ports("br-int"), ["ovn-v"]);
}

#[test]
fn the_iface_id_template_and_the_vlan_tag_are_applied() {
    let lab = Lab::new();
    lab.tap("vl-1");
    lab.ok("kvm-ifup", "vl-1");
    assert_eq!(lab.ports("br-vlan"), ["vl-1"]);
    assert!(lab.ports("br-int").is_empty());
    assert_eq!(lab.external_id("vl-1", "iface-id").as_deref(), Some("vm-vl-1-nic0"));
    assert_eq!(lab.column("Port", "vl-1", "tag"), "10");
    lab.ok("kvm-ifdown", "vl-1");
    assert!(lab.ports("br-vlan").is_empty());
}

#[test]
fn a_port_readded_after_someone_changed_it_gets_kvm_nets_settings_back() {
    let lab = Lab::new();
    lab.tap("vl-2");
    lab.ovs.vsctl(
        &lab.ns,
        &[
            "add-port",
            "br-vlan",
            "vl-2",
            "tag=99",
            "--",
            "set",
            "Interface",
            "vl-2",
            "external_ids:iface-id=stale",
            "external_ids:owner=admin",
        ],
    );
    lab.ok("kvm-ifup", "vl-2");
    assert_eq!(lab.ports("br-vlan"), ["vl-2"]);
    assert_eq!(lab.external_id("vl-2", "iface-id").as_deref(), Some("vm-vl-2-nic0"));
    assert_eq!(lab.external_id("vl-2", "owner").as_deref(), Some("admin"), "other keys are not kvm-net's to drop");
    assert_eq!(lab.column("Port", "vl-2", "tag"), "10");
    // A port of another bridge is not moved.
    lab.tap("ovn-x");
    lab.ovs.vsctl(&lab.ns, &["add-port", "br-vlan", "ovn-x"]);
    lab.refused("kvm-ifup", "ovn-x", "ovn-x is a port of Open vSwitch bridge br-vlan, not br-int");
}

#[test]
fn a_missing_ovs_bridge_is_one_line_and_changes_nothing() {
    let lab = Lab::new();
    lab.tap("nw-1");
    lab.refused("kvm-ifup", "nw-1", "Open vSwitch has no bridge br-none");
}

#[test]
fn ovs_not_running_is_one_line_within_seconds_and_changes_nothing() {
    let lab = Lab::new();
    lab.tap("ovn-a");
    lab.ovs.signal(&lab.ns, "ovs-vswitchd", Signal::SIGTERM);
    lab.ovs.signal(&lab.ns, "ovsdb-server", Signal::SIGTERM);
    // Gone when their processes and the socket are (vswitchd puts its
    // ports' flags back on its way out).
    let deadline = Instant::now() + BOUND;
    let running = |daemon: &str| {
        lab.ns
            .processes()
            .iter()
            .any(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == daemon))
    };
    while lab.ovs.exists(&lab.ns, Path::new("/run/openvswitch/db.sock"))
        || running("ovs-vswitchd")
        || running("ovsdb-server")
    {
        assert!(Instant::now() < deadline, "Open vSwitch did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = lab.ns.snapshot();
    let out = lab.run("kvm-ifup", &["ovn-a"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Open vSwitch's database at /run/openvswitch/db.sock cannot be used"), "{text}");
    assert!(text.contains("ovsdb-server is not running"), "{text}");
    assert_eq!(lab.ns.snapshot(), before);
    let (status, _) = lab.admin(&["status", "--json"]);
    assert!(status.contains("\"state\": \"unreachable\""), "{status}");
    let (check, code) = lab.admin(&["check", "--json"]);
    assert!(check.contains("\"ovs-unreachable\""), "{check}");
    assert_eq!(code, Some(2), "{check}");
}

#[test]
fn a_port_added_while_vswitchd_is_dead_is_taken_out_again() {
    let lab = Lab::new();
    lab.tap("ovn-a");
    lab.ovs.signal(&lab.ns, "ovs-vswitchd", Signal::SIGKILL);
    let text = lab.refused("kvm-ifup", "ovn-a", "ovs-vswitchd did not apply port ovn-a of bridge br-int");
    assert!(text.contains("start ovs-vswitchd"), "{text}");
}

#[test]
fn a_frozen_ovsdb_server_is_never_sent_a_change() {
    let lab = Lab::new();
    lab.tap("ovn-a");
    let (links, ports) = (lab.ns.snapshot(), lab.all_ports());
    lab.ovs.signal(&lab.ns, "ovsdb-server", Signal::SIGSTOP);
    let started = Instant::now();
    let out = lab.run("kvm-ifup", &["ovn-a"]);
    let elapsed = started.elapsed();
    lab.ovs.signal(&lab.ns, "ovsdb-server", Signal::SIGCONT);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Open vSwitch's database at /run/openvswitch/db.sock cannot be used"), "{text}");
    assert!(text.contains("did not answer within 3 s"), "{text}");
    assert!(elapsed < BOUND, "kvm-ifup took {elapsed:?}");
    // Whatever the server still had queued from kvm-ifup runs now: it
    // serves its connections in turn, one loop at a time, so two answers
    // on a new connection of ours come after it has read and run them.
    lab.all_ports();
    assert_eq!(lab.all_ports(), ports, "a transaction reached the frozen server");
    assert_eq!(lab.ns.snapshot(), links);
}

#[test]
fn a_stopped_ovsdb_server_whose_queue_is_full_is_one_line_within_seconds() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let lab = Lab::new();
    lab.tap("ovn-a");
    lab.ovs.signal(&lab.ns, "ovsdb-server", Signal::SIGSTOP);
    // Connections nobody takes, until the kernel's queue for the socket is full.
    let address = UnixAddr::new(&lab.ovs.socket()).expect("the socket's address");
    let mut queued = Vec::new();
    loop {
        let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK, None).expect("a socket");
        match connect(fd.as_raw_fd(), &address) {
            Ok(()) => queued.push(fd),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(err) => panic!("connecting to ovsdb-server: {err}"),
        }
        assert!(queued.len() < 10_000, "the queue never filled");
    }
    let before = lab.ns.snapshot();
    // Killed past the bound, so that a helper that waits forever fails the test instead of hanging it.
    let mut command = lab.ovs.command(&lab.ns, helper("kvm-ifup"));
    command.arg("ovn-a").env("KVM_NET_CONFIG", lab.config.path()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("kvm-ifup");
    let started = Instant::now();
    while child.try_wait().expect("waiting for kvm-ifup").is_none() && started.elapsed() < BOUND {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("kvm-ifup's output");
    let elapsed = started.elapsed();
    lab.ovs.signal(&lab.ns, "ovsdb-server", Signal::SIGCONT);
    assert!(elapsed < BOUND, "kvm-ifup waited {elapsed:?} on a full queue");
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ovsdb-server took no connection from its full queue within 3 s"), "{text}");
    assert_eq!(lab.ns.snapshot(), before);
}

#[test]
fn status_check_and_gc_see_ports_that_vanished() {
    let lab = Lab::new();
    for tap in ["ovn-a", "ovn-b", "ovn-c"] {
        lab.tap(tap);
        lab.ok("kvm-ifup", tap);
    }
    let (status, code) = lab.admin(&["status", "--json"]);
    assert_eq!(code, Some(0), "{status}");
    let parsed: serde_json::Value = serde_json::from_str(&status).expect("status --json");
    let ovn =
        &parsed["networks"].as_array().expect("networks").iter().find(|n| n["name"] == "ovn").expect("ovn")["ports"];
    let names: Vec<&str> = ovn.as_array().expect("ports").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names.len(), 3, "{status}");
    assert!(
        ovn.as_array().expect("ports").iter().all(|p| p["ovn_installed"] == false && p["iface_id"] == p["name"]),
        "{status}"
    );

    // ovn-b's VM went without its downscript, and its watcher with the host
    // (a crash); ovn-c's port was removed by someone else.
    kill_watchers(&lab);
    lab.ns.ok(&["ip", "link", "del", "ovn-b"]);
    lab.ovs.vsctl(&lab.ns, &["del-port", "ovn-c"]);
    let (check, code) = lab.admin(&["check", "--json"]);
    assert_eq!(code, Some(2), "{check}");
    assert_eq!(codes(&check), ["ovs-no-bridge", "ovs-port-missing", "ovs-stale-port"], "{check}");
    assert!(
        check.contains("\"ovs-stale-port\"") && check.contains("port ovn-b of Open vSwitch bridge br-int"),
        "{check}"
    );
    assert!(check.contains("\"ovs-port-missing\"") && check.contains("tap ovn-c of network ovn"), "{check}");
    assert!(!check.contains("ovn-a"), "{check}");

    let (gc, code) = lab.admin(&["gc"]);
    assert_eq!(code, Some(0), "{gc}");
    assert!(gc.contains("removed port ovn-b of Open vSwitch bridge br-int (network ovn)"), "{gc}");
    assert_eq!(lab.ports("br-int"), ["ovn-a"]);
    lab.ok("kvm-ifup", "ovn-c");
    let (check, _) = lab.admin(&["check", "--json"]);
    assert_eq!(codes(&check), ["ovs-no-bridge"], "only network nowhere's bridge is missing now: {check}");
}

/// Kills every watcher in the lab's namespace (as a crash or a reboot
/// would), and waits until they are gone.
fn kill_watchers(lab: &Lab) {
    let watchers = || -> Vec<i32> {
        lab.ns
            .processes()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kvm-net-watch")
            })
            .filter(|pid| kvm_net_tests::inspect::alive(*pid))
            .collect()
    };
    for pid in watchers() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    wait_for("the watchers die", || watchers().is_empty());
}

/// `kvm-ifup`'s port goes with its tap when its VM goes without its
/// downscript (a watcher takes it away); and a stale port left while no
/// watcher ran (a crash, a reboot) never takes a tap of its name into its
/// network: not the bridge helper's tap of another user's VM on a NAT
/// network, and `kvm-net gc` removes it although a tap of that name exists.
#[test]
fn a_stale_port_never_takes_a_tap_of_its_name_into_its_network() {
    let ns = Netns::new();
    let ovs = Ovs::start(&ns, &["br-int", "br-vlan"]);
    let config = ConfigFile::new(&format!(
        "{CONFIG}\n[network.plain]\nmode = \"nat\"\nbridge = \"plainbr\"\nipv4 = \"10.70.0.1/24\"\ndhcp = {{ enabled = false }}\n"
    ));
    let lab = Lab { ovs, ns, config };
    // A script tap whose VM is killed: the watcher kvm-ifup left takes its port away.
    lab.tap("ovn-w");
    lab.ok("kvm-ifup", "ovn-w");
    lab.ns.ok(&["ip", "link", "del", "ovn-w"]);
    wait_for("the watcher removes the port of a killed VM's script tap", || lab.ports("br-int").is_empty());

    // A bridge helper's VM on network ovn; the host crashes (no watcher) and the tap goes.
    let received = root_call(&lab, "ovn");
    assert!(received.succeeded(), "{}", received.stderr());
    let fd = received.tap.expect("a tap");
    let (name, _) = tap_of(&fd);
    assert_eq!(lab.ports("br-int"), [name.as_str()]);
    kill_watchers(&lab);
    drop(fd);
    wait_for("the tap goes with its VM", || !lab.ns.output(&["ip", "link", "show", &name]).status.success());
    assert_eq!(lab.ports("br-int"), [name.as_str()], "the stale port stays while nothing watches");
    // Another VM, on the NAT network, gets a tap of the same name from the kernel.
    let received = root_call(&lab, "plain");
    assert!(received.succeeded(), "{}", received.stderr());
    let other = received.tap.expect("a tap");
    assert_eq!(tap_of(&other).0, name, "the kernel reuses the lowest free name");
    assert!(lab.ports("br-int").is_empty(), "a tap of the NAT network joined Open vSwitch network ovn");
    assert!(lab.external_id(&name, "iface-id").is_none(), "the stale Interface row is still there");
    drop(other);

    // A script tap's stale port, and a tap of that name kvm-net never attached.
    lab.tap("ovn-z");
    lab.ok("kvm-ifup", "ovn-z");
    kill_watchers(&lab);
    lab.ns.ok(&["ip", "link", "del", "ovn-z"]);
    lab.tap("ovn-z");
    let (gc, code) = lab.admin(&["gc"]);
    assert_eq!(code, Some(0), "{gc}");
    assert!(gc.contains("removed port ovn-z of Open vSwitch bridge br-int (network ovn)"), "{gc}");
    assert!(lab.ports("br-int").is_empty(), "{gc}");
}

/// The codes of `kvm-net check --json`'s findings, sorted.
fn codes(check: &str) -> Vec<String> {
    let parsed: serde_json::Value = serde_json::from_str(check).expect("check --json");
    let findings = parsed.as_array().or_else(|| parsed["findings"].as_array()).expect("findings");
    let mut codes: Vec<String> = findings.iter().filter_map(|f| f["code"].as_str().map(str::to_owned)).collect();
    codes.sort();
    codes
}

/// The bridge helper run by root beside OVS, as QEMU runs it.
fn root_call(lab: &Lab, network: &str) -> Received {
    let args = qemu_arguments(network, true);
    let mut command = lab.ovs.command(&lab.ns, helper("kvm-net-bridge-helper"));
    command.args(args).env("KVM_NET_CONFIG", lab.config.path());
    call(command)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_bridge_helper_adds_its_tap_and_its_watcher_removes_the_port_with_the_vm() {
    let lab = Lab::new();
    let received = root_call(&lab, "tagged");
    assert!(received.succeeded(), "{}", received.stderr());
    let fd = received.tap.expect("a tap");
    let (name, vnet_header) = tap_of(&fd);
    assert!(!vnet_header, "a netdev bridge forwards unfinished checksums: QEMU must get a tap without vnet headers");
    assert_eq!(lab.ports("br-vlan"), [name.as_str()]);
    assert_eq!(lab.external_id(&name, "iface-id"), Some(format!("vm-{name}-nic0")));
    assert!(is_up(&lab.ns, &name));
    let mut holder = hold_in(&lab.ns, fd);
    holder.kill().expect("killing the VM");
    holder.wait().expect("reaping it");
    wait_for("the watcher removes the port of a tap gone with its VM", || lab.ports("br-vlan").is_empty());
    wait_for("the watcher leaves with the last port", || {
        !lab.ns
            .processes()
            .iter()
            .any(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kvm-net-watch"))
    });
}

#[test]
fn grants_and_tap_ownership_apply_to_ovs_ports_in_every_install() {
    let (alice, bob) = (User::alice(), User::bob());
    let sandbox = Sandbox::new();
    sandbox.config(&format!(
        "[network.ovn]\nmode = \"ovs\"\nbridge = \"br-int\"\ntaps = [\"ovn-*\"]\nallow_users = [\"{}\"]\nmax_taps_per_user = 1\n",
        alice.name
    ));
    let ns = Netns::new();
    let ovs = Ovs::start_in(&sandbox, &ns, &["br-int"]);
    add_owned_tap(&ns, "ovn-a", Some(&alice), None);
    add_owned_tap(&ns, "ovn-b", Some(&bob), None);
    add_owned_tap(&ns, "ovn-r", None, None);
    let ports = || ovs.vsctl(&ns, &["--no-wait", "list-ports", "br-int"]);
    let setuid = sandbox.install(Install::Setuid);
    let as_user =
        |user: &User, bin: &Path, tap: &str| ovs.command_as(&ns, Some(user), bin, &[tap]).output().expect("a helper");
    let refused = |user: &User, bin: &Path, tap: &str, says: &str| {
        let before = (ns.snapshot(), ports());
        let out = as_user(user, bin, tap);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{} lacks {says:?}", stderr(&out));
        assert_eq!((ns.snapshot(), ports()), before, "a refusal changed something");
    };

    refused(&bob, &setuid.join("kvm-ifup"), "ovn-b", "may not use network ovn");
    refused(&alice, &setuid.join("kvm-ifup"), "ovn-b", "ovn-b");
    assert_ok(&as_user(&alice, &setuid.join("kvm-ifup"), "ovn-a"));
    assert_eq!(ports(), "ovn-a");
    // Root's VM on the same network: alice may not take it off.
    assert_ok(&ovs.command_as(&ns, None, &setuid.join("kvm-ifup"), &["ovn-r"]).output().expect("root's kvm-ifup"));
    refused(&alice, &setuid.join("kvm-ifdown"), "ovn-r", "ovn-r");
    refused(&bob, &setuid.join("kvm-ifdown"), "ovn-a", "ovn-a");
    assert_ok(&as_user(&alice, &setuid.join("kvm-ifdown"), "ovn-a"));
    assert_eq!(ports(), "ovn-r");

    // The bridge helper: alice's tap is hers alone, and counts toward her bound.
    let helper = setuid.join("kvm-net-bridge-helper");
    let args = qemu_arguments("ovn", true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = call(ovs.command_as(&ns, Some(&alice), &helper, &args));
    assert!(first.succeeded(), "{}", first.stderr());
    let first = first.tap.expect("a tap");
    let name = tap_of(&first).0;
    let details = ns.ok(&["ip", "-d", "link", "show", &name]);
    assert!(
        details.contains(&format!("user {}", alice.name)) || details.contains(&format!("user {}", alice.uid)),
        "{details}"
    );
    let second = call(ovs.command_as(&ns, Some(&alice), &helper, &args));
    assert!(!second.succeeded() && second.stderr().contains("max_taps_per_user"), "{}", second.stderr());
    assert_eq!(ports().lines().count(), 2, "the refused tap's port was taken out again: {}", ports());

    // File capabilities cannot reach the database: refused, saying so.
    let caps = sandbox.install(Install::Capabilities);
    refused(&alice, &caps.join("kvm-ifup"), "ovn-a", "an Open vSwitch port needs root");
    let denied = call(ovs.command_as(&ns, Some(&alice), &caps.join("kvm-net-bridge-helper"), &args));
    assert!(!denied.succeeded() && denied.stderr().contains("an Open vSwitch port needs root"), "{}", denied.stderr());
    drop(first);
}
