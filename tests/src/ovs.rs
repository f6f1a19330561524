//! A real Open vSwitch (ovsdb-server and ovs-vswitchd, userspace datapath:
//! no kernel module here) inside a test's network namespace, with a mount
//! namespace of its own whose tmpfs `/run/openvswitch`, `/etc/openvswitch`,
//! `/var/lib/openvswitch` and `/var/log/openvswitch` keep the packages'
//! default paths valid without touching the machine's own. Commands run
//! through [`Ovs::command`] see those directories, and a `/run/kvm-net` of
//! their own; the daemons go with the network namespace.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::inspect::backend;
use crate::sandbox::{Sandbox, User};
use crate::Netns;

/// The directories the daemons keep their state in, each a tmpfs of the instance.
pub const STATE_DIRS: [&str; 8] = [
    "/run/openvswitch",
    "/etc/openvswitch",
    "/var/lib/openvswitch",
    "/var/log/openvswitch",
    "/run/ovn",
    "/etc/ovn",
    "/var/lib/ovn",
    "/var/log/ovn",
];

/// One Open vSwitch instance in a namespace.
pub struct Ovs {
    holder: Child,
}

impl Ovs {
    /// Starts ovsdb-server and ovs-vswitchd in `ns`, with `bridges` made
    /// (`datapath_type=netdev`). Panics if Open vSwitch is not installed
    /// (`tests/setup.sh` installs openvswitch-switch).
    pub fn start(ns: &Netns, bridges: &[&str]) -> Self {
        Self::start_with(ns.cmd("unshare"), bridges)
    }

    /// As [`Ovs::start`], inside `sandbox`'s mount namespace: commands run
    /// through [`Ovs::command_as`] see both the sandbox's files and OVS's.
    pub fn start_in(sandbox: &Sandbox, ns: &Netns, bridges: &[&str]) -> Self {
        Self::start_with(sandbox.command(ns, None, Path::new("unshare"), &[]), bridges)
    }

    fn start_with(command: Command, bridges: &[&str]) -> Self {
        let bridges: String =
            bridges.iter().map(|b| format!("ovs-vsctl add-br {b} -- set bridge {b} datapath_type=netdev\n")).collect();
        let script = format!(
            "ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
            ovsdb-server --remote=punix:/run/openvswitch/db.sock --pidfile --detach -vconsole:off --log-file /etc/openvswitch/conf.db
            ovs-vsctl --no-wait init
            ovs-vswitchd --pidfile --detach -vconsole:off --log-file
            {bridges}"
        );
        Self::hold(command, &script)
    }

    /// Runs `script` (`sh -e`) in a mount namespace of its own made by
    /// `command` (`unshare`, in the namespace wanted), with a tmpfs over each
    /// of [`STATE_DIRS`]; the namespace is held until this is dropped. For
    /// OVN's central databases too.
    pub fn hold(mut command: Command, script: &str) -> Self {
        let mut mounts: String =
            STATE_DIRS.iter().map(|d| format!("mkdir -p {d}; mount -n -t tmpfs tmpfs {d}\n")).collect();
        // kvm-net's own run directory (locks, watchers) is the test's too, never the machine's.
        mounts.push_str("mkdir -p /run/kvm-net; mount -n -t tmpfs -o mode=0755 tmpfs /run/kvm-net\n");
        let script = format!("{mounts}\n{script}\necho ready\nexec sleep 2147483647");
        command.args(["--mount", "--propagation", "private", "--", "sh", "-ec", &script]);
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut holder = command.spawn().expect("starting Open vSwitch (apt-get install openvswitch-switch)");
        let mut ready = String::new();
        let stdout = holder.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut ready).expect("Open vSwitch's start");
        assert_eq!(ready.trim(), "ready", "Open vSwitch did not start");
        Self { holder }
    }

    /// A command run in `ns` and in this instance's mount namespace, with
    /// none of the caller's kvm-net variables.
    pub fn command(&self, ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = ns.cmd("nsenter");
        command.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id())).arg("--").arg(program);
        command.env("KVM_NET_FIREWALL", backend().as_str()).stdin(Stdio::null());
        for key in ["KVM_NET_DEBUG", "KVM_NET_BRIDGE", "KVM_NET_ADDRESS", "KVM_NET_CONFIG", "KVM_NET_NETWORK"] {
            command.env_remove(key);
        }
        command
    }

    /// `program args` run as `user` (all their groups), or as root, in `ns`
    /// and this instance's mount namespace.
    pub fn command_as(&self, ns: &Netns, user: Option<&User>, program: &Path, args: &[&str]) -> Command {
        let mut command = match user {
            Some(user) => {
                let mut command = self.command(ns, "setpriv");
                command.args(user.setpriv_options()).arg("--").arg(program);
                command
            }
            None => self.command(ns, program),
        };
        command.args(args);
        command
    }

    /// Runs `program args` as [`Ovs::command`] does.
    pub fn run(&self, ns: &Netns, program: impl AsRef<std::ffi::OsStr>, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(ns, program);
        command.args(args).envs(env.iter().copied()).output().expect("running a command beside Open vSwitch")
    }

    /// `ovs-vsctl ARGS` (with `--timeout=5`), which must succeed; its stdout.
    pub fn vsctl(&self, ns: &Netns, args: &[&str]) -> String {
        let mut all = vec!["--timeout=5"];
        all.extend_from_slice(args);
        let out = self.run(ns, "ovs-vsctl", &all, &[]);
        assert!(out.status.success(), "ovs-vsctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The database socket, as this process (outside the instance's mount
    /// namespace) reaches it.
    pub fn socket(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root/run/openvswitch/db.sock", self.holder.id()))
    }

    /// The PID one of the daemons wrote to its pidfile.
    pub fn pid(&self, ns: &Netns, daemon: &str) -> Pid {
        let out = self.run(ns, "cat", &[&format!("/run/openvswitch/{daemon}.pid")], &[]);
        Pid::from_raw(String::from_utf8_lossy(&out.stdout).trim().parse().expect("a pidfile"))
    }

    /// Sends `signal` to `daemon` (`ovsdb-server`, `ovs-vswitchd`).
    pub fn signal(&self, ns: &Netns, daemon: &str, signal: Signal) {
        kill(self.pid(ns, daemon), signal).expect("signalling an Open vSwitch daemon");
    }

    /// Whether `path` exists in this instance's mount namespace.
    pub fn exists(&self, ns: &Netns, path: &Path) -> bool {
        self.run(ns, "test", &["-e", &path.display().to_string()], &[]).status.success()
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // A daemon left stopped (a frozen ovsdb-server) must be able to die with its namespace.
        if let Ok(raw) = i32::try_from(self.holder.id()) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
        let _ = self.holder.wait();
    }
}

/// Makes `command` die with the thread that spawned it (for daemons started by hand).
pub fn dies_with_test(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; it runs in the child before exec.
    unsafe { command.pre_exec(|| Ok(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?)) }
}
