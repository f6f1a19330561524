//! A managed network's whole life: bringing it up (bridge, addresses,
//! forwarding, rules, dnsmasq) and tearing it down, under the bridge's lock.
//! The helpers, `kvm-net up/down` and `kvm-net gc` all go through here.

use std::net::Ipv6Addr;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use ipnetwork::IpNetwork;

use crate::config::model::{Config, Network, Spoofing};
use crate::error::Error;
use crate::firewall::guests::GuestFilter;
use crate::firewall::{self, firewalld, plan, Backend, Firewall};
use crate::ifname::IfName;
use crate::kernel::netlink::{has_port_besides, Link, Netlink};
use crate::kernel::sysctl::{disable_accept_ra, disable_dad, enable_ipv4_forwarding, enable_ipv6_forwarding};
use crate::mac;
use crate::ops::lease_hook;
use crate::ops::warm::{fingerprint, Record};
use crate::security::lock::BridgeLock;
use crate::services::dnsmasq::{self, Dnsmasq, Hooks};
use crate::services::host_names;
use crate::shaping;
use crate::switch;
use crate::switch::linux::{
    abandoned_bridges, create_managed_bridge, find_bridge, Marks, KEPT_UP_ALIAS, MANAGED_ALIAS,
};
use crate::trace::trace;

/// What a managed bridge has besides the kernel's link: its firewall rules
/// and its dnsmasq. Built from the bridge name alone, so that leftovers of a
/// network no longer in the config can be removed too.
pub struct Services {
    /// The bridge's dnsmasq (running or not).
    pub dhcp_server: Dnsmasq,
    bridge: IfName,
}

impl Services {
    /// The services of `bridge` in this network namespace.
    pub fn for_bridge(bridge: &IfName) -> Result<Self> {
        Ok(Self { dhcp_server: Dnsmasq::for_bridge(bridge)?, bridge: bridge.clone() })
    }

    /// Removes everything kvm-net made for the bridge: its dnsmasq and rules
    /// on a thread of their own while the bridge itself (only if kvm-net
    /// created it) is deleted here. Both wait out an RCU grace period in the
    /// kernel (30-40 ms each under nf_tables); side by side they wait once.
    /// Nothing can use the rules meanwhile: the bridge has no ports. Keeps
    /// going past a failed step and reports every failure.
    pub fn tear_down(&self, netlink: &mut Netlink, bridge: Option<&Link>) -> Result<()> {
        let name = self.bridge.clone();
        let dhcp_server = self.dhcp_server.clone();
        let daemon_and_rules = std::thread::spawn(move || {
            let daemon = dhcp_server
                .stop()
                .and_then(|()| host_names::forget(&name))
                .with_context(|| format!("stopping DHCP on bridge {name}"));
            let zone =
                firewalld::release(&name).with_context(|| format!("taking bridge {name} out of firewalld's zone"));
            [daemon, firewall::remove(&name), zone]
        });
        let link = match bridge {
            Some(bridge) if bridge.is_managed() => {
                trace(format_args!("deleting bridge {}", bridge.name));
                netlink.delete(bridge)
            }
            Some(bridge) => {
                trace(format_args!("bridge {} is not kvm-net's; leaving it", bridge.name));
                Ok(())
            }
            None => Ok(()),
        };
        let [daemon, rules, zone] =
            daemon_and_rules.join().unwrap_or_else(|_| [Err(anyhow!("the teardown thread panicked")), Ok(()), Ok(())]);
        all_of([daemon, rules, zone, link])
    }
}

/// Every failure of steps that all ran: the first keeps its type (and so its
/// advice), the others are named in front of it.
fn all_of(steps: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    let mut failures = steps.into_iter().filter_map(Result::err);
    let Some(first) = failures.next() else { return Ok(()) };
    let others: Vec<String> = failures.map(|err| format!("{err:#}")).collect();
    if others.is_empty() {
        Err(first)
    } else {
        Err(first.context(format!("teardown failed in several steps (also: {})", others.join("; "))))
    }
}

/// Whether `network` needs a dnsmasq: for DHCP (and DNS), or to send
/// router advertisements (`ipv6_autoconfig`).
fn needs_dnsmasq(network: &Network) -> bool {
    network.dhcp.is_some() || (network.ipv6.is_some() && network.ipv6_autoconfig.advertises())
}

/// A managed network being brought up: checked before its lock is taken.
pub struct Bringup<'a> {
    network: &'a Network,
    dnsmasq_binary: Option<PathBuf>,
    /// The lease hook dnsmasq runs: for `guest_spoofing = "deny"` (which
    /// needs it), and to publish guests' names where it is installed.
    lease_hook: Option<PathBuf>,
    services: Services,
    jumps_ahead: bool,
}

impl<'a> Bringup<'a> {
    /// Checks what can be checked before anything is created: the mode, and
    /// dnsmasq where DHCP is on.
    pub fn prepare(network: &'a Network, helpers: &'static str) -> Result<Self> {
        if !network.mode.is_managed() {
            return Err(Error::wrong_helper(network, helpers));
        }
        let dnsmasq_binary = match needs_dnsmasq(network) {
            true => Some(dnsmasq::find_binary().ok_or_else(|| Error::MissingDnsmasq(network.name.clone()))?),
            false => None,
        };
        let lease_hook = match (network.guest_spoofing, &network.dhcp) {
            (Spoofing::Deny, _) => Some(lease_hook::hook_path().with_context(|| {
                format!("network {} has guest_spoofing = \"deny\", which needs {}", network.name, lease_hook::NAME)
            })?),
            // Without the hook guests' names are not published; nothing else is lost.
            (Spoofing::Allow, Some(dhcp)) if dhcp.dns => lease_hook::hook_path().ok(),
            (Spoofing::Allow, _) => None,
        };
        Ok(Self {
            network,
            dnsmasq_binary,
            lease_hook,
            services: Services::for_bridge(&network.bridge)?,
            jumps_ahead: false,
        })
    }

    /// Makes the network whole, then runs `and_then` on its bridge (attaching a
    /// tap). If the bridge was created here and anything fails, everything is
    /// removed again: QEMU does not run the downscript after a failed up-script.
    /// `lock` is the bridge's, which the caller holds.
    pub fn run(
        &self,
        netlink: &mut Netlink,
        lock: &BridgeLock,
        and_then: impl FnOnce(&mut Netlink, Link) -> Result<()>,
    ) -> Result<()> {
        let network = self.network;
        let existing =
            find_bridge(netlink, &network.bridge).with_context(|| format!("checking bridge {}", network.bridge))?;
        let (bridge, created) = match existing {
            Some(bridge) => {
                if bridge.lacks_alias() {
                    // kvm-net stopped between creating the bridge and naming it.
                    netlink.set_alias(&bridge, MANAGED_ALIAS)?;
                }
                (bridge, false)
            }
            None => (create_bridge(netlink, network)?, true),
        };
        let result =
            match self.complete(netlink, lock, &bridge).and_then(|bridge| keep_up(netlink, self.network, bridge)) {
                Ok(bridge) => and_then(netlink, bridge),
                Err(err) => Err(err),
            };
        if let (Err(_), true) = (&result, created) {
            trace(format_args!("undoing: removing bridge {} and what was made for it", bridge.name));
            // Best effort: the first error is the one worth reporting.
            let _ = self.services.tear_down(netlink, Some(&bridge));
        }
        result
    }

    fn complete(&self, netlink: &mut Netlink, lock: &BridgeLock, bridge: &Link) -> Result<Link> {
        let network = self.network;
        let name = &network.bridge;
        let addresses: Vec<_> = network.addresses().collect();
        netlink.ensure_addresses(bridge, &addresses)?;
        let bridge = match network.mtu {
            Some(mtu) if mtu != bridge.mtu => {
                netlink.set_mtu(bridge, mtu)?;
                Link { mtu, ..bridge.clone() }
            }
            _ => bridge.clone(),
        };
        if bridge.accept_ra != Some(0) {
            disable_accept_ra(name)?;
        }
        if network.ipv6.is_some() && bridge.accept_dad != Some(0) {
            disable_dad(name)?;
        }
        if !bridge.up {
            netlink.set_up(&bridge)?;
        }
        self.rules_whole(netlink, lock, &bridge)?;
        match &self.dnsmasq_binary {
            Some(binary) => self
                .services
                .dhcp_server
                .ensure(
                    binary,
                    network,
                    &Hooks {
                        lease_hook: self.lease_hook.as_deref(),
                        mac_only: network.guest_spoofing == Spoofing::Deny,
                    },
                )
                .with_context(|| format!("starting DHCP for network {} on {name}", network.name))?,
            // DHCP and router advertisements turned off in the config since the server was started.
            None => self.services.dhcp_server.stop()?,
        }
        // Written or, where the config names no host any more, removed.
        host_names::publish_config(network)
            .with_context(|| format!("publishing the guests' names of network {}", network.name))?;
        // Last: the step most likely to fail (the firewall) is behind us, and
        // forwarding is a host-wide switch that is never undone.
        if network.mode.forwards() {
            if network.ipv4.is_some() {
                enable_ipv4_forwarding()?;
            }
            if network.ipv6.is_some() {
                for uplink in enable_ipv6_forwarding()? {
                    trace(format_args!(
                        "net.ipv6.conf.{uplink}.accept_ra=2: it keeps taking router advertisements now that IPv6 forwarding is on"
                    ));
                }
            }
        }
        Ok(bridge)
    }
}

impl Bringup<'_> {
    /// Everything of the network's in nf_tables and firewalld: kvm-net's
    /// rules, the accepts beside other firewalls' drops, firewalld's zone,
    /// the guest filter. Skipped when the lock file proves it all unchanged
    /// since a check found it whole ([`crate::ops::warm`]); recorded again after
    /// a check that found it whole and changed nothing.
    fn rules_whole(&self, netlink: &mut Netlink, lock: &BridgeLock, bridge: &Link) -> Result<()> {
        let network = self.network;
        let name = &network.bridge;
        let firewall = Firewall::choose(network.firewall);
        let plan = plan(network);
        // Only for what nf_tables holds whole: the nftables backend, no guest
        // filter (its bindings also come from dnsmasq's leases), no repair.
        let guest_filter = GuestFilter::of(network);
        let provable = firewall.backend() == Backend::Nftables && !guest_filter.is_asked_for() && !self.jumps_ahead;
        let before = if provable { firewall::generation() } else { None };
        let record = before.map(|generation| Record {
            generation,
            bridge: bridge.index,
            fingerprint: fingerprint(&plan, firewall.backend()),
        });
        if let Some(record) = record {
            if lock.note().as_deref().and_then(Record::parse) == Some(record) {
                trace(format_args!("rules of {name} unchanged since generation {}: not read again", record.generation));
                return Ok(());
            }
        }
        firewall
            .ensure(&plan, self.jumps_ahead)
            .with_context(|| format!("setting up {} rules for bridge {name}", network.mode))?;
        firewalld::ensure(name, self.jumps_ahead)
            .with_context(|| format!("putting bridge {name} in firewalld's {} zone", firewalld::ZONE))?;
        // Also removes a filter the config dropped since it was made.
        let ports: Vec<String> = match guest_filter.is_asked_for() {
            true => netlink.ports_of(bridge)?.into_iter().map(|port| port.name).collect(),
            false => Vec::new(),
        };
        let link_local = match guest_filter.is_asked_for() {
            true => link_local_of(netlink, bridge)?,
            false => Vec::new(),
        };
        guest_filter.ensure(&ports, &link_local)?;
        if let Some(record) = record {
            if firewall::generation() == Some(record.generation) {
                trace(format_args!("rules of {name} whole at generation {}", record.generation));
                lock.set_note(&record.text())?;
            }
        }
        Ok(())
    }
}

/// The bridge's link-local IPv6 addresses: the one its MAC gives it
/// (which it takes once a port brings its carrier up), and any it has.
fn link_local_of(netlink: &mut Netlink, bridge: &Link) -> Result<Vec<Ipv6Addr>> {
    let mut found: Vec<Ipv6Addr> = bridge.mac.iter().map(mac::link_local).collect();
    for address in netlink.addresses_of(bridge)? {
        if let IpNetwork::V6(v6) = address {
            if v6.ip().is_unicast_link_local() && !found.contains(&v6.ip()) {
                found.push(v6.ip());
            }
        }
    }
    Ok(found)
}

fn create_bridge(netlink: &mut Netlink, network: &Network) -> Result<Link> {
    let name = &network.bridge;
    for subnet in network.subnets() {
        let users = netlink.subnet_users(subnet, None)?;
        if !users.is_empty() {
            return Err(anyhow::Error::new(Error::SubnetInUse {
                subnet: subnet.to_string(),
                network: network.name.clone(),
                user: users.join(", "),
            })
            .context(format!("creating bridge {name}")));
        }
    }
    trace(format_args!("creating bridge {name}"));
    match create_managed_bridge(netlink, name.as_str(), network.mtu)? {
        Some(bridge) => Ok(bridge),
        // Someone outside kvm-net's lock created it first: use theirs if it is a bridge.
        None => find_bridge(netlink, name)?.with_context(|| format!("bridge {name} appeared and vanished")),
    }
}

/// `kvm-net up`: brings a managed network up without a VM, and keeps it up
/// (marked in the bridge's alias) until `kvm-net down`: the last VM's
/// downscript and `kvm-net gc` leave it alone.
pub fn up(network: &Network) -> Result<()> {
    let bringup = Bringup::prepare(network, "kvm-net up")?;
    let mut netlink = Netlink::connect()?;
    let lock = BridgeLock::acquire(&network.bridge)?;
    bringup.run(&mut netlink, &lock, |netlink, bridge| mark_kept_up(netlink, &bridge).map(drop))
}

/// Marks a bridge kvm-net made as kept up (`kvm-net up`), unless it is
/// already; a bridge of the system's stays unmarked: its owner decides
/// when it goes.
fn mark_kept_up(netlink: &mut Netlink, bridge: &Link) -> Result<Link> {
    if !bridge.is_managed() || bridge.alias.as_deref() == Some(KEPT_UP_ALIAS) {
        return Ok(bridge.clone());
    }
    netlink.set_alias(bridge, KEPT_UP_ALIAS)?;
    Ok(Link { alias: Some(KEPT_UP_ALIAS.to_owned()), ..bridge.clone() })
}

/// An autostart network stays up after its last VM, whoever brought it up
/// (a VM's start at least): its bridge is kept up, as `kvm-net up` keeps it.
fn keep_up(netlink: &mut Netlink, network: &Network, bridge: Link) -> Result<Link> {
    match network.autostart {
        true => mark_kept_up(netlink, &bridge),
        false => Ok(bridge),
    }
}

/// `kvm-net up --autostart`: every autostart network of `config` up, as
/// `kvm-net up` brings one; each network's outcome, one failing not
/// stopping the others.
pub fn up_autostart(config: &Config) -> Vec<(&Network, Result<()>)> {
    config.networks.iter().filter(|n| n.autostart).map(|network| (network, up(network))).collect()
}

/// `kvm-net down --autostart`: every autostart network with no VM port
/// left taken down; a busy one stays up ([`Down::InUse`]).
pub fn down_autostart(config: &Config) -> Vec<(&Network, Result<Down>)> {
    config.networks.iter().filter(|n| n.autostart).map(|network| (network, down(&network.bridge, false))).collect()
}

/// `kvm-net repair`: makes a network that is up whole again, exactly as a VM
/// start would (addresses, rules, dnsmasq, forwarding), and moves its
/// firewall jumps ahead of DROP or REJECT rules that come before them. It
/// creates nothing for a network that is down, and leaves kept-up as it was.
/// Returns whether the network was up.
pub fn repair(network: &Network) -> Result<bool> {
    if !network.mode.is_managed() {
        return repair_limits(network);
    }
    let mut bringup = Bringup::prepare(network, "kvm-net repair")?;
    bringup.jumps_ahead = true;
    let mut netlink = Netlink::connect()?;
    let lock = BridgeLock::acquire(&network.bridge)?;
    if find_bridge(&mut netlink, &network.bridge)?.is_none() {
        return Ok(false);
    }
    bringup.run(&mut netlink, &lock, |netlink, bridge| limit_ports(netlink, network, &bridge))?;
    Ok(true)
}

/// Each guest port's limits as the config says (a bridged network has
/// nothing else of kvm-net's to repair). Whether the bridge is there.
fn repair_limits(network: &Network) -> Result<bool> {
    let mut netlink = Netlink::connect()?;
    let Some(bridge) = find_bridge(&mut netlink, &network.bridge)? else { return Ok(false) };
    limit_ports(&mut netlink, network, &bridge)?;
    Ok(true)
}

/// Gives every guest port of `bridge` the limits `network` asks for it;
/// nothing where the network has none.
fn limit_ports(netlink: &mut Netlink, network: &Network, bridge: &Link) -> Result<()> {
    if !shaping::is_asked_for(network) {
        return Ok(());
    }
    for port in netlink.ports_of(bridge)?.iter().filter(|port| shaping::is_guest_port(network, port)) {
        shaping::limit(netlink, network, port)?;
    }
    Ok(())
}

/// Why a managed network stays after a port left (`leaving`, which QEMU
/// runs the downscript of while it is still a port: never counted), if it
/// does: other ports, or `kvm-net up`. The one last-port decision of the
/// downscript, the watcher and `kvm-net gc`; `None`: it may go.
pub fn why_it_stays(bridge: &Link, leaving: Option<u32>) -> Result<Option<&'static str>> {
    Ok(stays(has_port_besides(bridge, leaving)?, bridge.is_kept_up()))
}

/// The decision itself: a network with other ports, or kept up, stays.
fn stays(other_ports: bool, kept_up: bool) -> Option<&'static str> {
    match (other_ports, kept_up) {
        (true, _) => Some("it has other ports"),
        (false, true) => Some("kvm-net up keeps it until kvm-net down"),
        (false, false) => None,
    }
}

/// What taking a network down found.
#[derive(Debug, PartialEq, Eq)]
pub enum Down {
    /// It was torn down; these ports were still attached (with `force`).
    Removed { detached: Vec<String> },
    /// It has ports and `force` was not given: nothing was changed.
    InUse { ports: Vec<String> },
}

/// Takes a managed bridge down (network from the config, or a bridge kvm-net
/// made that the config no longer names), under its lock.
pub fn down(bridge: &IfName, force: bool) -> Result<Down> {
    let lock = BridgeLock::acquire(bridge)?;
    let services = Services::for_bridge(bridge)?;
    let mut netlink = Netlink::connect()?;
    let link = find_bridge(&mut netlink, bridge)?;
    let ports: Vec<String> = match &link {
        Some(link) => netlink.ports_of(link)?.into_iter().map(|p| p.name).collect(),
        None => Vec::new(),
    };
    if !ports.is_empty() && !force {
        return Ok(Down::InUse { ports });
    }
    services.tear_down(&mut netlink, link.as_ref())?;
    let outcome = Down::Removed { detached: ports };
    lock.remove_file()?;
    Ok(outcome)
}

/// `kvm-net gc`: removes managed networks that have no ports left: bridges
/// kvm-net created (whatever the config says now), and what is left of
/// configured networks whose bridge is gone (rules, dnsmasq). Each under the
/// bridge's lock, re-checked once the lock is held, so a VM starting at the
/// same moment always wins. Returns one line per network removed.
pub fn gc(config: Option<&Config>, dry_run: bool) -> Result<Vec<String>> {
    let mut netlink = Netlink::connect()?;
    let links = netlink.all_links()?;
    let mut candidates: Vec<(IfName, Option<String>)> =
        abandoned_bridges(&links).filter_map(|l| IfName::parse(&l.name).ok()).map(|name| (name, None)).collect();
    for network in config.map_or(&[][..], |c| &c.networks).iter().filter(|n| n.mode.is_managed()) {
        match candidates.iter_mut().find(|(bridge, _)| *bridge == network.bridge) {
            Some(candidate) => candidate.1 = Some(network.name.clone()),
            None => candidates.push((network.bridge.clone(), Some(network.name.clone()))),
        }
    }
    let mut report = Vec::new();
    for (bridge, network) in candidates {
        let lock = BridgeLock::acquire(&bridge)?;
        let services = Services::for_bridge(&bridge)?;
        let leftovers = services.dhcp_server.leftover()
            || firewall::leftovers(&bridge)?
            || firewalld::leftover(&bridge)?
            || host_names::leftover(&bridge)?;
        let link = netlink.link_by_name(bridge.as_str())?;
        let what = match &link {
            Some(link) if link.is_managed() && why_it_stays(link, None)?.is_none() => "an empty bridge",
            None if leftovers => "rules or a dnsmasq of a bridge that is gone",
            _ => continue,
        };
        let named = network.as_deref().map_or(String::new(), |n| format!(" (network {n})"));
        if dry_run {
            report.push(format!("would remove {bridge}{named}: {what}"));
            continue;
        }
        services.tear_down(&mut netlink, link.as_ref())?;
        lock.remove_file()?;
        report.push(format!("removed {bridge}{named}: {what}"));
    }
    for network in config.map_or(&[][..], |c| &c.networks) {
        if !network.mode.is_managed() {
            report.extend(gc_switch(&mut netlink, network, dry_run)?);
        }
        if GuestFilter::of(network).is_asked_for() {
            report.extend(gc_guest_filter(&mut netlink, network, dry_run)?);
        }
    }
    // The ifbs of limited taps that went without a downscript, whatever
    // network they were of (the config may have changed since).
    let departed = shaping::departed(&mut netlink)?;
    if !dry_run && !departed.is_empty() {
        shaping::release_departed(&mut netlink)?;
    }
    let done = if dry_run { "would remove" } else { "removed" };
    report.extend(departed.iter().map(|ifb| format!("{done} {ifb}, the limit of a tap that is gone")));
    Ok(report)
}

/// The stale ports of a switch that keeps ports of departed taps (their
/// tap is gone, or is another tap of their name), removed under the
/// bridge's lock (a helper adding a tap of that name again holds it). A
/// switch that cannot be reached is reported, not an error: gc has other
/// networks to clean; one that is not there has no ports.
fn gc_switch(netlink: &mut Netlink, network: &Network, dry_run: bool) -> Result<Vec<String>> {
    let name = &network.name;
    let _lock = BridgeLock::acquire(&network.bridge)?;
    let mut switch = match switch::open(network, netlink, None) {
        Ok(switch) => switch,
        Err(err) if matches!(err.downcast_ref::<Error>(), Some(Error::NoBridge(_))) => return Ok(Vec::new()),
        Err(err) => return Ok(vec![format!("skipped network {name}: {err:#}")]),
    };
    let stale = switch.stale_ports(netlink)?;
    if !dry_run {
        for port in &stale {
            switch.forget(port)?;
        }
    }
    let done = if dry_run { "would remove" } else { "removed" };
    Ok(stale
        .iter()
        .map(|port| format!("{done} port {port} of {} (network {name}): its tap is gone", switch.describe()))
        .collect())
}

/// The guest filter's ports whose tap is gone (its VM was killed: no
/// downscript ran), released with everything bound to them, under the
/// bridge's lock.
fn gc_guest_filter(netlink: &mut Netlink, network: &Network, dry_run: bool) -> Result<Vec<String>> {
    let bridge = &network.bridge;
    let _lock = BridgeLock::acquire(bridge)?;
    let Some(link) = find_bridge(netlink, bridge)? else { return Ok(Vec::new()) };
    let filter = GuestFilter::of(network);
    let present: Vec<String> = netlink.ports_of(&link)?.into_iter().map(|port| port.name).collect();
    let (done, gone) = if dry_run {
        ("would release", filter.departed(&present)?)
    } else {
        ("released", filter.release_departed(&present)?)
    };
    Ok(gone
        .iter()
        .map(|port| {
            format!("{done} port {port} from the guest filter of {bridge} (network {}): its tap is gone", network.name)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_goes_with_its_last_port_unless_kept_up() {
        assert_eq!(stays(false, false), None);
        assert_eq!(stays(true, false), Some("it has other ports"));
        assert_eq!(stays(true, true), Some("it has other ports"));
        assert_eq!(stays(false, true), Some("kvm-net up keeps it until kvm-net down"));
    }
}
