//! The four operations QEMU's `script=`/`downscript=` run, each a short
//! sequence of kernel requests that is safe to repeat and to run concurrently.

use anyhow::{Context, Result};

use crate::config::{Network, Source};
use crate::error::Error;
use crate::ifname::IfName;
use crate::lock::BridgeLock;
use crate::netlink::{has_port_besides, Link, Netlink};
use crate::network::{block_on, find_bridge, Bringup, Services};
use crate::trace::trace;

/// The tap QEMU named: it must exist and must not be a bridge.
async fn require_tap(netlink: &Netlink, tap: &IfName) -> Result<Link> {
    match netlink.link_by_name(tap.as_str()).await? {
        None => Err(Error::NoSuchInterface(tap.to_string()).into()),
        Some(link) if link.is_bridge() => Err(Error::TapIsBridge(tap.to_string()).into()),
        Some(link) => Ok(link),
    }
}

/// `kvm-ifup`: puts the tap on an existing bridge (bridged networks, and the
/// built-in default's `br0` exactly as `/etc/qemu-ifup` did).
pub fn ifup(tap: &IfName, network: &Network, source: &Source) -> Result<()> {
    if network.mode.is_managed() && *source != Source::Builtin {
        return Err(Error::wrong_helper(network, "kvm-ifup/kvm-ifdown"));
    }
    let bridge_name = &network.bridge;
    block_on(async {
        let netlink = Netlink::connect()?;
        let port = require_tap(&netlink, tap).await.with_context(|| format!("checking interface {tap}"))?;
        let bridge = find_bridge(&netlink, bridge_name)
            .await
            .and_then(|found| found.ok_or_else(|| Error::NoBridge(bridge_name.to_string()).into()))
            .with_context(|| format!("attaching {tap} to bridge {bridge_name}"))?;
        trace(format_args!("attaching {tap} to {} (mtu {})", bridge.name, bridge.mtu));
        netlink.attach(&port, &bridge).await
    })
}

/// `kvm-ifdown`: takes the tap off its bridge and sets it down; a tap that is
/// already gone or detached is fine. Reads no config: it acts on what the
/// kernel says the tap is attached to.
pub fn ifdown(tap: &IfName) -> Result<()> {
    block_on(async {
        let netlink = Netlink::connect()?;
        let Some(link) = netlink.link_by_name(tap.as_str()).await? else {
            trace(format_args!("{tap} is gone already"));
            return Ok(());
        };
        if link.is_bridge() {
            return Err(Error::TapIsBridge(tap.to_string()).into());
        }
        if let Some(index) = link.controller {
            if let Some(bridge) = netlink.link_by_index(index).await?.filter(Link::is_managed) {
                eprintln!(
                    "kvm-ifdown: warning: {} is a network kvm-natup created; pair kvm-natup with kvm-natdown so that it is removed when its last VM stops",
                    bridge.name
                );
            }
        }
        netlink.detach_and_down(&link).await
    })
}

/// `kvm-natup`: makes a managed network whole (bridge, addresses,
/// forwarding, rules, DHCP), then attaches the tap.
pub fn natup(tap: &IfName, network: &Network) -> Result<()> {
    let bringup = Bringup::prepare(network, "kvm-natup/kvm-natdown")?;
    let _lock = BridgeLock::acquire(&network.bridge)?;
    block_on(async {
        let netlink = Netlink::connect()?;
        // Checked first: nothing is created for a tap that is not there.
        let port = require_tap(&netlink, tap).await.with_context(|| format!("checking interface {tap}"))?;
        let netlink = &netlink;
        bringup
            .run(netlink, |bridge| async move {
                trace(format_args!("attaching {} to {} (mtu {})", port.name, bridge.name, bridge.mtu));
                netlink.attach(&port, &bridge).await
            })
            .await
    })
}

/// `kvm-natdown`: detaches the tap; when no other port is left, removes
/// kvm-net's rules and dnsmasq for the bridge and, if kvm-net created it, the bridge.
pub fn natdown(tap: &IfName, network: &Network) -> Result<()> {
    if !network.mode.is_managed() {
        return Err(Error::wrong_helper(network, "kvm-natup/kvm-natdown"));
    }
    let lock = BridgeLock::acquire(&network.bridge)?;
    let services = Services::for_bridge(&network.bridge)?;
    let network_gone = block_on(async {
        let netlink = Netlink::connect()?;
        let port = netlink.link_by_name(tap.as_str()).await?;
        if let Some(port) = &port {
            if port.is_bridge() {
                return Err(Error::TapIsBridge(tap.to_string()).into());
            }
            netlink.detach_and_down(port).await?;
        }
        let bridge = match netlink.link_by_name(network.bridge.as_str()).await? {
            Some(bridge) if bridge.is_bridge() => bridge,
            Some(_) => return Ok(true),
            None => {
                trace(format_args!("bridge {} is gone; removing anything left for it", network.bridge));
                services.tear_down(&netlink, None).await?;
                return Ok(true);
            }
        };
        // QEMU runs the downscript while the tap is still a port: never count it.
        if has_port_besides(&bridge, port.as_ref().map(|p| p.index))? {
            trace(format_args!("bridge {} keeps other ports", bridge.name));
            return Ok(false);
        }
        if bridge.is_kept_up() {
            trace(format_args!("bridge {} stays: kvm-net up keeps it until kvm-net down", bridge.name));
            return Ok(false);
        }
        services.tear_down(&netlink, Some(&bridge)).await?;
        Ok(true)
    })?;
    // Nothing of kvm-net's is left for this bridge: neither is its lock file.
    if network_gone {
        lock.remove_file()?;
    }
    Ok(())
}
