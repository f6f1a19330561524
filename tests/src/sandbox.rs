//! Unprivileged callers and privileged installs without touching the host:
//! real users made with `useradd`, setuid-root and file-capability copies of
//! the helpers, and for every command a private mount namespace in which
//! `/run`, `/etc/kvm-net` and `/dev/net/tun` are the sandbox's own.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::inspect::backend;
use crate::run::ConfigFile;
use crate::{helper, Netns};

/// A real user of the host, made for the tests (kept between runs).
#[derive(Clone, Debug)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Its user ID.
    pub uid: u32,
    /// Its primary group ID.
    pub gid: u32,
}

/// The group test users may be members of, for grants by group.
pub const TEST_GROUP: &str = "kvmnet-lab";

fn id_of(flag: &str, name: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|_| out.status.success())
}

fn group_exists(name: &str) -> bool {
    Command::new("getent").args(["group", name]).output().is_ok_and(|o| o.status.success())
}

impl User {
    /// The user `name` (created if missing), a member of `groups` (created
    /// if missing) besides its own group.
    pub fn ensure(name: &str, groups: &[&str]) -> User {
        static CREATING: Mutex<()> = Mutex::new(());
        let _serial = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        for group in groups {
            if !group_exists(group) {
                run_ok(Command::new("groupadd").args(["--system", group]));
            }
        }
        if id_of("-u", name).is_none() {
            let mut command = Command::new("useradd");
            command.args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin"]);
            if !groups.is_empty() {
                command.args(["--groups", &groups.join(",")]);
            }
            run_ok(command.arg(name));
        }
        User {
            name: name.to_owned(),
            uid: id_of("-u", name).expect("uid of a user just made"),
            gid: id_of("-g", name).expect("gid of a user just made"),
        }
    }

    /// alice: a member of [`TEST_GROUP`].
    pub fn alice() -> User {
        User::ensure("kvmnet-alice", &[TEST_GROUP])
    }

    /// `setpriv`'s options that make a command run as this user, with all
    /// their groups (the command follows `--`).
    pub fn setpriv_options(&self) -> [String; 3] {
        [format!("--reuid={}", self.uid), format!("--regid={}", self.gid), "--init-groups".to_owned()]
    }

    /// bob: in no group but his own.
    pub fn bob() -> User {
        User::ensure("kvmnet-bob", &[])
    }
}

fn run_ok(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// How the helpers are installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Mode 0755: only root can use them.
    Root,
    /// Setuid root (mode 4755).
    Setuid,
    /// `cap_net_admin+ep` file capabilities (mode 0755).
    Capabilities,
}

/// The helper binaries copied into the sandbox.
pub const HELPERS: [&str; 6] =
    ["kvm-ifup", "kvm-ifdown", "kvm-natup", "kvm-natdown", "kvm-net-bridge-helper", "kvm-net-lease"];

/// A private `/run`, `/etc` (an overlay: changes stay in the sandbox),
/// `/etc/kvm-net` and `/dev/net/tun` (mode 0666, as udev makes it) for the
/// commands run through it, and installed copies of the helpers. One mount
/// namespace, held by a process of its own, serves every command, so that
/// daemons started in it (dnsmasq, dbus, firewalld) and the commands see
/// the same files. Removed, with what was started in it, when dropped.
pub struct Sandbox {
    dir: PathBuf,
    holder: Child,
}

impl Sandbox {
    /// An empty sandbox: no config file, an empty `/run`.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = ConfigFile::scratch_dir().join(format!(
            "sandbox-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["run", "etc-kvm-net", "etc-upper", "etc-work", "bin", "dev"] {
            fs::create_dir_all(dir.join(sub)).expect("creating the sandbox");
        }
        // Every user must reach the binaries and the tun node.
        for sub in ["", "run", "etc-kvm-net", "bin", "dev"] {
            fs::set_permissions(dir.join(sub), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let tun = dir.join("dev/tun");
        run_ok(Command::new("mknod").args(["-m", "0666"]).arg(&tun).args(["c", "10", "200"]));
        // -n: util-linux would otherwise record the mounts under /run/mount.
        let script = r#"
            mount -n --bind "$SANDBOX/run" /run
            mount -n -t overlay overlay -o "lowerdir=/etc,upperdir=$SANDBOX/etc-upper,workdir=$SANDBOX/etc-work" /etc
            mkdir -p /etc/kvm-net
            mount -n --bind "$SANDBOX/etc-kvm-net" /etc/kvm-net
            mount -n --bind "$SANDBOX/dev/tun" /dev/net/tun
            echo ready
            exec sleep 2147483647
        "#;
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "--", "sh", "-ec", script]).env("SANDBOX", &dir);
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; it runs in the child before exec.
        unsafe {
            command.pre_exec(|| Ok(nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?));
        }
        let mut holder = command.spawn().expect("starting the sandbox's mount namespace");
        let mut ready = String::new();
        let stdout = holder.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut ready).expect("the sandbox's mounts");
        assert_eq!(ready.trim(), "ready", "the sandbox's mounts failed");
        Self { dir, holder }
    }

    /// Writes `/etc/kvm-net/kvm-net.toml` (root's, 0644), with the firewall
    /// backend under test (a privileged helper reads no environment).
    pub fn config(&self, text: &str) {
        let path = self.dir.join("etc-kvm-net/kvm-net.toml");
        fs::write(&path, format!("firewall = \"{}\"\n{text}", backend().as_str())).expect("writing the sandbox config");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    /// What the sandbox's commands see as `/run`.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// What the sandbox's commands see as `/etc/kvm-net`.
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc-kvm-net")
    }

    /// A directory of the sandbox for a test's own files.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::create_dir_all(&path).expect("creating a scratch directory");
        path
    }

    /// Copies the helpers into `bin/MODE/` installed as `install` says; returns that directory.
    pub fn install(&self, install: Install) -> PathBuf {
        let dir = self.dir.join("bin").join(format!("{install:?}").to_lowercase());
        if dir.exists() {
            return dir;
        }
        fs::create_dir_all(&dir).expect("creating the install directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        for name in HELPERS {
            let target = dir.join(name);
            fs::copy(helper(name), &target).expect("copying a helper");
            let mode = if install == Install::Setuid { 0o4755 } else { 0o755 };
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).expect("chmod");
            if install == Install::Capabilities {
                run_ok(Command::new("setcap").arg("cap_net_admin+ep").arg(&target));
            }
        }
        dir
    }

    /// A command that runs `program args` inside `ns`, in a private mount
    /// namespace with the sandbox's `/run`, `/etc/kvm-net` and tun node, as
    /// `user` (all their groups) or as root.
    pub fn command(&self, ns: &Netns, user: Option<&User>, program: &Path, args: &[&str]) -> Command {
        let mut command = ns.cmd("nsenter");
        command.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id())).arg("--");
        if let Some(user) = user {
            command.arg("setpriv").args(user.setpriv_options()).arg("--");
        }
        command.arg(program).args(args).stdin(Stdio::null());
        command.env("KVM_NET_FIREWALL", backend().as_str());
        for key in ["KVM_NET_DEBUG", "KVM_NET_BRIDGE", "KVM_NET_ADDRESS", "KVM_NET_CONFIG", "KVM_NET_NETWORK"] {
            command.env_remove(key);
        }
        command
    }

    /// Runs `program args` as [`Sandbox::command`] does and returns its output.
    pub fn run(&self, ns: &Netns, user: Option<&User>, program: &Path, args: &[&str]) -> Output {
        self.command(ns, user, program, args).output().expect("running a sandboxed command")
    }

    /// Owner and mode of a path under the sandbox's `/run` (`kvm-net/lock`).
    pub fn owner_and_mode(&self, path: &str) -> (u32, u32, u32) {
        let meta = fs::symlink_metadata(self.run_dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    /// Stops the dnsmasq daemons started in the sandbox (they keep its mount
    /// namespace alive), then removes it.
    fn drop(&mut self) {
        let dnsmasq = self.run_dir().join("kvm-net/dnsmasq");
        if let Ok(entries) = fs::read_dir(&dnsmasq) {
            for entry in entries.flatten() {
                let Ok(pid) = fs::read_to_string(entry.path().join("dnsmasq.pid")) else { continue };
                let Ok(pid) = pid.trim().parse::<i32>() else { continue };
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("dnsmasq") {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates a persistent tap owned by `user` (and, if given, `group`), as an
/// administrator would for an unprivileged QEMU.
pub fn add_owned_tap(ns: &Netns, name: &str, user: Option<&User>, group: Option<&str>) {
    let mut args = vec!["ip", "tuntap", "add", "dev", name, "mode", "tap"];
    let uid;
    if let Some(user) = user {
        uid = user.uid.to_string();
        args.extend(["user", &uid]);
    }
    if let Some(group) = group {
        args.extend(["group", group]);
    }
    ns.ok(&args);
}
