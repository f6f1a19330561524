//! Files kvm-net keeps under `/run` (a tmpfs: gone at reboot, like the
//! kernel state they go with). `/run` is shared by every network namespace,
//! so each name carries the namespace's identity: two `br0` in two
//! namespaces are two bridges. That identity is the namespace's cookie,
//! which the kernel never gives to another namespace while it runs (an
//! inode number is reused as soon as a namespace is gone): a file of a
//! namespace that was deleted is never taken for one of a new namespace.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::ifname::IfName;

/// `netns-COOKIE-BRIDGE`: one bridge in this process's network namespace.
pub fn bridge_tag(bridge: &IfName) -> Result<String> {
    Ok(format!("{}-{bridge}", namespace_tag()?))
}

/// `netns-COOKIE`: this process's network namespace, as the names of
/// kvm-net's files under `/run` start.
pub fn namespace_tag() -> Result<String> {
    Ok(format!("netns-{}", namespace_cookie()?))
}

/// The bridge a tag names, if it is a tag of this namespace's.
pub fn bridge_of_tag(tag: &str) -> Result<Option<IfName>> {
    let ours = format!("{}-", namespace_tag()?);
    Ok(tag.strip_prefix(&ours).and_then(|name| IfName::parse_bridge(name).ok()))
}

/// One link as it is now and never again: the boot, the network
/// namespace's cookie and the link's index (`BOOT-ID/COOKIE/INDEX`). A
/// link of the same name made later (another VM's tap, after a reboot, in
/// another namespace) has another identity: what kvm-net records beside a
/// port it adds to a database that outlives links (OVSDB).
pub fn link_identity(index: u32) -> Result<String> {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let boot = match BOOT.get() {
        Some(boot) => boot.clone(),
        None => {
            let text = crate::kernel::sysctl::read_small("/proc/sys/kernel/random/boot_id")?;
            BOOT.get_or_init(|| text.trim().to_owned()).clone()
        }
    };
    Ok(format!("{boot}/{}/{index}", namespace_cookie()?))
}

/// This process's network namespace's cookie (`SO_NETNS_COOKIE` of a fresh
/// socket), looked up once: a kvm-net process never changes namespace.
fn namespace_cookie() -> Result<u64> {
    static COOKIE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(cookie) = COOKIE.get() {
        return Ok(*cookie);
    }
    let cookie = cookie_of_a_socket().context("identifying the network namespace (SO_NETNS_COOKIE)")?;
    Ok(*COOKIE.get_or_init(|| cookie))
}

/// `SO_NETNS_COOKIE` (Linux 5.14): not yet in every libc crate's list.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the namespace a fresh socket is in: no privilege needed.
fn cookie_of_a_socket() -> Result<u64> {
    use std::os::fd::AsRawFd;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a u64
    // that outlives the call, and updates `len`; the socket is open.
    let result = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    nix::errno::Errno::result(result)?;
    if len as usize != std::mem::size_of::<u64>() {
        anyhow::bail!("the kernel answered {len} bytes for a network namespace cookie");
    }
    Ok(cookie)
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
