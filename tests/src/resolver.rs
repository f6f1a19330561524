//! Name resolution as the tests see it: a DNS resolver upstream that logs
//! every query it gets (what a network's dnsmasq forwarded, and what it
//! must never have), and the host's own resolver (glibc's NSS) with
//! kvm-net's module `libnss_kvmnet.so.2` enabled in a test namespace's
//! private mounts only, asked as root or as an ordinary user.

use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::run::ConfigFile;
use crate::sandbox::User;
use crate::Netns;

/// dnsmasq as an upstream resolver: answers `NAME.example.test` with
/// [`UpstreamResolver::ANSWER`] and logs each query it gets.
pub struct UpstreamResolver {
    daemon: Child,
    log: PathBuf,
}

impl UpstreamResolver {
    /// What it answers for every name in `example.test`.
    pub const ANSWER: &'static str = "198.51.100.7";

    /// Starts one in `ns`, listening on `addresses` (port 53), ready to answer.
    pub fn start(ns: &Netns, addresses: &[IpAddr]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log = ConfigFile::scratch_dir().join(format!(
            "upstream-dns-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = File::create(&log).expect("the resolver's log");
        let mut command = ns.cmd("dnsmasq");
        command.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",
            "--pid-file",
            "--user=root",
            &format!("--address=/example.test/{}", Self::ANSWER),
        ]);
        for address in addresses {
            command.arg(format!("--listen-address={address}"));
        }
        let daemon = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file).spawn().expect("dnsmasq upstream");
        let resolver = Self { daemon, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !resolver.log_text().contains("started, version") {
            assert!(Instant::now() < deadline, "the upstream resolver did not start: {}", resolver.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        resolver
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every query it got: `query[A] NAME from ADDRESS`.
    pub fn queries(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter_map(|line| line.split_once("query[").map(|(_, rest)| format!("query[{rest}")))
            .collect()
    }
}

impl Drop for UpstreamResolver {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Where the module is copied in the namespace's mounts (a tmpfs of its own).
const MODULE_DIR: &str = "/mnt/kvm-net-nss";

/// The host's resolver in `ns`'s private mount namespace, with
/// `hosts: files kvmnet dns` in its nsswitch.conf (the documented line),
/// the module built by `make build` found through `LD_LIBRARY_PATH`, and a
/// resolv.conf naming only a resolver inside the namespace (nothing ever
/// leaves it).
pub struct HostResolver<'a> {
    ns: &'a Netns,
}

impl<'a> HostResolver<'a> {
    /// The module as `make build` leaves it.
    pub fn module() -> PathBuf {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/nss/release/libnss_kvmnet.so.2");
        assert!(path.is_file(), "{} is missing: run `make build` first", path.display());
        path
    }

    /// Enables the module for everything run in `ns` by this resolver.
    pub fn enable(ns: &'a Netns) -> Self {
        let module = Self::module();
        ns.sh(&format!(
            "mkdir -p /mnt; mount -n -t tmpfs -o mode=0755 tmpfs /mnt; mkdir -m 0755 {MODULE_DIR}
             install -m 0644 '{}' {MODULE_DIR}/libnss_kvmnet.so.2
             printf 'hosts: files kvmnet dns\\n' > {MODULE_DIR}/nsswitch.conf
             printf 'nameserver 127.0.0.1\\noptions timeout:1 attempts:1\\n' > {MODULE_DIR}/resolv.conf
             chmod 0644 {MODULE_DIR}/nsswitch.conf {MODULE_DIR}/resolv.conf
             mount -n --bind {MODULE_DIR}/nsswitch.conf /etc/nsswitch.conf
             mount -n --bind {MODULE_DIR}/resolv.conf /etc/resolv.conf",
            module.display()
        ));
        Self { ns }
    }

    /// Runs `args` as `user` (root if none) with the module loadable.
    pub fn run(&self, user: Option<&User>, args: &[&str]) -> Output {
        let mut command = match user {
            Some(user) => {
                let mut command = self.ns.cmd("setpriv");
                command.args(user.setpriv_options()).arg("--").args(args);
                command
            }
            None => {
                let mut command = self.ns.cmd(args[0]);
                command.args(&args[1..]);
                command
            }
        };
        command.env("LD_LIBRARY_PATH", MODULE_DIR).env_remove("LOCALDOMAIN").env_remove("HOSTALIASES");
        command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"))
    }

    /// The addresses `getent hosts NAME` gives (gethostbyname2, IPv6 then
    /// IPv4), within 10 seconds or the test fails (the module must never hang).
    pub fn getent(&self, user: Option<&User>, name: &str) -> Vec<IpAddr> {
        let started = Instant::now();
        let out = self.run(user, &["timeout", "10", "getent", "hosts", name]);
        assert!(started.elapsed() < Duration::from_secs(10), "getent hosts {name} hung");
        assert!(matches!(out.status.code(), Some(0 | 2)), "getent hosts {name}: {out:?}");
        parse_addresses(&out)
    }

    /// The addresses Python's `socket.getaddrinfo(NAME)` gives, each once.
    pub fn getaddrinfo(&self, user: Option<&User>, name: &str) -> Vec<IpAddr> {
        let script = "import socket, sys\n\
                      try:\n    infos = socket.getaddrinfo(sys.argv[1], None, type=socket.SOCK_STREAM)\n\
                      except socket.gaierror:\n    sys.exit(2)\n\
                      for info in infos:\n    print(info[4][0])\n";
        let out = self.run(user, &["timeout", "10", "/usr/bin/python3", "-c", script, name]);
        assert!(matches!(out.status.code(), Some(0 | 2)), "getaddrinfo({name}): {out:?}");
        let mut addresses = parse_addresses(&out);
        addresses.dedup();
        addresses
    }
}

fn parse_addresses(out: &Output) -> Vec<IpAddr> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}
