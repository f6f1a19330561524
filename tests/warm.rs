//! A warm VM start at the kernel's floor without giving up a guarantee: on a
//! network whose rules were found whole, nothing in nf_tables changed since
//! (its generation says so), and the same plan, a VM start asks nf_tables
//! one question; any change by anyone (another table, a flushed chain, a
//! forged record) means the full check, which heals. Requests that grow
//! with the bridge's ports or the namespace's links are filtered by the
//! kernel. Counted with strace, never timed. Each test's helpers run in a
//! sandbox: its /run/kvm-net (where the record lives) is the test's own.

use std::path::{Path, PathBuf};
use std::process::Output;

use kvm_net_tests::host::assert_ok;
use kvm_net_tests::inspect::{backend, has_chain, Backend};
use kvm_net_tests::run::stderr;
use kvm_net_tests::run::{add_tap, traced, ConfigFile};
use kvm_net_tests::sandbox::Sandbox;
use kvm_net_tests::{helper, Netns};

/// A namespace whose helpers run as root in a sandbox.
struct Host {
    sandbox: Sandbox,
    ns: Netns,
}

impl Host {
    fn new() -> Self {
        Self { sandbox: Sandbox::new(), ns: Netns::new() }
    }

    /// `bin tap` (with `env`), which must succeed; its stderr.
    fn ok(&self, bin: &str, tap: &str, env: &[(&str, &str)]) -> String {
        let out = self.run(bin, &[tap], env);
        assert_ok(&out);
        stderr(&out)
    }

    fn run(&self, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.sandbox.command(&self.ns, None, &helper(bin), args);
        command.envs(env.iter().copied()).output().expect("a helper")
    }

    /// The system calls of `kvm-natup TAP`, as strace writes them.
    fn traced(&self, strace_args: &[&str], tap: &str) -> String {
        traced(self.sandbox.command(&self.ns, None, Path::new("strace"), &[]), strace_args, "kvm-natup", tap)
    }

    fn traced_natup(&self, tap: &str) -> String {
        self.traced(&["-qq", "-s", "0"], tap)
    }

    /// The bridge's lock file, which holds the record.
    fn lock_file(&self, bridge: &str) -> PathBuf {
        self.sandbox.run_dir().join(format!("kvm-net/lock/{}-{bridge}.lock", self.ns.id()))
    }
}

/// How many requests went to nf_tables: sends on the NETLINK_NETFILTER socket.
fn nf_tables_requests(calls: &str) -> usize {
    let socket = calls
        .lines()
        .find(|l| l.starts_with("socket(AF_NETLINK") && l.contains("NETLINK_NETFILTER"))
        .and_then(|l| l.rsplit("= ").next())
        .map(str::trim);
    let Some(socket) = socket else { return 0 };
    let send = format!("sendto({socket},");
    calls.lines().filter(|l| l.starts_with(&send) || l.starts_with(&format!("sendmsg({socket},"))).count()
}

#[test]
fn a_warm_start_asks_nf_tables_once_and_any_change_means_a_full_check_that_heals() {
    let host = Host::new();
    let ns = &host.ns;
    for tap in ["t0", "t1", "t2", "t3", "t4", "t5"] {
        add_tap(ns, tap);
    }
    host.ok("kvm-natup", "t0", &[]);
    // The first warm start checks everything, finds it whole and says so.
    let first = host.traced_natup("t1");
    let warm = host.traced_natup("t2");
    if backend() == Backend::Iptables {
        // The proof is nf_tables': the iptables backend checks in full every time.
        assert!(nf_tables_requests(&warm) > 1, "{warm}");
        return;
    }
    assert!(nf_tables_requests(&first) > 1, "the first warm start checks in full: {first}");
    assert_eq!(nf_tables_requests(&warm), 1, "one generation read, nothing else: {warm}");
    assert!(!warm.contains("/proc/self/"), "no /proc/self lookup on a warm start: {warm}");
    assert!(!warm.contains("mkdir"), "the run directory exists: {warm}");
    assert!(!warm.contains("munmap(") || warm.matches("munmap(").count() <= 1, "buffers are reused: {warm}");

    // Someone else's change anywhere in nf_tables: checked in full again.
    ns.ok(&["nft", "add", "table", "ip", "someone_else"]);
    let after_other = host.traced_natup("t3");
    assert!(nf_tables_requests(&after_other) > 1, "{after_other}");

    // A flushed chain of kvm-net's is healed by the next start.
    ns.ok(&["nft", "flush", "table", "ip", "kvm_net"]);
    host.ok("kvm-natup", "t4", &[]);
    assert!(has_chain(ns, "NAT", "br0") && has_chain(ns, "FWD", "br0"));
    let rules = ns.ok(&["nft", "list", "table", "ip", "kvm_net"]);
    assert!(rules.contains("masquerade"), "{rules}");

    // A record that does not match (another plan) is not taken for a proof.
    let record = std::fs::read_to_string(host.lock_file("br0")).expect("the record in the lock file");
    let mut words: Vec<&str> = record.split_whitespace().collect();
    assert_eq!(words.len(), 4, "{record}");
    words[3] = "0";
    std::fs::write(host.lock_file("br0"), format!("{}\n", words.join(" "))).expect("forging the record");
    let said = host.ok("kvm-natup", "t5", &[("KVM_NET_DEBUG", "1")]);
    assert!(said.contains("rules of br0 whole at generation"), "{said}");
}

#[test]
fn a_start_on_a_bridge_with_many_ports_asks_only_for_its_own_addresses() {
    let host = Host::new();
    let ns = &host.ns;
    add_tap(ns, "t0");
    host.ok("kvm-natup", "t0", &[]);
    // 200 more links, each with addresses of its own.
    let lines: String = (1..=200)
        .map(|i| {
            format!(
                "link add d{i} type veth peer name e{i}\naddress add 10.200.{}.{}/32 dev d{i}\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    let batch = ConfigFile::scratch_dir().join(format!("links-{}.ip", std::process::id()));
    std::fs::write(&batch, lines).expect("writing the batch");
    ns.ok(&["ip", "-batch", batch.to_str().expect("UTF-8 path")]);
    let _ = std::fs::remove_file(&batch);
    add_tap(ns, "t1");
    let calls = host.traced(&["-qq", "-v", "-s", "64", "-e", "trace=recvfrom"], "t1");
    assert!(!calls.contains("10.200."), "a start read other links' addresses: {calls}");
    assert!(calls.contains("NLM_F_DUMP_FILTERED"), "the address dump is the kernel's filtered one: {calls}");
}

/// Ten networks up in iptables: every forwarded packet is compared with
/// each of them, which `kvm-net check` says, with the way out; in nftables
/// it says nothing. Each network's jumps carry the condition all its
/// chain's rules share, so that another network's packet costs one
/// comparison, not a walk through its chain.
#[test]
fn check_warns_when_many_networks_walk_iptables_and_jumps_carry_their_condition() {
    let host = Host::new();
    let ns = &host.ns;
    let networks: String = (0..10)
        .map(|i| {
            format!(
                "[network.n{i}]\nmode = \"nat\"\nbridge = \"nbr{i}\"\nipv4 = \"10.{}.0.1/24\"\ntaps = [\"n{i}-*\"]\ndhcp = {{ enabled = false }}\n",
                i + 1
            )
        })
        .collect();
    host.sandbox.config(&networks);
    for i in 0..10 {
        let tap = format!("n{i}-0");
        add_tap(ns, &tap);
        host.ok("kvm-natup", &tap, &[]);
    }
    let out = host.run("kvm-net", &["check"], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match backend() {
        Backend::Iptables => {
            assert!(
                text.contains("warning [iptables-scaling]: 10 networks are up with their rules in iptables"),
                "{text}"
            );
            assert!(text.contains("firewall = \"nftables\""), "{text}");
            assert_eq!(out.status.code(), Some(1), "{text}");
            let mangle = ns.ok(&["iptables", "-t", "mangle", "-S", "FORWARD"]);
            assert!(
                mangle.contains("-A FORWARD -o nbr3 -m comment --comment \"kvm-net:nbr3\" -j KVMNET-GRD-nbr3"),
                "{mangle}"
            );
            let nat = ns.ok(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
            assert!(
                nat.contains("-A POSTROUTING -s 10.4.0.0/24 -m comment --comment \"kvm-net:nbr3\" -j KVMNET-NAT-nbr3"),
                "{nat}"
            );
            // One of a chain's two jumps lost (replies would go unaccepted): found, and healed.
            ns.ok(&[
                "iptables",
                "-D",
                "FORWARD",
                "-o",
                "nbr3",
                "-m",
                "comment",
                "--comment",
                "kvm-net:nbr3",
                "-j",
                "KVMNET-FWD-nbr3",
            ]);
            let out = host.run("kvm-net", &["check"], &[]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                text.contains("error [rules-missing]: network n3 is up on nbr3")
                    && text.contains("KVMNET-FWD-nbr3 (differs)"),
                "{text}"
            );
            add_tap(ns, "n3-1");
            host.ok("kvm-natup", "n3-1", &[]);
            let forward = ns.ok(&["iptables", "-S", "FORWARD"]);
            assert!(
                forward.contains("-A FORWARD -o nbr3 -m comment --comment \"kvm-net:nbr3\" -j KVMNET-FWD-nbr3"),
                "{forward}"
            );
        }
        Backend::Nftables => {
            assert!(!text.contains("iptables-scaling"), "{text}");
            assert_eq!(out.status.code(), Some(0), "{text}");
        }
    }
}

/// The record some lock file of the sandbox holds, whatever its name: its
/// generation.
fn recorded_generation(host: &Host) -> u32 {
    let dir = host.sandbox.run_dir().join("kvm-net/lock");
    let records: Vec<String> = std::fs::read_dir(&dir)
        .expect("the lock directory")
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .filter(|text| text.starts_with("kvm-net-rules-whole "))
        .collect();
    assert_eq!(records.len(), 1, "one record: {records:?}");
    records[0].split_whitespace().nth(1).and_then(|g| g.parse().ok()).expect("a generation")
}

/// A namespace's identity as the kernel's file system has it (device and
/// inode), which a new namespace takes over as soon as the old one is gone.
fn inode_of(ns: &Netns) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(ns.path()).expect("the namespace");
    (meta.dev(), meta.ino())
}

/// An isolated network is up in a namespace that is then deleted with it;
/// a new namespace (which the kernel gives the same inode number) with the
/// same bridge index and nf_tables generation must still get its rules: the
/// record of the first is not the second's.
#[test]
fn a_record_dies_with_its_namespace_even_when_a_new_one_reuses_its_inode() {
    if backend() == Backend::Iptables {
        return;
    }
    let config = "[network.lab]\nmode = \"isolated\"\nbridge = \"br0\"\ntaps = [\"t*\"]\n";
    let first = Host::new();
    first.sandbox.config(config);
    for tap in ["t0", "t1"] {
        add_tap(&first.ns, tap);
        first.ok("kvm-natup", tap, &[]);
    }
    let generation = recorded_generation(&first);
    let old_inode = inode_of(&first.ns);
    let Host { sandbox, ns } = first;
    drop(ns);
    // The kernel hands out the lowest free inode number: wait for the
    // deleted namespace's to be free, then take it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let ns = loop {
        let ns = Netns::new();
        if inode_of(&ns) == old_inode || std::time::Instant::now() > deadline {
            break ns;
        }
        drop(ns);
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let second = Host { sandbox, ns };
    add_tap(&second.ns, "t0");
    // Other changes bring nf_tables to the recorded generation (a fresh
    // namespace starts at 1; each change adds one).
    for i in 1..generation {
        second.ns.ok(&["nft", &format!("add table ip bump{i}")]);
    }
    let said = second.ok("kvm-natup", "t0", &[("KVM_NET_DEBUG", "1")]);
    assert!(!said.contains("not read again"), "the old namespace's record was taken: {said}");
    assert!(has_chain(&second.ns, "GRD", "br0"), "an isolated network without its guard: {said}");
}
