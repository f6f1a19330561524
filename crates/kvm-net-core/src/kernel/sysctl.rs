//! Kernel switches a managed network needs, read before written so a run
//! that changes nothing writes nothing.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::ifname::IfName;

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const IPV6_CONF: &str = "/proc/sys/net/ipv6/conf";

/// A small /proc file's text (a sysctl's value), trimmed: one read into
/// the stack, no more system calls than open, read and close.
pub fn read_small(path: &str) -> Result<String> {
    let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("reading {path}"))?;
    let mut buffer = [0u8; 64];
    let length = nix::unistd::read(&fd, &mut buffer).with_context(|| format!("reading {path}"))?;
    Ok(String::from_utf8_lossy(&buffer[..length]).trim().to_owned())
}

/// Writes `value` to a sysctl file unless it already holds it; says whether it wrote.
fn ensure(path: &str, value: &str, what: &str) -> Result<bool> {
    if read_small(path)? == value {
        return Ok(false);
    }
    fs::write(path, value).with_context(|| format!("{what} ({path})"))?;
    Ok(true)
}

/// Turns on IPv4 forwarding in the caller's network namespace.
pub fn enable_ipv4_forwarding() -> Result<()> {
    ensure(IPV4_FORWARD, "1", "enabling IPv4 forwarding").map(drop)
}

/// Turns on IPv6 forwarding; returns the interfaces that, from now on, ignore
/// router advertisements (accept_ra=1 with forwarding on) if it was off.
pub fn enable_ipv6_forwarding() -> Result<Vec<String>> {
    if !ensure(IPV6_FORWARD, "1", "enabling IPv6 forwarding")? {
        return Ok(Vec::new());
    }
    let mut deaf = Vec::new();
    for entry in fs::read_dir(IPV6_CONF).with_context(|| format!("listing {IPV6_CONF}"))? {
        let entry = entry.with_context(|| format!("listing {IPV6_CONF}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "all" | "default" | "lo") {
            continue;
        }
        if fs::read_to_string(entry.path().join("accept_ra")).is_ok_and(|v| v.trim() == "1") {
            deaf.push(name);
        }
    }
    Ok(deaf)
}

/// Stops a bridge from configuring itself from router advertisements that
/// guests send; a no-op where IPv6 is off.
pub fn disable_accept_ra(bridge: &IfName) -> Result<()> {
    let path = format!("{IPV6_CONF}/{bridge}/accept_ra");
    if !Path::new(&path).exists() {
        return Ok(());
    }
    ensure(&path, "0", "turning off router advertisements on the bridge").map(drop)
}
