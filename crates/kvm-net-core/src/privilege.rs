//! What a helper does about privilege it has beyond its caller's (installed
//! setuid root, or with file capabilities): forget everything the caller
//! could steer it with (environment, working directory, signal dispositions,
//! resource limits, groups), and keep only the capabilities its job needs.
//! The caller's identity is taken first, for [`crate::access`].

use std::collections::HashSet;

use anyhow::{Context, Result};
use caps::{CapSet, Capability};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use nix::sys::signal::{sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{geteuid, getgroups, getresgid, getresuid, Gid, Uid};

use crate::access::{Access, Caller};
use crate::error::Error;

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
    /// set, no_new_privs). File capabilities are cut down to `needs`; a job
    /// that needs root's files is refused there before anything changes.
    pub fn keep_only(&self, needs: Needs, helper: &'static str) -> Result<()> {
        if self.install == Install::Plain {
            return Ok(());
        }
        if self.install == Install::Capabilities && needs == Needs::ManagedNetwork {
            return Err(Error::NeedsRoot(helper).into());
        }
        std::env::set_current_dir("/").context("changing to /")?;
        default_signal_handling()?;
        sane_limits()?;
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

/// Default dispositions and an empty signal mask: a caller that ignores or
/// blocks SIGTERM must not pass that on to the dnsmasq this helper starts.
fn default_signal_handling() -> Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe { sigaction(signal, &default) }.with_context(|| format!("resetting {signal}"))?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).context("clearing the signal mask")
}

/// Resource limits that let the helper and what it starts finish their work
/// (a caller's RLIMIT_FSIZE of 0 would leave half-written files behind), and
/// no core dumps. Without CAP_SYS_RESOURCE a hard limit cannot be raised:
/// then the soft limit goes as far as the hard one allows.
fn sane_limits() -> Result<()> {
    const STACK: u64 = 8 << 20;
    let limits = [
        (Resource::RLIMIT_CPU, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_FSIZE, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_DATA, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_AS, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_STACK, STACK, RLIM_INFINITY),
        (Resource::RLIMIT_NOFILE, 1024, 4096),
        (Resource::RLIMIT_NPROC, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_LOCKS, RLIM_INFINITY, RLIM_INFINITY),
        (Resource::RLIMIT_CORE, 0, 0),
    ];
    for (resource, soft, hard) in limits {
        if setrlimit(resource, soft, hard).is_ok() {
            continue;
        }
        let (_, current_hard) = getrlimit(resource).with_context(|| format!("reading {resource:?}"))?;
        setrlimit(resource, soft.min(current_hard), current_hard.min(hard.max(soft)))
            .with_context(|| format!("setting {resource:?}"))?;
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
