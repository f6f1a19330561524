//! The guest-level firewall, beside the network-level plan: what each
//! guest's port may send, and what is bound to it. The plan's rules are the
//! same for every guest of a network and change with the config; these
//! change as guests come, lease and go, port by port. One interface,
//! [`GuestFilter`], which the operations and reports use and nothing else:
//! how it is written (nf_tables' bridge family, whichever backend holds the
//! plan: `nftables/antispoof.rs`) is this folder's business.
//!
//! What it does today: `guest_spoofing = "deny"` (a port locked to its
//! MAC, IPv4 and ARP only from its lease, DHCP only about its own MAC,
//! IPv6 only from addresses it holds first come first served or leased,
//! no server replies or router advertisements) and `dhcp.hosts`
//! reservations for taps. Per-port limits belong here too.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{anyhow, Result};

use super::nftables::antispoof;
pub use super::nftables::antispoof::{Binding, Policy};
use super::nftables::NftablesFirewall;
use crate::config::model::Network;
use crate::ifname::IfName;
use crate::mac::{self, Mac};

/// How a network's guest filter compares with what its config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterState {
    /// Its chain is there with exactly the rules asked for.
    Whole,
    /// Its chain is there with other rules (an older kvm-net's, a hand edit).
    Differs,
    /// There is none.
    Missing,
}

/// The guest filter of one bridge.
#[derive(Clone, Debug)]
pub struct GuestFilter {
    bridge: IfName,
    /// What the config asks of it; `None`: no filter (or the config is not known).
    policy: Option<Policy>,
}

impl GuestFilter {
    /// The filter `network` asks for (none: [`GuestFilter::is_asked_for`] is false).
    pub fn of(network: &Network) -> Self {
        let policy = Policy::of(network).filter(|_| network.mode.is_managed());
        Self { bridge: network.bridge.clone(), policy }
    }

    /// The filter of `bridge`, whatever the config says: for reading and
    /// removing what is there (the lease hook, a teardown).
    pub fn of_bridge(bridge: &IfName) -> Self {
        Self { bridge: bridge.clone(), policy: None }
    }

    /// Whether the network's config asks for a guest filter.
    pub fn is_asked_for(&self) -> bool {
        self.policy.is_some()
    }

    /// Whether the bridge has a filter now (the kernel has nf_tables, and
    /// the filter's chain is there).
    pub fn is_present(&self) -> Result<bool> {
        Ok(NftablesFirewall::available() && antispoof::present(&self.bridge)?)
    }

    /// Makes the filter what the config asks for, with `ports` (the
    /// bridge's ports now) admitted and nothing left of ports that are gone;
    /// removes a filter the config no longer asks for. `link_local`: the
    /// bridge's link-local addresses, which no guest may use either.
    pub fn ensure(&self, ports: &[String], link_local: &[Ipv6Addr]) -> Result<()> {
        match &self.policy {
            Some(policy) => antispoof::ensure(&self.bridge, &policy.clone().with_own(link_local), ports),
            None if self.is_present()? => antispoof::remove(&self.bridge),
            None => Ok(()),
        }
    }

    /// Lets a port on, before it comes up, with nothing of an earlier port
    /// of its name bound to it.
    pub fn admit(&self, port: &str) -> Result<()> {
        match &self.policy {
            Some(policy) => antispoof::admit(&self.bridge, policy, port),
            None => Ok(()),
        }
    }

    /// Takes a port out, with everything bound to it (its downscript).
    pub fn release(&self, port: &str) -> Result<()> {
        match &self.policy {
            Some(_) => antispoof::release(&self.bridge, port),
            None => Ok(()),
        }
    }

    /// The admitted ports not among `present` (taps gone without a downscript).
    pub fn departed(&self, present: &[String]) -> Result<Vec<String>> {
        if !self.is_present()? {
            return Ok(Vec::new());
        }
        antispoof::departed(&self.bridge, present)
    }

    /// Takes out every [`GuestFilter::departed`] port, with everything
    /// bound to it; their names.
    pub fn release_departed(&self, present: &[String]) -> Result<Vec<String>> {
        if !self.is_present()? {
            return Ok(Vec::new());
        }
        antispoof::release_departed(&self.bridge, present)
    }

    /// Binds a lease (`ip` to `mac`, DHCP or DHCPv6) to the port the filter
    /// locked `mac` to: never to one the lease's words point at, nor to one
    /// the bridge merely learned it behind (any frame teaches the bridge).
    pub fn bind(&self, mac: &Mac, ip: IpAddr) -> Result<()> {
        let bridge = &self.bridge;
        match antispoof::port_holding(bridge, mac)? {
            Some(port) if antispoof::admits(bridge, &port)? => antispoof::bind(bridge, &port, mac, ip),
            _ => Err(anyhow!("no port of bridge {bridge} sends from {}: {ip} stays unbound", mac::show(mac))),
        }
    }

    /// Unbinds a lease that ended, wherever it is bound.
    pub fn unbind(&self, mac: &Mac, ip: IpAddr) -> Result<()> {
        antispoof::unbind(&self.bridge, mac, ip)
    }

    /// What is bound to each port now (none without a filter).
    pub fn bindings(&self) -> Result<Vec<Binding>> {
        if !self.is_present()? {
            return Ok(Vec::new());
        }
        antispoof::bindings(&self.bridge)
    }

    /// How the filter compares with what the config asks for; `None` when
    /// the config asks for none.
    pub fn state(&self) -> Result<Option<FilterState>> {
        let Some(policy) = &self.policy else { return Ok(None) };
        Ok(Some(match antispoof::state(&self.bridge, policy)? {
            Some(true) => FilterState::Whole,
            Some(false) => FilterState::Differs,
            None => FilterState::Missing,
        }))
    }

    /// Whether anything of the filter is left.
    pub fn is_left(&self) -> Result<bool> {
        Ok(NftablesFirewall::available() && antispoof::leftover(&self.bridge)?)
    }

    /// Removes the filter, with its record of bindings.
    pub fn remove(&self) -> Result<()> {
        antispoof::remove(&self.bridge)
    }
}
