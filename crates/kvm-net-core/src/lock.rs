//! Serialises the helpers that create and delete one bridge, so that concurrent
//! VM starts and stops see each other's work whole.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::ifname::IfName;

/// Where the lock files live; `/run` is a tmpfs, so they vanish at reboot.
pub const LOCK_DIR: &str = "/run/kvm-net/lock";

/// An exclusive `flock` on one bridge in one network namespace, released on drop.
pub struct BridgeLock {
    file: File,
    path: PathBuf,
}

impl BridgeLock {
    /// Blocks until this process holds the bridge's lock. `/run` is shared by all
    /// network namespaces, so the lock name carries the namespace's identity: two
    /// `br0` in two namespaces are two bridges.
    pub fn acquire(bridge: &IfName) -> Result<Self> {
        let path = lock_path(bridge)?;
        fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening lock file {}", path.display()))?;
            file.lock().with_context(|| format!("locking {}", path.display()))?;
            // The holder before us may have removed the file after we opened it:
            // then our lock is on an orphan, and we must lock the new file.
            let held = file
                .metadata()
                .with_context(|| format!("checking lock file {}", path.display()))?;
            match fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Self { file, path }),
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err).with_context(|| format!("checking lock file {}", path.display())),
            }
        }
    }

    /// Removes the lock file while still holding it, once the bridge is gone,
    /// so that lock files do not pile up; waiters notice and retry.
    pub fn remove_file(self) -> Result<()> {
        fs::remove_file(&self.path).with_context(|| format!("removing lock file {}", self.path.display()))?;
        drop(self.file);
        Ok(())
    }
}

fn lock_path(bridge: &IfName) -> Result<PathBuf> {
    let netns = fs::metadata("/proc/self/ns/net").context("identifying the network namespace (/proc/self/ns/net)")?;
    Ok(PathBuf::from(LOCK_DIR).join(format!("netns-{}-{}-{bridge}.lock", netns.dev(), netns.ino())))
}
