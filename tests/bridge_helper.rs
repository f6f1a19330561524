//! `kvm-net-bridge-helper` without QEMU: QEMU's side of the protocol (a
//! socket pair, `--fd=N --br=NAME`, the tap's descriptor received) played by
//! the test, under the firewall backend under test. The QEMU scenarios, with
//! QEMU run by an unprivileged user, are in tests/qemu.rs.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvm_net_tests::bridge::{call, hold_in, qemu_arguments, tap_of, Received, HELPER_FD};
use kvm_net_tests::helper;
use kvm_net_tests::inspect::{
    assert_network_gone_within, controller_of, firewall, has_chain, is_up, link_exists, mtu_of, watchers_idle,
};
use kvm_net_tests::run::{assert_refusal, ConfigFile};
use kvm_net_tests::sandbox::{Install, Sandbox, User};
use kvm_net_tests::Netns;

const HELPER: &str = "kvm-net-bridge-helper";

/// How long the network may outlive its last VM.
const TEARDOWN: Duration = Duration::from_secs(1);

/// The helper run by root in `ns`, as QEMU runs it.
fn root_call(ns: &Netns, bridge: &str, use_vnet: bool, config: Option<&ConfigFile>) -> Received {
    let mut command = ns.cmd(helper(HELPER));
    command.args(qemu_arguments(bridge, use_vnet)).env_remove("KVM_NET_CONFIG");
    if let Some(config) = config {
        command.env("KVM_NET_CONFIG", config.path());
    }
    command.env("KVM_NET_FIREWALL", kvm_net_tests::inspect::backend().as_str());
    call(command)
}

fn tap(received: Received) -> OwnedFd {
    assert!(received.succeeded(), "the helper failed ({}): {}", received.output.status, received.stderr());
    assert!(received.stderr().is_empty(), "the helper printed: {}", received.stderr());
    received.tap.expect("a tap descriptor")
}

/// Panics unless the network on `bridge` and its watcher are gone within [`TEARDOWN`].
fn assert_gone_within_teardown(ns: &Netns, bridge: &str) {
    assert_network_gone_within(ns, bridge, TEARDOWN);
}

fn watch_files(ns: &Netns) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(ns.kvm_net_dir().join("watch")) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("{}-", ns.id())))
        .collect()
}

#[test]
fn root_gets_a_tap_on_a_nat_network_made_for_it_and_gone_after_it() {
    let ns = Netns::new();
    let fd = tap(root_call(&ns, "default", true, None));
    let (name, vnet_hdr) = tap_of(&fd);
    assert!(name.starts_with("kvmtap"), "{name}");
    assert!(vnet_hdr, "--use-vnet asks for virtio-net headers");
    assert_eq!(controller_of(&ns, &name).as_deref(), Some("br0"));
    assert!(is_up(&ns, &name));
    assert_eq!(mtu_of(&ns, &name), mtu_of(&ns, "br0"));
    let link = ns.ok(&["ip", "-o", "link", "show", "dev", &name]);
    assert!(link.contains("link/ether fe:"), "the tap's MAC must not become the bridge's: {link}");
    for kind in ["NAT", "FWD"] {
        assert!(has_chain(&ns, kind, "br0"), "no {kind} chain for br0");
    }
    assert_eq!(ns.processes().len(), 1, "one watcher, nothing else");
    assert_eq!(watch_files(&ns).len(), 1);
    drop(fd);
    assert_gone_within_teardown(&ns, "br0");
    assert!(!link_exists(&ns, &name), "the tap outlived its descriptor");
    assert_eq!(watch_files(&ns), Vec::<String>::new(), "the watcher's lock file stayed");
}

#[test]
fn without_use_vnet_the_tap_has_no_vnet_header() {
    let ns = Netns::new();
    let fd = tap(root_call(&ns, "br0", false, None));
    assert!(!tap_of(&fd).1);
    drop(fd);
    assert_gone_within_teardown(&ns, "br0");
}

#[test]
fn the_network_stays_until_its_last_tap_goes() {
    let ns = Netns::new();
    let first = tap(root_call(&ns, "default", true, None));
    let second = tap(root_call(&ns, "default", true, None));
    let second_name = tap_of(&second).0;
    assert_eq!(ns.processes().len(), 1, "one watcher per network");
    drop(first);
    // The first tap leaves the bridge; once the watcher has handled that, the network must still be there.
    let first_gone = Instant::now() + TEARDOWN;
    while ns.ok(&["bridge", "link", "show", "master", "br0"]).lines().count() > 1 {
        assert!(Instant::now() < first_gone, "the first tap never left the bridge");
        std::thread::sleep(Duration::from_millis(5));
    }
    watchers_idle(&ns, TEARDOWN);
    assert_eq!(controller_of(&ns, &second_name).as_deref(), Some("br0"), "the network went under a VM");
    assert!(has_chain(&ns, "NAT", "br0"));
    drop(second);
    assert_gone_within_teardown(&ns, "br0");
}

#[test]
fn a_vm_starting_while_the_network_is_torn_down_gets_a_working_one() {
    let ns = Netns::new();
    for round in 0..15 {
        let old = tap(root_call(&ns, "default", true, None));
        drop(old);
        // Teardown has begun (or will): the next VM must get a whole network anyway.
        let new = tap(root_call(&ns, "default", true, None));
        let name = tap_of(&new).0;
        std::thread::sleep(Duration::from_millis(round * 10));
        assert_eq!(controller_of(&ns, &name).as_deref(), Some("br0"), "round {round}");
        assert!(has_chain(&ns, "NAT", "br0") && has_chain(&ns, "FWD", "br0"), "round {round}: rules missing");
        assert_eq!(ns.processes().len(), 1, "round {round}: one watcher");
        drop(new);
        assert_gone_within_teardown(&ns, "br0");
    }
}

#[test]
fn a_bridged_network_is_attached_to_and_never_torn_down() {
    let ns = Netns::new();
    // A fixed MAC: a bridge with a random one may take a port's, and keep it.
    ns.sh("ip link add br-lan address 02:00:00:00:00:01 type bridge; ip link set br-lan mtu 1400 up");
    let before = firewall(&ns);
    let config = ConfigFile::new("[network.lan]\nmode = \"bridged\"\nbridge = \"br-lan\"\n");
    let fd = tap(root_call(&ns, "lan", true, Some(&config)));
    let name = tap_of(&fd).0;
    assert_eq!(controller_of(&ns, &name).as_deref(), Some("br-lan"));
    assert_eq!(mtu_of(&ns, &name), 1400, "the tap takes the bridge's MTU");
    assert!(ns.processes().is_empty(), "no watcher for a bridge kvm-net does not own");
    drop(fd);
    let deadline = Instant::now() + TEARDOWN;
    while link_exists(&ns, &name) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!link_exists(&ns, &name), "the tap outlived its descriptor");
    assert_eq!(firewall(&ns), before, "a bridged network gets no rules");
    assert_eq!(mtu_of(&ns, "br-lan"), 1400, "the host's bridge must be as it was");
}

/// The helper refused with exit status `code`: one line naming itself, no
/// tap, nothing changed.
fn assert_helper_refused(ns: &Netns, received: &Received, code: i32, says: &str) {
    let stderr = assert_refusal(&received.output, code, "kvm-net-bridge-helper", says);
    assert!(received.tap.is_none(), "no tap may be sent");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("kvm-net-bridge-helper: "), "{stderr}");
    assert!(!link_exists(ns, "br0"), "nothing may be created");
    assert!(ns.processes().is_empty(), "no watcher for a refusal");
}

#[test]
fn bad_arguments_get_one_line_and_change_nothing() {
    let ns = Netns::new();
    let before = ns.snapshot();
    let run = |args: &[&str]| {
        let mut command = ns.cmd(helper(HELPER));
        command.args(args);
        call(command)
    };
    let fd = format!("--fd={HELPER_FD}");
    assert_helper_refused(&ns, &run(&["--br=default"]), 2, "no --fd=N given");
    assert_helper_refused(&ns, &run(&[&fd]), 2, "no --br=NAME given");
    assert_helper_refused(&ns, &run(&["--fd=0", "--br=default"]), 2, "--fd=0 is not a socket");
    assert_helper_refused(&ns, &run(&["--fd=99", "--br=default"]), 2, "--fd=99 is not an open descriptor");
    assert_helper_refused(&ns, &run(&[&fd, "--br=default", "--extra"]), 2, "unexpected argument");
    assert_helper_refused(&ns, &run(&[&fd, "--br=nope"]), 1, "--br=nope names no network");
    let status = run(&[&fd]).output.status.code();
    assert_eq!(status, Some(2), "a wrong command line exits 2");
    assert_eq!(ns.snapshot(), before);
}

/// Config for the sandbox: default granted to alice, with DHCP; lan (bridged) too.
fn granted_config(alice: &User) -> String {
    format!(
        "[network.default]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"192.168.100.1/24\"\nallow_users = [\"{}\"]\n\
         [network.lan]\nmode = \"bridged\"\nbridge = \"br-lan\"\nallow_users = [\"{}\"]\n\
         [network.lab]\nmode = \"isolated\"\nbridge = \"lab0\"\n",
        alice.name, alice.name
    )
}

fn sandboxed_call(sandbox: &Sandbox, ns: &Netns, user: &User, program: &Path, bridge: &str) -> Received {
    call(sandbox.command(
        ns,
        Some(user),
        program,
        &qemu_arguments(bridge, true).iter().map(String::as_str).collect::<Vec<_>>(),
    ))
}

#[test]
fn a_granted_user_gets_a_tap_of_their_own_and_others_are_refused() {
    let (alice, bob) = (User::alice(), User::bob());
    let sandbox = Sandbox::new();
    sandbox.config(&granted_config(&alice));
    let program = sandbox.install(Install::Setuid).join(HELPER);
    let ns = Netns::new();
    let before = ns.snapshot();
    assert_helper_refused(
        &ns,
        &sandboxed_call(&sandbox, &ns, &bob, &program, "default"),
        1,
        "may not use network default",
    );
    assert_helper_refused(&ns, &sandboxed_call(&sandbox, &ns, &alice, &program, "lab"), 1, "may not use network lab");
    assert_eq!(ns.snapshot(), before, "a refusal changes nothing");
    let fd = tap(sandboxed_call(&sandbox, &ns, &alice, &program, "default"));
    let name = tap_of(&fd).0;
    assert_eq!(controller_of(&ns, &name).as_deref(), Some("br0"));
    let details = ns.ok(&["ip", "-d", "link", "show", &name]);
    assert!(
        details.contains(&format!("user {}", alice.name)) || details.contains(&format!("user {}", alice.uid)),
        "{details}"
    );
    let dnsmasq = sandbox.run_dir().join(format!("kvm-net/dnsmasq/{}-br0", ns.id()));
    assert!(dnsmasq.exists(), "DHCP is on for default: its dnsmasq must run");
    drop(fd);
    assert_gone_within_teardown(&ns, "br0");
    assert!(!dnsmasq.exists(), "{} left behind", dnsmasq.display());
}

#[test]
fn a_capability_install_attaches_to_bridged_networks_and_leaves_managed_ones_to_root() {
    let alice = User::alice();
    let sandbox = Sandbox::new();
    sandbox.config(&granted_config(&alice));
    let program = sandbox.install(Install::Capabilities).join(HELPER);
    let ns = Netns::new();
    assert_helper_refused(&ns, &sandboxed_call(&sandbox, &ns, &alice, &program, "default"), 1, "needs root");
    ns.sh("ip link add br-lan type bridge; ip link set br-lan up");
    let fd = tap(sandboxed_call(&sandbox, &ns, &alice, &program, "lan"));
    assert_eq!(controller_of(&ns, &tap_of(&fd).0).as_deref(), Some("br-lan"));
}

#[test]
fn status_shows_the_holder_and_a_killed_holder_takes_the_network_with_it() {
    let ns = Netns::new();
    let fd = tap(root_call(&ns, "default", true, None));
    let name = tap_of(&fd).0;
    // What QEMU is to the tap: a process in the namespace holding it.
    let mut holder = hold_in(&ns, fd);
    let mut status = ns.cmd(helper("kvm-net"));
    status.args(["status", "--json"]).env_remove("KVM_NET_CONFIG");
    let out = status.output().expect("kvm-net status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("\"name\": \"{name}\"")), "{text}");
    assert!(text.contains(&format!("\"pid\": {}", holder.id())), "the holder's pid must be shown: {text}");
    holder.kill().expect("SIGKILL to the holder");
    holder.wait().expect("reaping the holder");
    assert_gone_within_teardown(&ns, "br0");
}

#[test]
fn version_and_help_need_no_socket() {
    let out = Command::new(helper(HELPER)).arg("--help").output().expect("--help");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--fd=N --br=NETWORK"));
}

#[test]
fn taps_on_a_network_with_isolated_guests_are_isolated_ports() {
    let ns = Netns::new();
    let config = ConfigFile::new(
        "[network.lab]\nmode = \"nat\"\nbridge = \"lab0\"\nipv4 = \"10.66.0.1/24\"\nisolate_guests = true\ndhcp = { enabled = false }\n",
    );
    let fds: Vec<OwnedFd> = (0..2).map(|_| tap(root_call(&ns, "lab", true, Some(&config)))).collect();
    for fd in &fds {
        let name = tap_of(fd).0;
        assert_eq!(controller_of(&ns, &name).as_deref(), Some("lab0"));
        assert!(is_up(&ns, &name));
        let port = ns.ok(&["bridge", "-d", "link", "show", "dev", &name]);
        assert!(port.contains("isolated on"), "{port}");
    }
    drop(fds);
    assert_gone_within_teardown(&ns, "lab0");
}

#[test]
fn taps_on_a_network_with_guest_spoofing_denied_go_through_the_guest_filter() {
    let ns = Netns::new();
    let config = ConfigFile::new(
        "[network.lab]\nmode = \"nat\"\nbridge = \"lab0\"\nipv4 = \"10.66.0.1/24\"\nguest_spoofing = \"deny\"\n",
    );
    let fd = tap(root_call(&ns, "lab", true, Some(&config)));
    let name = tap_of(&fd).0;
    let ports = ns.ok(&["nft", "list", "map", "bridge", "kvm_net", "ports"]);
    assert!(ports.contains(&format!("\"{name}\" : jump spoof-lab0")), "{ports}");
    drop(fd);
    assert_gone_within_teardown(&ns, "lab0");
    assert!(!ns.output(&["nft", "list", "table", "bridge", "kvm_net"]).status.success());
}

/// Polls `ns`'s bridge filter until `check` holds of `nft list set bridge
/// kvm_net SET`, for at most `within`; the listing.
fn filter_set_until(ns: &Netns, set: &str, within: Duration, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let listing = ns.ok(&["nft", "list", "set", "bridge", "kvm_net", set]);
        if check(&listing) || Instant::now() > deadline {
            return listing;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_guest_whose_qemu_exited_leaves_nothing_bound_to_its_tap() {
    let ns = Netns::new();
    let config = ConfigFile::new(
        "[network.lab]\nmode = \"nat\"\nbridge = \"lab0\"\nipv4 = \"10.66.0.1/24\"\nguest_spoofing = \"deny\"\n",
    );
    // Another VM keeps the network up.
    let _other = tap(root_call(&ns, "lab", false, Some(&config)));
    let vm = tap(root_call(&ns, "lab", false, Some(&config)));
    let (name, _) = tap_of(&vm);
    // The guest's first frame (an ARP probe) locks its port to its MAC.
    let guest_mac = kvm_net_tests::frames::mac("52:54:00:66:00:01");
    let probe = kvm_net_tests::frames::ethernet(
        kvm_net_tests::frames::BROADCAST,
        guest_mac,
        0x0806,
        &kvm_net_tests::frames::arp_reply(
            guest_mac,
            std::net::Ipv4Addr::UNSPECIFIED,
            [0; 6],
            "10.66.0.50".parse().expect("ip"),
        ),
    );
    nix::unistd::write(&vm, &probe).expect("a frame from the guest");
    let locked = filter_set_until(&ns, "portmac-lab0", TEARDOWN, |l| l.contains(&name));
    assert!(locked.contains(&format!("\"{name}\" . 52:54:00:66:00:01")), "{locked}");
    // QEMU exits: its tap goes, and with it everything bound to it.
    drop(vm);
    let taken = filter_set_until(&ns, "taken-lab0", TEARDOWN, |l| !l.contains("52:54:00:66:00:01"));
    assert!(!taken.contains("52:54:00:66:00:01"), "the departed guest's MAC is still held: {taken}");
    let ports = ns.ok(&["nft", "list", "map", "bridge", "kvm_net", "ports"]);
    assert!(!ports.contains(&format!("\"{name}\"")), "{ports}");
}
