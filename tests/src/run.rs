//! Running the helpers as QEMU does, and the inputs they read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::inspect::backend;
use crate::{helper, Netns};

/// Runs a helper inside `ns` with `env` (and none of the caller's kvm-net
/// variables), returning its output.
pub fn run(ns: &Netns, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_path(ns, &helper(bin), args, env)
}

/// As [`run`], for a helper at any path (a symlink, a setuid copy).
pub fn run_path(ns: &Netns, path: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = ns.cmd(path);
    command.args(args);
    for key in ["KVM_NET_DEBUG", "KVM_NET_BRIDGE", "KVM_NET_ADDRESS", "KVM_NET_CONFIG", "KVM_NET_NETWORK"] {
        command.env_remove(key);
    }
    command.env("KVM_NET_FIREWALL", backend().as_str());
    command.envs(env.iter().copied()).stdin(Stdio::null());
    command.output().unwrap_or_else(|e| panic!("running {}: {e}", path.display()))
}

/// Runs a helper that must succeed silently (stdout is a VM console with -serial stdio).
pub fn ok(ns: &Netns, bin: &str, tap: &str) {
    ok_with(ns, bin, tap, &[]);
}

/// What a command wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// As [`ok`], with environment variables.
pub fn ok_with(ns: &Netns, bin: &str, tap: &str, env: &[(&str, &str)]) -> String {
    let out = run(ns, bin, &[tap], env);
    let stderr = stderr(&out);
    assert!(out.status.success(), "{bin} {tap} failed: {stderr}");
    assert!(out.stdout.is_empty(), "{bin} wrote to stdout: {:?}", String::from_utf8_lossy(&out.stdout));
    stderr
}

/// Runs a helper that must fail with exit status 1, say `says` on stderr, and
/// leave `ns` exactly as it found it. Returns what it said.
pub fn assert_refused(ns: &Netns, bin: &str, args: &[&str], env: &[(&str, &str)], says: &str) -> String {
    let before = ns.snapshot();
    let out = run(ns, bin, args, env);
    let stderr = assert_refusal(&out, 1, &format!("{bin} {args:?} {env:?}"), says);
    assert_eq!(ns.snapshot(), before, "{bin} {args:?} {env:?} changed state");
    stderr
}

/// The one check every refusal passes, whoever ran `what`: exit status
/// `code` (1 refused, 2 a usage error) and `says` in what it wrote to
/// stderr, which it returns.
#[track_caller]
pub fn assert_refusal(out: &Output, code: i32, what: &str, says: &str) -> String {
    let stderr = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {stderr}");
    assert!(stderr.contains(says), "{what}: {stderr:?} lacks {says:?}");
    stderr
}

/// Runs `bin tap` under `strace` (the command given, with its namespaces
/// and environment: `ns.cmd("strace")`, a sandbox's) with `strace_args`,
/// the firewall backend under test and no config file of the caller's; it
/// must succeed. The system calls, as strace wrote them.
pub fn traced(mut strace: Command, strace_args: &[&str], bin: &str, tap: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let trace = ConfigFile::scratch_dir().join(format!(
        "strace-{}-{}.trace",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let out = strace
        .args(strace_args)
        .arg("-o")
        .arg(&trace)
        .arg(helper(bin))
        .arg(tap)
        .env("KVM_NET_FIREWALL", backend().as_str())
        .env_remove("KVM_NET_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("strace (apt-get install strace)");
    assert!(out.status.success(), "{bin} {tap}: {}", String::from_utf8_lossy(&out.stderr));
    let calls = std::fs::read_to_string(&trace).expect("the trace");
    let _ = std::fs::remove_file(&trace);
    calls
}

/// Creates a persistent tap, as QEMU would before running the script.
pub fn add_tap(ns: &Netns, name: &str) {
    ns.ok(&["ip", "tuntap", "add", "dev", name, "mode", "tap"]);
}

/// A config file for one test, deleted when dropped.
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `text` to a fresh file.
    pub fn new(text: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = Self::scratch_dir().join(format!(
            "kvm-net-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).expect("writing the test config");
        Self { path }
    }

    /// A scratch directory under `target/` (not `/tmp`, which may be `nosuid`).
    pub fn scratch_dir() -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&dir).expect("creating target/tmp");
        dir
    }

    /// Its path, as a string for `KVM_NET_CONFIG`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
