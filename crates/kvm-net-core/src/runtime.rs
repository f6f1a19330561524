//! Files kvm-net keeps under `/run` (a tmpfs: gone at reboot, like the
//! kernel state they go with). `/run` is shared by every network namespace,
//! so each name carries the namespace's identity: two `br0` in two
//! namespaces are two bridges.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::ifname::IfName;

/// `netns-DEV-INO-BRIDGE`: one bridge in this process's network namespace.
pub fn bridge_tag(bridge: &IfName) -> Result<String> {
    let netns = fs::metadata("/proc/self/ns/net").context("identifying the network namespace (/proc/self/ns/net)")?;
    Ok(format!("netns-{}-{}-{bridge}", netns.dev(), netns.ino()))
}

/// The PID of every process.
pub fn all_processes() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// `/proc/PID` of every process in this process's network namespace, with its PID.
pub fn processes_here() -> Vec<(u32, PathBuf)> {
    let identity = |path: &std::path::Path| fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let ours = identity(std::path::Path::new("/proc/self/ns/net"));
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse::<u32>().ok()?, entry.path())))
        .filter(|(_, dir)| ours.is_some() && identity(&dir.join("ns/net")) == ours)
        .collect()
}
