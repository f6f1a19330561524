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
    let (dev, ino) = namespace_identity()?;
    Ok(format!("netns-{dev}-{ino}-{bridge}"))
}

/// This process's network namespace (device and inode of
/// `/proc/self/ns/net`), looked up once: a kvm-net process never changes
/// namespace.
fn namespace_identity() -> Result<(u64, u64)> {
    static IDENTITY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    if let Some(identity) = IDENTITY.get() {
        return Ok(*identity);
    }
    let identity = match namespace_of_a_socket() {
        Some(identity) => identity,
        None => {
            let netns =
                fs::metadata("/proc/self/ns/net").context("identifying the network namespace (/proc/self/ns/net)")?;
            (netns.dev(), netns.ino())
        }
    };
    Ok(*IDENTITY.get_or_init(|| identity))
}

/// The namespace a fresh socket is in (`SIOCGSKNS`, which needs
/// CAP_NET_ADMIN), as `/proc/self/ns/net` names it: far cheaper than that
/// path, whose every lookup makes /proc entries for a process seen for the
/// first time. `None` where it is refused.
fn namespace_of_a_socket() -> Option<(u64, u64)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor, or -1.
    let raw = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGSKNS as _) };
    if raw < 0 {
        return None;
    }
    // SAFETY: the kernel just made this descriptor for this process; nothing else owns it.
    let namespace = unsafe { OwnedFd::from_raw_fd(raw) };
    let stat = nix::sys::stat::fstat(&namespace).ok()?;
    Some((stat.st_dev, stat.st_ino))
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
