//! Throwaway network namespaces held by a file descriptor: when the handle is
//! dropped (or the test process dies), the namespace and every link, address
//! and firewall rule in it disappear with it. Each has a mount namespace of
//! its own too, whose `/run/kvm-net` is an empty tmpfs: what kvm-net keeps
//! there for the namespace's bridges (locks, dnsmasq's files, records) is
//! the test's own, never the machine's, and goes with the namespace.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::Signal;

/// One network namespace, alive as long as this handle (or a process in it).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    /// The mount namespace commands run in (a private `/run/kvm-net`).
    mounts: Mounts,
}

/// A mount namespace of the test's, held by a process of its own that
/// exits when its stdin closes (the handle dropped, or the test process gone).
#[derive(Debug)]
struct Mounts {
    holder: Child,
    fd: OwnedFd,
}

impl Mounts {
    fn new() -> Self {
        let script = "mkdir -p /run/kvm-net; mount -n -t tmpfs -o mode=0755 tmpfs /run/kvm-net; echo ready; read _";
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-ec", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("a mount namespace for the test (unshare, from util-linux)");
        let mut ready = String::new();
        let stdout = holder.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut ready).expect("the mount namespace's start");
        assert_eq!(ready.trim(), "ready", "the test's mount namespace did not start");
        let fd = File::open(format!("/proc/{}/ns/mnt", holder.id())).expect("the mount namespace").into();
        Self { holder, fd }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        drop(self.holder.stdin.take());
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

impl Netns {
    /// Creates an empty namespace (only `lo`, down) without entering it.
    pub fn new() -> Self {
        let fd = thread::spawn(|| -> io::Result<OwnedFd> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .expect("namespace thread panicked")
        .expect("creating a network namespace (needs root / CAP_SYS_ADMIN)");
        let ns = Self { fd, mounts: Mounts::new() };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `netns-COOKIE`, the identity kvm-net puts in the names of its files
    /// under `/run` for bridges in this namespace (`SO_NETNS_COOKIE`).
    pub fn id(&self) -> String {
        format!("netns-{}", self.cookie())
    }

    /// The namespace's cookie, which the kernel never reuses.
    pub fn cookie(&self) -> u64 {
        self.enter(|| {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a socket");
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `cookie`,
            // which outlives the call; the socket is open.
            let result = unsafe {
                libc::getsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::SOL_SOCKET,
                    71, // SO_NETNS_COOKIE
                    std::ptr::addr_of_mut!(cookie).cast(),
                    &mut len,
                )
            };
            assert_eq!(result, 0, "SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
            cookie
        })
    }

    /// A path naming this namespace for `ip link set DEV netns PATH`.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// A command that will run inside this namespace (and its mount
    /// namespace, in the caller's directory), and is killed if the thread
    /// that spawned it goes away (so a failed test leaves no QEMU behind).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let raw = self.fd.as_raw_fd();
        let mounts = self.mounts.fd.as_raw_fd();
        // Entering a mount namespace takes the process to its root: it comes back here.
        let here: OwnedFd = File::open(".").expect("the current directory").into();
        let here_raw = here.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, setns, fchdir) on fds that the
        // child inherited open from the parent (CLOEXEC closes them only at exec);
        // `here` lives in the closure, so its descriptor is open at every spawn.
        unsafe {
            command.pre_exec(move || {
                let _ = &here;
                prctl::set_pdeathsig(Signal::SIGKILL)?;
                setns(BorrowedFd::borrow_raw(raw), CloneFlags::CLONE_NEWNET)?;
                setns(BorrowedFd::borrow_raw(mounts), CloneFlags::CLONE_NEWNS)?;
                nix::unistd::fchdir(BorrowedFd::borrow_raw(here_raw))?;
                Ok(())
            });
        }
        command
    }

    /// What commands run here see as `/run/kvm-net`, from outside.
    pub fn kvm_net_dir(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root/run/kvm-net", self.mounts.holder.id()))
    }

    /// Runs a command here and returns its output, whatever its status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {args:?}: {e}"))
    }

    /// Runs a command here that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script here that must succeed; returns its stdout.
    pub fn sh(&self, script: &str) -> String {
        self.ok(&["sh", "-ec", script])
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens live here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.fd.as_fd();
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(fd, CloneFlags::CLONE_NEWNET).expect("entering the namespace");
                    f()
                })
                .join()
                .expect("thread inside the namespace panicked")
        })
    }

    /// Everything kvm-net could change here, as text: links, addresses,
    /// forwarding and both firewall tables.
    pub fn snapshot(&self) -> String {
        let mut text = String::new();
        for args in [
            &["ip", "-o", "link", "show"][..],
            &["ip", "-o", "addr", "show"],
            &["iptables", "-t", "nat", "-S"],
            &["iptables", "-t", "filter", "-S"],
            &["nft", "-s", "list", "ruleset"],
            &["cat", "/proc/sys/net/ipv4/ip_forward"],
        ] {
            text.push_str(&self.ok(args));
        }
        text
    }

    /// Every live process whose network namespace this is (a zombie has
    /// none any more), by PID.
    pub fn processes(&self) -> Vec<i32> {
        use std::os::unix::fs::MetadataExt;
        let identity = |path: &str| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        let Some(ours) = identity(&self.path()) else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| identity(&format!("/proc/{pid}/ns/net")) == Some(ours))
            .collect()
    }

    /// Moves `link` from this namespace into `target`.
    pub fn move_link(&self, link: &str, target: &Netns) {
        self.ok(&["ip", "link", "set", "dev", link, "netns", &target.path()]);
    }
}

/// The parent of process `pid`, from `/proc/PID/stat` (the field after the
/// command name, which may hold spaces and parentheses itself).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Of `pids`, those whose parent is not among them: the dnsmasq daemons,
/// not their script helpers (children with the same command line).
pub fn without_children(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|pid| parent_of(*pid).is_none_or(|parent| !pids.contains(&parent))).collect()
}

impl Drop for Netns {
    /// What kvm-net left running for this namespace (a test that ends with
    /// a network up): every process still inside it (dnsmasq, a bridge
    /// helper's watcher), which would otherwise outlive the test and keep
    /// the namespace alive. Its files under /run go with its mount namespace.
    fn drop(&mut self) {
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}
