//! QEMU booting the test guest (tests/guest) with `script=`/`downscript=`
//! pointing at the helpers, its serial console read line by line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::inspect::backend;
use crate::sandbox::{Sandbox, User};
use crate::{helper, Netns};

/// Environment variable naming the directory with `vmlinuz` and `initrd.img`.
pub const ENV_GUEST_DIR: &str = "KVM_NET_GUEST_DIR";

fn guest_file(name: &str) -> PathBuf {
    let dir = std::env::var_os(ENV_GUEST_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest"));
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run tests/guest/build.sh (make test does)", path.display());
    path
}

/// How to start one VM: its tap, its scripts and its orders (`kvmnet.KEY=VALUE`
/// on the kernel command line, read by tests/guest/init).
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Guest name, echoed in its messages.
    pub name: String,
    /// `ifname=` of the tap QEMU creates.
    pub tap: String,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// Helper binary for `script=`: a name from the build under test, or a path.
    pub script: String,
    /// Helper binary for `downscript=`: a name, or a path.
    pub downscript: String,
    /// Orders for the guest: ip, gw, ping, tcp, peer, waitgone, stay.
    pub orders: Vec<(String, String)>,
    /// Extra environment for QEMU (and so for its scripts).
    pub env: Vec<(String, String)>,
    /// `-netdev bridge,br=NAME,helper=PATH` instead of a tap with scripts.
    pub bridge_helper: Option<(String, PathBuf)>,
    /// More `-netdev` options (`vnet_hdr=off`).
    pub netdev_options: Vec<String>,
}

impl VmSpec {
    /// A VM named `name` on tap `tap`, using the NAT helpers unless told otherwise.
    pub fn new(name: &str, tap: &str, index: u8) -> Self {
        Self {
            name: name.to_owned(),
            tap: tap.to_owned(),
            mac: format!("52:54:00:6b:76:{index:02x}"),
            script: "kvm-natup".to_owned(),
            downscript: "kvm-natdown".to_owned(),
            orders: vec![("name".to_owned(), name.to_owned())],
            env: Vec::new(),
            bridge_helper: None,
            netdev_options: Vec::new(),
        }
    }

    /// Lets QEMU get its tap from a bridge helper (`-netdev bridge`) for
    /// network or bridge `br`; `tap` and the scripts are then unused.
    pub fn bridge_helper(mut self, br: &str, helper: &Path) -> Self {
        self.bridge_helper = Some((br.to_owned(), helper.to_owned()));
        self
    }

    /// Uses other helpers for `script=`/`downscript=`.
    pub fn scripts(mut self, script: &str, downscript: &str) -> Self {
        self.script = script.to_owned();
        self.downscript = downscript.to_owned();
        self
    }

    /// Adds an order for the guest.
    pub fn order(mut self, key: &str, value: impl ToString) -> Self {
        self.orders.push((key.to_owned(), value.to_string()));
        self
    }

    /// Adds an option to `-netdev` (`vnet_hdr=off`).
    pub fn netdev_option(mut self, option: &str) -> Self {
        self.netdev_options.push(option.to_owned());
        self
    }

    /// Adds an environment variable for QEMU and its scripts.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

#[derive(Default)]
struct Console {
    lines: Mutex<Vec<String>>,
    /// Set when QEMU closed its stdout (it exited): nothing more will come.
    closed: std::sync::atomic::AtomicBool,
    changed: Condvar,
}

/// A running QEMU; killed (SIGKILL) if dropped before it exits.
pub struct Vm {
    name: String,
    child: Child,
    console: Arc<Console>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a finished VM left: its exit status, console and stderr.
#[derive(Debug)]
pub struct VmRun {
    /// QEMU's exit status (0 on guest poweroff and on SIGTERM: not a verdict).
    pub status: ExitStatus,
    /// Serial console lines.
    pub console: Vec<String>,
    /// QEMU's stderr, which includes the scripts' stderr.
    pub stderr: String,
}

impl VmRun {
    /// The guest's verdict on `step`: `Some((passed, detail))`.
    pub fn result(&self, step: &str) -> Option<(bool, String)> {
        result_in(&self.console, step)
    }

    /// Panics unless the guest reported PASS for every step.
    pub fn assert_passed(&self, steps: &[&str]) {
        for step in steps {
            match self.result(step) {
                Some((true, _)) => {}
                other => {
                    panic!("step {step}: {other:?}\nconsole:\n{}\nstderr:\n{}", self.console.join("\n"), self.stderr)
                }
            }
        }
    }
}

fn result_in(lines: &[String], step: &str) -> Option<(bool, String)> {
    lines.iter().find_map(|line| {
        let rest = line.strip_prefix("KVMNET-RESULT ")?;
        let mut words = rest.splitn(3, ' ');
        (words.next()? == step).then(|| {
            let passed = words.next() == Some("PASS");
            (passed, words.next().unwrap_or_default().to_owned())
        })
    })
}

/// A helper by name (from the build under test) or by path (an installed copy).
fn script_path(script: &str) -> PathBuf {
    if script.contains('/') {
        PathBuf::from(script)
    } else {
        helper(script)
    }
}

impl Vm {
    /// Boots the guest inside `ns`, QEMU running as root.
    pub fn start(ns: &Netns, spec: &VmSpec) -> Self {
        Self::spawn(ns.cmd("qemu-system-x86_64"), spec)
    }

    /// Boots the guest inside `ns`, QEMU running as `user` in `sandbox`
    /// (its /dev/net/tun, /run and /etc/kvm-net).
    pub fn start_as(sandbox: &Sandbox, ns: &Netns, user: &User, spec: &VmSpec) -> Self {
        Self::spawn(sandbox.command(ns, Some(user), Path::new("qemu-system-x86_64"), &[]), spec)
    }

    /// Boots the guest with `command` as QEMU: `qemu-system-x86_64` run
    /// however the test needs (inside another mount namespace, say).
    pub fn start_with(command: Command, spec: &VmSpec) -> Self {
        Self::spawn(command, spec)
    }

    fn spawn(mut command: Command, spec: &VmSpec) -> Self {
        let orders: Vec<String> = spec.orders.iter().map(|(k, v)| format!("kvmnet.{k}={v}")).collect();
        let append = format!("console=ttyS0 quiet panic=-1 {}", orders.join(" "));
        let mut netdev = match &spec.bridge_helper {
            Some((br, helper)) => format!("bridge,id=n0,br={br},helper={}", helper.display()),
            None => format!(
                "tap,id=n0,ifname={},script={},downscript={}",
                spec.tap,
                script_path(&spec.script).display(),
                script_path(&spec.downscript).display()
            ),
        };
        for option in &spec.netdev_options {
            netdev.push(',');
            netdev.push_str(option);
        }
        command
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-m", "128", "-no-reboot"])
            .arg("-kernel")
            .arg(guest_file("vmlinuz"))
            .arg("-initrd")
            .arg(guest_file("initrd.img"))
            .args(["-append", &append, "-netdev", &netdev])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={},romfile=", spec.mac)])
            .env("KVM_NET_FIREWALL", backend().as_str())
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting qemu-system-x86_64 (apt-get install qemu-system-x86)");
        let console = Arc::new(Console::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stdout_reader = {
            let console = Arc::clone(&console);
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    console.lines.lock().expect("console").push(line.trim_end_matches('\r').to_owned());
                    console.changed.notify_all();
                }
                console.closed.store(true, std::sync::atomic::Ordering::SeqCst);
                console.changed.notify_all();
            })
        };
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let stderr = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut text = stderr.lock().expect("stderr");
                    text.push_str(&line);
                    text.push('\n');
                }
            })
        };
        Self { name: spec.name.clone(), child, console, stderr, readers: vec![stdout_reader, stderr_reader] }
    }

    /// Waits until a console line starts with `prefix`; returns it. `None`
    /// after `timeout`, or as soon as QEMU has exited without printing it.
    pub fn wait_for(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.console.lines.lock().expect("console");
        loop {
            if let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) {
                return Some(line.clone());
            }
            if self.console.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.console.changed.wait_timeout(lines, left.min(Duration::from_millis(200))).expect("console").0;
        }
    }

    /// The guest's verdict on `step` so far.
    pub fn result(&self, step: &str) -> Option<(bool, String)> {
        result_in(&self.console.lines.lock().expect("console"), step)
    }

    /// Waits for the guest's `KVMNET-READY` line; panics with what the guest
    /// and QEMU printed if it does not come.
    pub fn expect_ready(&self, timeout: Duration) {
        if self.wait_for("KVMNET-READY", timeout).is_none() {
            panic!(
                "guest {} never got ready\nconsole:\n{}\nstderr:\n{}",
                self.name,
                self.console.lines.lock().expect("console").join("\n"),
                self.stderr_so_far()
            );
        }
    }

    /// What QEMU and its scripts wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// QEMU's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to QEMU.
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        kill(pid, signal).expect("signalling qemu");
    }

    /// Waits for QEMU to exit (killing it after `timeout`), and collects what it printed.
    pub fn wait(mut self, timeout: Duration) -> VmRun {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for qemu") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("reaping qemu");
                eprintln!("vm {}: killed after {timeout:?}", self.name);
                break status;
            }
            thread::sleep(Duration::from_millis(50));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = self.stderr_so_far();
        let console = self.console.lines.lock().expect("console").clone();
        VmRun { status, console, stderr }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
