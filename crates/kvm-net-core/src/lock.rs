//! Serialises the helpers that create and delete one bridge, so that concurrent
//! VM starts and stops see each other's work whole.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::ifname::IfName;
use crate::runtime::{bridge_tag, run_subdir};

/// An exclusive `flock` on one bridge in one network namespace, released on drop.
pub struct BridgeLock {
    file: File,
    path: PathBuf,
}

impl BridgeLock {
    /// Blocks until this process holds the bridge's lock (one per bridge and
    /// network namespace, see [`crate::runtime`]).
    pub fn acquire(bridge: &IfName) -> Result<Self> {
        let dir = run_subdir("lock");
        let path = dir.join(format!("{}.lock", bridge_tag(bridge)?));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
            let held = file.metadata().with_context(|| format!("checking lock file {}", path.display()))?;
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
