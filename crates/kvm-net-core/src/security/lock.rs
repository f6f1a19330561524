//! Serialises the helpers that create and delete one bridge, so that concurrent
//! VM starts and stops see each other's work whole. Lock files live in a
//! directory only root can enter, so no other user can hold one; a kvm-net
//! run that holds one too long (stuck) makes the others fail after
//! [`LOCK_WAIT`] with a message, not hang QEMU forever.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use crate::error::Error;
use crate::ifname::IfName;
use crate::kernel::netns::bridge_tag;
use crate::security::rundir::{Area, SafeDir};

/// How long a helper waits for another kvm-net run on the same bridge: far
/// more than any run takes (milliseconds; a dnsmasq that will not stop, 2 s).
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// An exclusive `flock` on one bridge in one network namespace, released on drop.
pub struct BridgeLock {
    file: File,
    dir: SafeDir,
    name: String,
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// `flock(LOCK_EX)` that gives up after `wait`: a SIGALRM (with a handler
/// that does nothing and no SA_RESTART) interrupts the wait with EINTR.
fn lock_within(file: &File, wait: Duration) -> Result<bool, Errno> {
    // SAFETY: LOCK_NB never blocks; the descriptor is open for the call.
    match Errno::result(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => return Ok(true),
        Err(Errno::EWOULDBLOCK) => {}
        Err(err) => return Err(err),
    }
    let action = SigAction::new(SigHandler::Handler(on_alarm), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler does nothing, so it is async-signal-safe; the
    // previous action is put back before returning. The helpers are single-
    // threaded when they lock, so the signal interrupts this thread's flock.
    let previous = unsafe { sigaction(Signal::SIGALRM, &action) }?;
    let seconds = u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX);
    nix::unistd::alarm::set(seconds);
    // SAFETY: as above; a blocking flock on an open descriptor.
    let result = Errno::result(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) });
    nix::unistd::alarm::cancel();
    // SAFETY: restores the action saved above.
    unsafe { sigaction(Signal::SIGALRM, &previous) }?;
    match result {
        Ok(_) => Ok(true),
        Err(Errno::EINTR) => Ok(false),
        Err(err) => Err(err),
    }
}

impl BridgeLock {
    /// Waits (at most [`LOCK_WAIT`]) until this process holds the bridge's
    /// lock (one per bridge and network namespace, see [`crate::kernel::netns`]).
    pub fn acquire(bridge: &IfName) -> Result<Self> {
        let dir = SafeDir::create(Area::Lock)?;
        let name = format!("{}.lock", bridge_tag(bridge)?);
        let path = dir.path().join(&name);
        loop {
            let file = dir.open_or_create(&name, 0o600)?;
            let locked = lock_within(&file, LOCK_WAIT).with_context(|| format!("locking {}", path.display()))?;
            if !locked {
                return Err(Error::LockTimeout { bridge: bridge.to_string(), seconds: LOCK_WAIT.as_secs() }.into());
            }
            // The holder before us may have removed the file after we opened it:
            // then our lock is on an orphan, and we must lock the new file.
            if dir.holds(&name, &file)? {
                return Ok(Self { file, dir, name });
            }
        }
    }

    /// What an earlier holder left in the lock file (a [`crate::ops::warm`]
    /// record), if anything readable; the file is root's alone.
    pub fn note(&self) -> Option<String> {
        let mut buffer = [0u8; 128];
        let length = self.file.read_at(&mut buffer, 0).ok()?;
        String::from_utf8(buffer[..length].to_vec()).ok()
    }

    /// Leaves `text` in the lock file for the next holder.
    pub fn set_note(&self, text: &str) -> Result<()> {
        let path = || self.dir.path().join(&self.name).display().to_string();
        self.file.write_all_at(text.as_bytes(), 0).with_context(|| format!("writing {}", path()))?;
        self.file.set_len(text.len() as u64).with_context(|| format!("writing {}", path()))
    }

    /// Removes the lock file while still holding it, once the bridge is gone,
    /// so that lock files do not pile up; waiters notice and retry.
    pub fn remove_file(self) -> Result<()> {
        self.dir.remove(&self.name)?;
        drop(self.file);
        Ok(())
    }
}
