//! Kernel switches a NAT network needs, read before written so a run that
//! changes nothing writes nothing.

use std::fs;

use anyhow::{Context, Result};

const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns on IPv4 forwarding in the caller's network namespace.
pub fn enable_ipv4_forwarding() -> Result<()> {
    let current = fs::read_to_string(IPV4_FORWARD).with_context(|| format!("reading {IPV4_FORWARD}"))?;
    if current.trim() == "1" {
        return Ok(());
    }
    fs::write(IPV4_FORWARD, "1").with_context(|| format!("enabling IPv4 forwarding ({IPV4_FORWARD})"))
}
