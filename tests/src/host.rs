//! A host for the privileged-install tests: a sandbox (private `/run`,
//! `/etc/kvm-net`, tun node) with the helpers installed one way, real test
//! users, and a namespace holding their taps; with the assertions those
//! tests share (a refusal changes nothing, neither in the namespace nor under
//! `/run`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::run::{assert_refusal, stderr};
use crate::sandbox::{add_owned_tap, Install, Sandbox, User, TEST_GROUP};
use crate::Netns;

/// default (NAT) for alice and bob, lab (isolated) for bob only, lan
/// (bridged, an existing bridge) for alice, grp (isolated) for a group.
pub fn config(alice: &User, bob: &User) -> String {
    format!(
        r#"
[network.default]
mode = "nat"
bridge = "br0"
ipv4 = "192.168.100.1/24"
dhcp = {{ enabled = false }}
allow_users = ["{alice}", "{bob}"]

[network.lab]
mode = "isolated"
bridge = "lab0"
allow_users = ["{bob}"]

[network.lan]
mode = "bridged"
bridge = "lanbr"
taps = ["lan-*"]
allow_users = ["{alice}"]

[network.grp]
mode = "isolated"
bridge = "grp0"
taps = ["grp-*"]
allow_groups = ["{TEST_GROUP}"]
"#,
        alice = alice.name,
        bob = bob.name
    )
}

#[track_caller]
/// Panics unless the command succeeded without writing to stdout.
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "failed: {}", stderr(out));
    assert!(out.stdout.is_empty(), "wrote to stdout: {:?}", String::from_utf8_lossy(&out.stdout));
}

/// Runs `program args` as `user`; it must fail with exit 1, say `says`,
/// and change nothing in `ns` (links, addresses, rules, forwarding), nor
/// create anything under the sandbox's /run.
#[track_caller]
pub fn assert_refused_as(sandbox: &Sandbox, ns: &Netns, user: &User, program: &Path, args: &[&str], says: &str) {
    let before = ns.snapshot();
    let run_before = listing(&sandbox.run_dir());
    let out = sandbox.run(ns, Some(user), program, args);
    let err = assert_refusal(&out, 1, &format!("{program:?} {args:?} as {}", user.name), says);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(ns.snapshot(), before, "{program:?} {args:?} changed the namespace");
    assert_eq!(listing(&sandbox.run_dir()), run_before, "{program:?} {args:?} changed /run");
}

/// Every path under `dir`, recursively, with its kind.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() && !path.is_symlink() {
            out.extend(listing(&path));
        }
    }
    out.sort();
    out
}

pub struct Host {
    /// The sandbox the helpers run in.
    pub sandbox: Sandbox,
    /// The namespace holding the taps.
    pub ns: Netns,
    /// A user in [`TEST_GROUP`].
    pub alice: User,
    /// A user in no group but his own.
    pub bob: User,
    /// Where the helpers are installed.
    pub bin: PathBuf,
}

impl Host {
    /// A sandbox with [`config`] and the helpers installed as `install`; in
    /// the namespace, an uplink veth `up0`, taps of alice (`tap-a`, `lan-a`),
    /// bob (`tap-b`, `lan-b`), root (`tap-r`), one of alice's group (`grp-g`), and the
    /// system's bridge `lanbr`.
    pub fn new(install: Install) -> Self {
        let (alice, bob) = (User::alice(), User::bob());
        let sandbox = Sandbox::new();
        sandbox.config(&config(&alice, &bob));
        let bin = sandbox.install(install);
        let ns = Netns::new();
        ns.sh("ip link add up0 type veth peer name up0p; ip link set up0 up; ip link set up0p up");
        ns.sh("ip link add lanbr mtu 1400 type bridge; ip link set lanbr up");
        add_owned_tap(&ns, "tap-a", Some(&alice), None);
        add_owned_tap(&ns, "lan-a", Some(&alice), None);
        add_owned_tap(&ns, "tap-b", Some(&bob), None);
        add_owned_tap(&ns, "lan-b", Some(&bob), None);
        add_owned_tap(&ns, "tap-r", None, None);
        add_owned_tap(&ns, "grp-g", None, Some(TEST_GROUP));
        Self { sandbox, ns, alice, bob, bin }
    }

    /// The installed helper `name`.
    pub fn helper(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs `helper tap` as `user`.
    pub fn run(&self, user: &User, helper: &str, tap: &str) -> Output {
        self.sandbox.run(&self.ns, Some(user), &self.helper(helper), &[tap])
    }

    /// [`assert_refused_as`] for `helper tap` as `user`.
    pub fn refused(&self, user: &User, helper: &str, tap: &str, says: &str) {
        assert_refused_as(&self.sandbox, &self.ns, user, &self.helper(helper), &[tap], says);
    }
}
