//! What a helper does about privilege it has beyond its caller's (installed
//! setuid root, or with file capabilities): forget everything the caller
//! could steer it with (environment, working directory, signal dispositions,
//! resource limits, scheduling, OOM score, groups), keep only the
//! capabilities its job needs, and shut out the caller's terminal, whose
//! job-control signals reach even a process the caller may not signal.
//! The caller's identity is taken first, for [`crate::security::access`].

use std::collections::HashSet;

use anyhow::{Context, Result};
use caps::{CapSet, Capability};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::sys::signal::{sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{geteuid, getgroups, getresgid, getresuid, Gid, Pid, Uid};

use crate::error::Error;
use crate::security::access::{Access, Caller};

/// The only PATH a helper running with more privilege than its caller uses.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How the helper came by its privilege.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// No more than its caller's (root running it, or an ordinary run).
    Plain,
    /// Setuid root: effective user root, real user the caller.
    SetuidRoot,
    /// File capabilities (or another AT_SECURE start without root).
    Capabilities,
}

/// What a helper's job needs from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Netlink only (kvm-ifup, kvm-ifdown): CAP_NET_ADMIN.
    Netlink,
    /// A whole managed network: netlink, iptables, dnsmasq (which binds
    /// ports 53 and 67 and drops to nobody), signals to that dnsmasq, and
    /// root's own files under /run/kvm-net and /proc/sys/net.
    ManagedNetwork,
}

impl Needs {
    fn capabilities(self) -> HashSet<Capability> {
        let mut set = HashSet::from([Capability::CAP_NET_ADMIN]);
        if self == Needs::ManagedNetwork {
            set.extend([
                Capability::CAP_NET_RAW,
                Capability::CAP_NET_BIND_SERVICE,
                Capability::CAP_SETUID,
                Capability::CAP_SETGID,
                Capability::CAP_KILL,
            ]);
        }
        set
    }
}

/// A helper's start: how it is installed, and who ran it.
#[derive(Clone, Debug)]
pub struct Start {
    /// How it came by its privilege.
    pub install: Install,
    /// Who ran it.
    pub caller: Caller,
}

/// `AT_SECURE` from the auxiliary vector: set by the kernel for setuid/setgid
/// programs and for programs with file capabilities.
pub fn privileged_beyond_caller() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel placed in
    // this process's memory at exec; it has no preconditions and returns 0 for
    // an unknown type.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

impl Start {
    /// Takes the caller's identity and, when privileged beyond it, replaces
    /// the environment by a fixed PATH. Call it first, before any thread starts.
    pub fn detect() -> Result<Self> {
        let uid = getresuid().context("reading the caller's user IDs")?.real;
        let gid = getresgid().context("reading the caller's group IDs")?.real;
        let groups = getgroups().context("reading the caller's groups")?;
        let install = match (privileged_beyond_caller(), geteuid().is_root()) {
            (false, _) => Install::Plain,
            (true, true) => Install::SetuidRoot,
            (true, false) => Install::Capabilities,
        };
        if install != Install::Plain {
            for (key, _) in std::env::vars_os() {
                std::env::remove_var(key);
            }
            std::env::set_var("PATH", SAFE_PATH);
        }
        Ok(Self { install, caller: Caller { uid, gid, groups } })
    }

    /// What the caller may do through this helper.
    pub fn access(&self) -> Access {
        if self.install == Install::Plain || self.caller.uid.is_root() {
            Access::Unrestricted
        } else {
            Access::Restricted(self.caller.clone())
        }
    }

    /// Keeps only what `needs` calls for. Setuid root becomes root through
    /// and through (iptables refuses a real user ID that differs from the
    /// effective one) with no supplementary groups, but with only the
    /// capabilities of `needs`, also for every program it runs (bounding
    /// set, no_new_privs), and with the scheduling, OOM score and resource
    /// limits of a service rather than the caller's. File capabilities are
    /// cut down to `needs`; a job that needs root's files is refused there
    /// before anything changes. Any install: a limit the job cannot do with,
    /// and that cannot be raised, is refused before anything changes.
    pub fn keep_only(&self, needs: Needs, helper: &'static str) -> Result<()> {
        if self.install == Install::Plain {
            if needs == Needs::ManagedNetwork {
                job_limits(Reset::MinimumOnly)?;
            }
            return Ok(());
        }
        if self.install == Install::Capabilities && needs == Needs::ManagedNetwork {
            return Err(Error::NeedsRoot { helper, job: crate::error::NEEDS_ROOT_MANAGED }.into());
        }
        std::env::set_current_dir("/").context("changing to /")?;
        signal_handling_of_a_service()?;
        // While every capability the install gives is still held.
        job_limits(Reset::Everything)?;
        clean_scheduling()?;
        let keep = needs.capabilities();
        if self.install == Install::SetuidRoot {
            let root_uid = Uid::from_raw(0);
            let root_gid = Gid::from_raw(0);
            nix::unistd::setgroups(&[])
                .and_then(|()| nix::unistd::setresgid(root_gid, root_gid, root_gid))
                .and_then(|()| nix::unistd::setresuid(root_uid, root_uid, root_uid))
                .map_err(Error::DropCallerIds)?;
            for capability in caps::all().difference(&keep) {
                // A capability this kernel does not know is not in the set anyway.
                if caps::has_cap(None, CapSet::Bounding, *capability).unwrap_or(false) {
                    caps::drop(None, CapSet::Bounding, *capability).context("limiting the capability bounding set")?;
                }
            }
        }
        let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
        let kept: caps::CapsHashSet = keep.intersection(&permitted).copied().collect();
        caps::set(None, CapSet::Effective, &kept)
            .and_then(|()| caps::set(None, CapSet::Permitted, &kept))
            .and_then(|()| caps::clear(None, CapSet::Inheritable))
            .context("dropping capabilities")?;
        nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
        Ok(())
    }
}

/// Whether this process may read the firewall (nf_tables and iptables
/// answer only a process with CAP_NET_ADMIN in effect): `kvm-net status`
/// run by anyone else shows what it can and says what needs root.
pub fn can_read_firewall() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap_or(false)
}

/// For a program root runs on kvm-net's behalf (the lease hook, which
/// dnsmasq runs as root): CAP_NET_ADMIN and nothing else, for it and for
/// anything it could run (bounding set, where it may still be cut; no_new_privs).
pub fn keep_only_network_admin() -> Result<()> {
    let keep = Needs::Netlink.capabilities();
    for capability in caps::all().difference(&keep) {
        // Cutting the bounding set needs CAP_SETPCAP, which a dnsmasq started
        // by a setuid helper no longer has; its bounding set is cut already.
        if caps::has_cap(None, CapSet::Bounding, *capability).unwrap_or(false) {
            let _ = caps::drop(None, CapSet::Bounding, *capability);
        }
    }
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let kept: caps::CapsHashSet = keep.intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &kept)
        .and_then(|()| caps::set(None, CapSet::Permitted, &kept))
        .and_then(|()| caps::clear(None, CapSet::Inheritable))
        .context("dropping capabilities")?;
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")
}

/// The signals a terminal sends its foreground process group (^C, ^\, ^Z,
/// a hang-up, background reads and writes) without the permission check any
/// other sender faces: a caller could stop a setuid helper with ^Z while it
/// holds a bridge's lock, or kill it half-way through a change.
pub const TERMINAL_SIGNALS: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU];

/// Signals a helper ignores while it works: the terminal's, SIGXFSZ (a
/// write past a file size limit then fails, and the change is rolled back,
/// instead of killing the helper half-way) and SIGPIPE (a caller's closed
/// stderr is an error, not death).
fn ignored_while_working() -> impl Iterator<Item = Signal> {
    TERMINAL_SIGNALS.into_iter().chain([Signal::SIGXFSZ, Signal::SIGPIPE])
}

fn set_disposition(signal: Signal, handler: SigHandler) -> Result<()> {
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL and SIG_IGN run no code of ours in signal context.
    unsafe { sigaction(signal, &action) }.map(drop).with_context(|| format!("setting the action of {signal}"))
}

/// Makes the helper immune to its caller's terminal (see
/// [`TERMINAL_SIGNALS`]) for the whole of its short run, whatever its
/// install: call it first, before any lock is taken.
pub fn shield_from_terminal() -> Result<()> {
    ignored_while_working().try_for_each(|signal| set_disposition(signal, SigHandler::SigIgn))
}

/// In a child of the helper, after fork and before exec (dnsmasq): the
/// default action for each signal the helper ignores, which exec would
/// otherwise pass on. Async-signal-safe: it only calls sigaction.
pub fn restore_default_signals() -> std::io::Result<()> {
    for signal in ignored_while_working() {
        // SAFETY: sigaction with SIG_DFL is async-signal-safe, runs no code
        // of ours, and touches only the zeroed action on this stack.
        let done = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal as libc::c_int, &action, std::ptr::null_mut())
        };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A command for a program the helper runs (dnsmasq, iptables-restore,
/// firewall-cmd): it starts with the default action for every signal the
/// helper ignores while it works.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls sigaction (restore_default_signals), which is async-signal-safe;
    // it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(restore_default_signals);
    }
    command
}

/// Default dispositions and an empty signal mask, but for the signals
/// ignored while working: a caller that ignores or blocks SIGTERM must not
/// pass that on to the dnsmasq this helper starts.
fn signal_handling_of_a_service() -> Result<()> {
    for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        set_disposition(signal, SigHandler::SigDfl)?;
    }
    shield_from_terminal()?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).context("clearing the signal mask")
}

/// Scheduling of a system service, not of the caller: nice 0, the normal
/// policy, the default I/O priority and timer slack, every CPU, and an OOM
/// score adjustment of 0. What the helper starts (its watcher, dnsmasq)
/// inherits them; a caller's nice 19, SCHED_IDLE or oom_score_adj 1000 would
/// otherwise starve them or have them killed first under memory pressure.
/// Each is put back as far as the kernel allows (CAP_SYS_NICE and
/// CAP_SYS_RESOURCE may be missing from the bounding set).
fn clean_scheduling() -> Result<()> {
    // SAFETY: setpriority, sched_setscheduler, ioprio_set and prctl take
    // plain integers (and, for sched_setscheduler, a pointer to a param
    // that lives on this stack for the call) and change only this process;
    // sched_param is plain old data, for which zero bytes are priority 0.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
        let param: libc::sched_param = std::mem::zeroed();
        // The system call itself: musl's wrapper only says ENOSYS.
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0 as libc::c_long,
            libc::SCHED_OTHER as libc::c_long,
            &param as *const libc::sched_param,
        );
        // IOPRIO_WHO_PROCESS, this process, class "none": follows the nice value.
        libc::syscall(libc::SYS_ioprio_set, 1 as libc::c_long, 0 as libc::c_long, 0 as libc::c_long);
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    let mut every_cpu = CpuSet::new();
    for cpu in 0..CpuSet::count() {
        let _ = every_cpu.set(cpu);
    }
    // The kernel keeps what a cpuset allows; an error leaves the mask as it was.
    let _ = sched_setaffinity(Pid::from_raw(0), &every_cpu);
    reset_oom_score_adj()
}

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// `oom_score_adj` 0, or, where a privileged ancestor set a floor above it
/// (`oom_score_adj_min`) and CAP_SYS_RESOURCE is missing, that floor: found
/// by halving, since the kernel shows only the current value.
fn reset_oom_score_adj() -> Result<()> {
    let write = |value: i32| std::fs::write(OOM_SCORE_ADJ, value.to_string());
    match write(0) {
        Ok(()) => return Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {}
        Err(err) => return Err(err).with_context(|| format!("resetting {OOM_SCORE_ADJ}")),
    }
    let current = std::fs::read_to_string(OOM_SCORE_ADJ).with_context(|| format!("reading {OOM_SCORE_ADJ}"))?;
    let (mut lowest_refused, mut allowed) = (0, current.trim().parse::<i32>().unwrap_or(1000));
    while allowed - lowest_refused > 1 {
        let middle = lowest_refused + (allowed - lowest_refused) / 2;
        if write(middle).is_ok() {
            allowed = middle;
        } else {
            lowest_refused = middle;
        }
    }
    write(allowed).with_context(|| format!("resetting {OOM_SCORE_ADJ}"))
}

/// How far [`job_limits`] goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reset {
    /// A privileged helper: every limit as a service would have it.
    Everything,
    /// An ordinary run (root's own): only soft limits below what the job
    /// needs are raised, as far as the hard ones allow.
    MinimumOnly,
}

/// One resource limit: what the helper sets it to, and the least the job
/// (the helper, and the dnsmasq and watcher it leaves running) can do with.
struct Limit {
    resource: Resource,
    /// Its name, with the shell's way of setting it.
    name: &'static str,
    soft: u64,
    hard: u64,
    at_least: u64,
    unit: &'static str,
}

const MIB: u64 = 1 << 20;

/// The limits, as a service gets them: a CPU limit would kill the watcher
/// and dnsmasq, which live for weeks; a file size limit of 0 kills (or, with
/// SIGXFSZ ignored, stops) every write; no core dumps.
fn limits() -> [Limit; 9] {
    let limit = |resource, name, soft, hard, at_least, unit| Limit { resource, name, soft, hard, at_least, unit };
    [
        limit(Resource::RLIMIT_CPU, "RLIMIT_CPU (ulimit -t)", RLIM_INFINITY, RLIM_INFINITY, RLIM_INFINITY, "s"),
        limit(Resource::RLIMIT_FSIZE, "RLIMIT_FSIZE (ulimit -f)", RLIM_INFINITY, RLIM_INFINITY, 16 * MIB, "B"),
        limit(Resource::RLIMIT_DATA, "RLIMIT_DATA (ulimit -d)", RLIM_INFINITY, RLIM_INFINITY, 256 * MIB, "B"),
        limit(Resource::RLIMIT_AS, "RLIMIT_AS (ulimit -v)", RLIM_INFINITY, RLIM_INFINITY, 256 * MIB, "B"),
        limit(Resource::RLIMIT_STACK, "RLIMIT_STACK (ulimit -s)", 8 * MIB, RLIM_INFINITY, MIB, "B"),
        limit(Resource::RLIMIT_NOFILE, "RLIMIT_NOFILE (ulimit -n)", 1024, 4096, 64, ""),
        limit(Resource::RLIMIT_NPROC, "RLIMIT_NPROC (ulimit -u)", RLIM_INFINITY, RLIM_INFINITY, 0, ""),
        limit(Resource::RLIMIT_LOCKS, "RLIMIT_LOCKS (ulimit -x)", RLIM_INFINITY, RLIM_INFINITY, 0, ""),
        limit(Resource::RLIMIT_CORE, "RLIMIT_CORE (ulimit -c)", 0, 0, 0, "B"),
    ]
}

/// A limit's value as people write it.
fn shown(value: u64, unit: &str) -> String {
    match (value, unit) {
        (RLIM_INFINITY, _) => "unlimited".to_owned(),
        (bytes, "B") if bytes >= MIB && bytes % MIB == 0 => format!("{} MiB", bytes / MIB),
        (value, "") => value.to_string(),
        (value, unit) => format!("{value} {unit}"),
    }
}

/// Resource limits that let the helper and what it starts finish their
/// work and keep running. Without CAP_SYS_RESOURCE a hard limit cannot be
/// raised: where one is below what the job needs, the helper refuses before
/// it changes anything (never a half-made network).
fn job_limits(reset: Reset) -> Result<()> {
    for limit in limits() {
        let (soft, hard) = getrlimit(limit.resource).with_context(|| format!("reading {}", limit.name))?;
        let wanted = match reset {
            Reset::Everything => (limit.soft, limit.hard),
            Reset::MinimumOnly if soft >= limit.at_least => continue,
            Reset::MinimumOnly => (limit.at_least, hard.max(limit.at_least)),
        };
        if setrlimit(limit.resource, wanted.0, wanted.1).is_ok() {
            continue;
        }
        if hard < limit.at_least {
            return Err(Error::LimitTooLow {
                limit: limit.name,
                value: shown(hard, limit.unit),
                needs: shown(limit.at_least, limit.unit),
            }
            .into());
        }
        setrlimit(limit.resource, wanted.0.min(hard), hard).with_context(|| format!("setting {}", limit.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_runner_is_not_privileged_beyond_its_caller() {
        assert!(!privileged_beyond_caller());
        let start = Start::detect().expect("detect");
        assert_eq!(start.install, Install::Plain);
        assert_eq!(start.access(), Access::Unrestricted);
    }

    #[test]
    fn a_managed_network_needs_more_than_netlink() {
        assert!(Needs::ManagedNetwork.capabilities().is_superset(&Needs::Netlink.capabilities()));
        assert_eq!(Needs::Netlink.capabilities().len(), 1);
    }
}
