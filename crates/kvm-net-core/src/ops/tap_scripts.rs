//! The four operations QEMU's `script=`/`downscript=` run, each a short
//! sequence of kernel requests that is safe to repeat and to run concurrently.

use anyhow::{Context, Result};

use crate::config::model::{Network, Source};
use crate::error::Error;
use crate::firewall::guests::GuestFilter;
use crate::ifname::IfName;
use crate::kernel::netlink::{Link, Netlink};
use crate::ops::network::{why_it_stays, Bringup, Services};
use crate::ops::watch;
use crate::security::access::Access;
use crate::security::lock::BridgeLock;
use crate::shaping;
use crate::switch::linux::Marks;
use crate::switch::{self, Switch, Tap};
use crate::trace::{trace, warn};

/// The tap QEMU named, if it exists: it must not be a bridge, and a caller
/// other than root must own it.
fn find_tap(netlink: &mut Netlink, tap: &IfName, access: &Access) -> Result<Option<Link>> {
    match netlink.link_by_name(tap.as_str())? {
        Some(link) if link.is_bridge() => Err(Error::TapIsBridge(tap.to_string()).into()),
        Some(link) => {
            access.check_port(&link)?;
            Ok(Some(link))
        }
        None => Ok(None),
    }
}

/// As [`find_tap`], for a tap that must exist.
fn require_tap(netlink: &mut Netlink, tap: &IfName, access: &Access) -> Result<Link> {
    find_tap(netlink, tap, access)?.ok_or_else(|| Error::NoSuchInterface(tap.to_string()).into())
}

/// The tap checked before the bridge's lock was taken, as it is now, if it
/// is still there (looked up by index, which the kernel does not reuse: a
/// tap renamed or replaced meanwhile is not taken for it).
fn checked_tap_now(netlink: &mut Netlink, checked: &Link) -> Result<Option<Link>> {
    Ok(netlink.link_by_index(checked.index)?.filter(|now| now.name == checked.name))
}

/// `kvm-ifup`: puts the tap on an existing switch: a Linux bridge (bridged
/// networks, and the built-in default's `br0` exactly as `/etc/qemu-ifup`
/// did) or an Open vSwitch bridge (ovs networks). A switch that keeps the
/// ports of departed taps gets them under the bridge's lock, and a watcher
/// that removes the port of a VM gone without its downscript. `all` are
/// the config's networks, whose switches may hold a stale port of the tap's
/// name.
pub fn ifup(tap: &IfName, network: &Network, source: &Source, access: &Access, all: &[Network]) -> Result<()> {
    if network.mode.is_managed() && *source != Source::Builtin {
        return Err(Error::wrong_helper(network, "kvm-ifup/kvm-ifdown"));
    }
    let mut netlink = Netlink::connect()?;
    let port = require_tap(&mut netlink, tap, access).with_context(|| format!("checking interface {tap}"))?;
    let attaching = || format!("attaching {tap} to {}", switch::describe(network));
    let mut switch = switch::open(network, &mut netlink, None).with_context(attaching)?;
    // Such a port is added under the bridge's lock, which the watcher
    // removes ports under: it never takes this one for a stale one.
    let _lock = switch.keeps_departed_ports().then(|| BridgeLock::acquire(&network.bridge)).transpose()?;
    if port.tun.is_some_and(|tun| tun.vnet_header) && switch.forwards_unfinished_checksums()? {
        warn(format_args!(
            "kvm-ifup: warning: {} (the userspace datapath) forwards the unfinished checksums of {tap}'s guest as they are, so its TCP and UDP will be dropped: start QEMU with -netdev tap,...,vnet_hdr=off, or with -netdev bridge (the bridge helper makes such taps without virtio-net headers)",
            switch.describe()
        ));
    }
    release_stale_named(all, network, tap.as_str())?;
    attach_limited(&mut netlink, network, &mut *switch, &port, Tap::Qemu)?;
    if switch.keeps_departed_ports() {
        watch::ensure_watcher(network)?;
    }
    Ok(())
}

/// Takes away stale ports named `tap` from the other switches of `all`
/// that keep ports of departed taps ([`switch::release_stale_named`]).
pub fn release_stale_named(all: &[Network], network: &Network, tap: &str) -> Result<()> {
    switch::release_stale_named(all, network, tap)
        .with_context(|| format!("checking Open vSwitch for a stale port {tap}"))
}

/// `kvm-ifdown`: takes the tap off its switch and sets it down; a tap that
/// is already gone or detached is fine. It acts on what the kernel says:
/// the Linux bridge the tap is a port of, or the network the tap's mark
/// names (whose config, from `marked_network`, says where its switch is).
pub fn ifdown(tap: &IfName, access: &Access, marked_network: impl FnOnce(&str) -> Result<Network>) -> Result<()> {
    let mut netlink = Netlink::connect()?;
    let Some(link) = find_tap(&mut netlink, tap, access).with_context(|| format!("checking interface {tap}"))? else {
        trace(format_args!("{tap} is gone already"));
        return Ok(());
    };
    if let Some(index) = link.controller {
        if let Some(bridge) = netlink.link_by_index(index)?.filter(Link::is_managed) {
            warn(format_args!(
                "kvm-ifdown: warning: {} is a network kvm-natup created; pair kvm-natup with kvm-natdown so that it is removed when its last VM stops",
                bridge.name
            ));
        }
    } else if let Some((kind, name)) = switch::network_marked_on(&link) {
        let network = marked_network(name)?;
        if switch::kind_of(&network) == kind {
            let mut switch = switch::open(&network, &mut netlink, None)
                .with_context(|| format!("detaching {tap} from {}", switch::describe(&network)))?;
            return switch.detach(&mut netlink, &link);
        }
        trace(format_args!("{tap}: network {name} has no {kind} switch any more"));
    }
    netlink.detach_and_down(&link)?;
    // kvm-ifdown reads no config: whatever limits kvm-net gave the tap go.
    shaping::unlimit(&mut netlink, &link)
}

/// `kvm-natup`: makes a managed network whole (bridge, addresses,
/// forwarding, rules, DHCP), then plugs the tap in ([`plug_in`]; `all`: the
/// config's networks).
pub fn natup(tap: &IfName, network: &Network, access: &Access, all: &[Network]) -> Result<()> {
    let bringup = Bringup::prepare(network, "kvm-natup/kvm-natdown")?;
    let mut netlink = Netlink::connect()?;
    // Checked first: nothing is created for a tap that is not there, or not the caller's.
    let checked = require_tap(&mut netlink, tap, access).with_context(|| format!("checking interface {tap}"))?;
    let lock = BridgeLock::acquire(&network.bridge)?;
    let port = checked_tap_now(&mut netlink, &checked)?.ok_or_else(|| Error::NoSuchInterface(tap.to_string()))?;
    bringup
        .run(&mut netlink, &lock, |netlink, bridge| plug_in(netlink, network, all, bridge, &port, Tap::Qemu).map(drop))
}

/// A guest's tap onto a managed network's bridge (which its bring-up found
/// or made), under the bridge's lock: first away from any other switch
/// that would take a tap of its name, then into the network's guest filter,
/// then onto the bridge. Returns the switch, for what follows.
pub fn plug_in(
    netlink: &mut Netlink,
    network: &Network,
    all: &[Network],
    bridge: Link,
    port: &Link,
    tap: Tap,
) -> Result<Box<dyn Switch>> {
    release_stale_named(all, network, &port.name)?;
    GuestFilter::of(network).admit(&port.name)?;
    let mut switch = switch::open(network, netlink, Some(bridge))?;
    attach_limited(netlink, network, &mut *switch, port, tap)?;
    Ok(switch)
}

/// Gives `port` its limits, if the network has any, then attaches it
/// (which brings it up): no frame passes unlimited. If the attach fails,
/// the limits go again.
pub fn attach_limited(
    netlink: &mut Netlink,
    network: &Network,
    switch: &mut dyn Switch,
    port: &Link,
    tap: Tap,
) -> Result<()> {
    let limited = shaping::is_asked_for(network);
    if limited {
        shaping::limit(netlink, network, port)?;
    }
    let attached = switch.attach(netlink, port, tap);
    if attached.is_err() && limited {
        // Best effort: the attach's error is the one worth reporting.
        let _ = shaping::unlimit(netlink, port);
    }
    attached
}

/// `kvm-natdown`: detaches the tap; when no other port is left, removes
/// kvm-net's rules and dnsmasq for the bridge and, if kvm-net created it, the bridge.
pub fn natdown(tap: &IfName, network: &Network, access: &Access) -> Result<()> {
    if !network.mode.is_managed() {
        return Err(Error::wrong_helper(network, "kvm-natup/kvm-natdown"));
    }
    let services = Services::for_bridge(&network.bridge)?;
    let mut netlink = Netlink::connect()?;
    let checked = find_tap(&mut netlink, tap, access).with_context(|| format!("checking interface {tap}"))?;
    let lock = BridgeLock::acquire(&network.bridge)?;
    // Nothing of kvm-net's is left for this bridge: neither is its lock file.
    if natdown_locked(&mut netlink, network, &services, checked)? {
        lock.remove_file()?;
    }
    Ok(())
}

/// [`natdown`] once the bridge's lock is held; whether the network is gone.
fn natdown_locked(netlink: &mut Netlink, network: &Network, services: &Services, tap: Option<Link>) -> Result<bool> {
    let port = match &tap {
        Some(checked) => checked_tap_now(netlink, checked)?,
        None => None,
    };
    if let Some(port) = &port {
        netlink.detach_and_down(port)?;
        // Tap names are reused: nothing of this guest's stays bound to it.
        GuestFilter::of(network).release(&port.name)?;
        if shaping::is_asked_for(network) {
            shaping::unlimit(netlink, port)?;
        }
    }
    let bridge = match netlink.link_by_name(network.bridge.as_str())? {
        Some(bridge) if bridge.is_bridge() => bridge,
        Some(_) => return Ok(true),
        None => {
            trace(format_args!("bridge {} is gone; removing anything left for it", network.bridge));
            services.tear_down(netlink, None)?;
            return Ok(true);
        }
    };
    // QEMU runs the downscript while the tap is still a port: never count it.
    if let Some(why) = why_it_stays(&bridge, port.as_ref().map(|p| p.index))? {
        trace(format_args!("bridge {} stays: {why}", bridge.name));
        return Ok(false);
    }
    services.tear_down(netlink, Some(&bridge))?;
    Ok(true)
}
