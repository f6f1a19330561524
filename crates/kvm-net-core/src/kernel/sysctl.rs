//! Kernel switches a managed network needs, read before written so a run
//! that changes nothing writes nothing.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::ifname::IfName;
use crate::kernel::uapi::IFA_F_PERMANENT;

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

/// Turns on IPv6 forwarding if it is off. With forwarding on, the kernel
/// ignores router advertisements on interfaces with `accept_ra=1`, and a
/// host whose own address or default route came from them loses it; so
/// first each such interface gets `accept_ra=2` (accept them even when
/// forwarding), which keeps it as it was. Returns those interfaces.
pub fn enable_ipv6_forwarding() -> Result<Vec<String>> {
    if read_small(IPV6_FORWARD)? == "1" {
        return Ok(Vec::new());
    }
    let mut kept = Vec::new();
    for name in interfaces_with_accept_ra("1")? {
        let path = format!("{IPV6_CONF}/{name}/accept_ra");
        match fs::write(&path, "2") {
            Ok(()) => kept.push(name),
            // Gone meanwhile: nothing left to keep.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("keeping {name}'s router advertisements ({path})")),
        }
    }
    ensure(IPV6_FORWARD, "1", "enabling IPv6 forwarding")?;
    Ok(kept)
}

/// The interfaces (not `all`, `default` or `lo`) whose `accept_ra` is `value`.
fn interfaces_with_accept_ra(value: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(IPV6_CONF).with_context(|| format!("listing {IPV6_CONF}"))? {
        let entry = entry.with_context(|| format!("listing {IPV6_CONF}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "all" | "default" | "lo") {
            continue;
        }
        if fs::read_to_string(entry.path().join("accept_ra")).is_ok_and(|v| v.trim() == value) {
            found.push(name);
        }
    }
    Ok(found)
}

/// With IPv6 forwarding on, the interfaces that ignore router
/// advertisements (`accept_ra=1`) but hold what one gave them: a route
/// learned from one (`RTF_ADDRCONF` in /proc/net/ipv6_route), or a global
/// address that is not permanent (autoconfigured). They lose it when it expires.
pub fn deaf_to_advertisements() -> Result<Vec<String>> {
    if read_small(IPV6_FORWARD)? != "1" {
        return Ok(Vec::new());
    }
    let candidates = interfaces_with_accept_ra("1")?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let routes = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    let addresses = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    let learned = |name: &str| {
        routes.lines().any(|line| learned_route(line) == Some(name))
            || addresses.lines().any(|line| autoconfigured_address(line) == Some(name))
    };
    Ok(candidates.into_iter().filter(|name| learned(name)).collect())
}

/// The interface of a route of /proc/net/ipv6_route learned from a router
/// advertisement (`DEST LEN SRC LEN NEXTHOP METRIC REFS USE FLAGS DEV`).
fn learned_route(line: &str) -> Option<&str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [.., flags, dev] = fields.as_slice() else { return None };
    let flags = u32::from_str_radix(flags, 16).ok()?;
    (fields.len() == 10 && flags & libc::RTF_ADDRCONF != 0).then_some(*dev)
}

/// The interface of an address of /proc/net/if_inet6 that is global and not
/// permanent (`ADDR INDEX PREFIXLEN SCOPE FLAGS DEV`).
fn autoconfigured_address(line: &str) -> Option<&str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [_, _, _, scope, flags, dev] = fields.as_slice() else { return None };
    let (scope, flags) = (u32::from_str_radix(scope, 16).ok()?, u32::from_str_radix(flags, 16).ok()?);
    (scope == 0 && flags & IFA_F_PERMANENT == 0).then_some(*dev)
}

/// Gives a bridge its link-local address without duplicate address
/// detection: the address it sends router advertisements from is usable
/// the moment its first port brings its carrier up (until then dnsmasq
/// answers from a global address, which guests must ignore), and no guest
/// can take it by answering the detection first.
pub fn disable_dad(bridge: &IfName) -> Result<()> {
    let path = format!("{IPV6_CONF}/{bridge}/accept_dad");
    if !Path::new(&path).exists() {
        return Ok(());
    }
    ensure(&path, "0", "turning off duplicate address detection on the bridge").map(drop)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_an_interface_learned_from_advertisements_is_read_from_proc() {
        let default = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe8000000000000000000000000000ff 00000400 00000001 00000000 00050003   eth0";
        assert_eq!(learned_route(default), Some("eth0"));
        let kernel = "fd000060000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   eth0";
        assert_eq!(learned_route(kernel), None);
        let slaac = "fd000060000000001234567890abcdef 02 40 00 100     eth0";
        assert_eq!(autoconfigured_address(slaac), Some("eth0"));
        let manual = "fd000060000000000000000000000001 02 40 00 80     eth0";
        assert_eq!(autoconfigured_address(manual), None);
        let link_local = "fe80000000000000123456fffe7890ab 02 40 20 80     eth0";
        assert_eq!(autoconfigured_address(link_local), None);
    }
}
