//! The four operations QEMU's `script=`/`downscript=` run, each a short
//! sequence of kernel requests that is safe to repeat and to run concurrently.

use std::future::Future;
use std::path::Path;

use anyhow::{Context, Result};

use ipnetwork::IpNetwork;

use crate::config::{Network, Source};
use crate::dnsmasq::{self, Dnsmasq};
use crate::error::Error;
use crate::firewall::{all_chains, network_chains, Firewall, IptablesFirewall};
use crate::ifname::IfName;
use crate::lock::BridgeLock;
use crate::netlink::{Link, Netlink};
use crate::sysctl::{disable_accept_ra, enable_ipv4_forwarding, enable_ipv6_forwarding};
use crate::trace::trace;

/// Runs one operation on a single-threaded runtime: a helper makes a handful of
/// sequential netlink requests and needs nothing more.
fn block_on<T>(operation: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_io().build().context("starting the netlink runtime")?;
    runtime.block_on(operation)
}

/// The tap QEMU named: it must exist and must not be a bridge.
async fn require_tap(netlink: &Netlink, tap: &IfName) -> Result<Link> {
    match netlink.link_by_name(tap.as_str()).await? {
        None => Err(Error::NoSuchInterface(tap.to_string()).into()),
        Some(link) if link.is_bridge() => Err(Error::TapIsBridge(tap.to_string()).into()),
        Some(link) => Ok(link),
    }
}

/// A link named `bridge`, if there is one, refusing a link of another kind.
async fn find_bridge(netlink: &Netlink, bridge: &IfName) -> Result<Option<Link>> {
    match netlink.link_by_name(bridge.as_str()).await? {
        Some(link) if !link.is_bridge() => {
            Err(Error::NotABridge { name: bridge.to_string(), kind: link.kind.unwrap_or_else(|| "device".to_owned()) }
                .into())
        }
        found => Ok(found),
    }
}

/// `kvm-ifup`: puts the tap on an existing bridge (bridged networks, and the
/// built-in default's `br0` exactly as `/etc/qemu-ifup` did).
pub fn ifup(tap: &IfName, network: &Network, source: &Source) -> Result<()> {
    if network.mode.is_managed() && *source != Source::Builtin {
        return Err(wrong_helper(network, "kvm-ifup/kvm-ifdown"));
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
        match netlink.link_by_name(tap.as_str()).await? {
            None => {
                trace(format_args!("{tap} is gone already"));
                Ok(())
            }
            Some(link) if link.is_bridge() => Err(Error::TapIsBridge(tap.to_string()).into()),
            Some(link) => {
                if let Some(index) = link.controller {
                    if let Some(bridge) = netlink.link_by_index(index).await? {
                        if bridge.is_managed() {
                            eprintln!(
                                "kvm-ifdown: warning: {} is a network kvm-natup created; pair kvm-natup with kvm-natdown so that it is removed when its last VM stops",
                                bridge.name
                            );
                        }
                    }
                }
                netlink.detach_and_down(&link).await
            }
        }
    })
}

fn wrong_helper(network: &Network, helpers: &'static str) -> anyhow::Error {
    anyhow::Error::new(Error::WrongHelper { network: network.name.clone(), mode: network.mode, helpers })
        .context(format!("choosing network {}", network.name))
}

/// `kvm-natup`: makes a managed network whole (bridge, addresses,
/// forwarding, rules), then attaches the tap. Undoes what it created if a
/// step fails, because QEMU does not run the downscript after a failed
/// up-script.
pub fn natup(tap: &IfName, network: &Network) -> Result<()> {
    if !network.mode.is_managed() {
        return Err(wrong_helper(network, "kvm-natup/kvm-natdown"));
    }
    // Checked before anything is created: a missing dnsmasq is the user's to fix.
    let dnsmasq_binary = match &network.dhcp {
        Some(_) => Some(dnsmasq::find_binary().ok_or_else(|| Error::MissingDnsmasq(network.name.clone()))?),
        None => None,
    };
    let _lock = BridgeLock::acquire(&network.bridge)?;
    let firewall = IptablesFirewall::new();
    let dhcp_server = Dnsmasq::for_bridge(&network.bridge)?;
    block_on(async {
        let netlink = Netlink::connect()?;
        let port = require_tap(&netlink, tap).await.with_context(|| format!("checking interface {tap}"))?;
        let existing = find_bridge(&netlink, &network.bridge)
            .await
            .with_context(|| format!("checking bridge {}", network.bridge))?;
        let (bridge, created) = match existing {
            Some(bridge) => (bridge, false),
            None => (create_bridge(&netlink, network).await?, true),
        };
        let services =
            Services { firewall: &firewall, dhcp_server: &dhcp_server, dnsmasq_binary: dnsmasq_binary.as_deref() };
        let result = complete_network(&netlink, &services, &port, &bridge, network).await;
        if let (Err(_), true) = (&result, created) {
            trace(format_args!("undoing: removing bridge {} and its rules", bridge.name));
            // Best effort: the first error is the one worth reporting.
            let _ = dhcp_server.stop();
            let _ = firewall.remove(&all_chains(&network.bridge));
            let _ = netlink.delete(&bridge).await;
        }
        result
    })
}

async fn create_bridge(netlink: &Netlink, network: &Network) -> Result<Link> {
    let name = &network.bridge;
    let subnets = network.ipv4.map(IpNetwork::V4).into_iter().chain(network.ipv6.map(IpNetwork::V6));
    for subnet in subnets {
        let users = netlink.subnet_users(subnet, None).await?;
        if !users.is_empty() {
            let subnet = IpNetwork::new(subnet.network(), subnet.prefix()).unwrap_or(subnet);
            return Err(anyhow::Error::new(Error::SubnetInUse {
                subnet: subnet.to_string(),
                network: network.name.clone(),
                user: users.join(", "),
            })
            .context(format!("creating bridge {name}")));
        }
    }
    trace(format_args!("creating bridge {name}"));
    match netlink.create_managed_bridge(name.as_str(), bridge_mac(name), network.mtu).await? {
        Some(bridge) => Ok(bridge),
        // Someone outside kvm-net's lock created it first: use theirs if it is a bridge.
        None => find_bridge(netlink, name).await?.with_context(|| format!("bridge {name} appeared and vanished")),
    }
}

/// What a managed network runs besides the kernel's bridge.
struct Services<'a> {
    firewall: &'a IptablesFirewall,
    dhcp_server: &'a Dnsmasq,
    /// Set when the network has DHCP.
    dnsmasq_binary: Option<&'a Path>,
}

async fn complete_network(
    netlink: &Netlink,
    services: &Services<'_>,
    port: &Link,
    bridge: &Link,
    network: &Network,
) -> Result<()> {
    let name = &network.bridge;
    for address in network.ipv4.map(IpNetwork::V4).into_iter().chain(network.ipv6.map(IpNetwork::V6)) {
        netlink.ensure_address(bridge, address).await?;
    }
    let bridge = match network.mtu {
        Some(mtu) if mtu != bridge.mtu => {
            netlink.set_mtu(bridge, mtu).await?;
            Link { mtu, ..bridge.clone() }
        }
        _ => bridge.clone(),
    };
    disable_accept_ra(name)?;
    if !bridge.up {
        netlink.set_up(&bridge).await?;
    }
    services
        .firewall
        .ensure(&network_chains(network))
        .with_context(|| format!("setting up {} rules for bridge {name}", network.mode))?;
    match (&network.dhcp, services.dnsmasq_binary) {
        (Some(dhcp), Some(binary)) => services
            .dhcp_server
            .ensure(binary, network, dhcp)
            .with_context(|| format!("starting DHCP for network {} on {name}", network.name))?,
        // DHCP turned off in the config since the server was started.
        _ => services.dhcp_server.stop()?,
    }
    // Last before attaching: the step most likely to fail (the firewall) is
    // behind us, and forwarding is a host-wide switch that is never undone.
    if network.mode.forwards() {
        if network.ipv4.is_some() {
            enable_ipv4_forwarding()?;
        }
        if network.ipv6.is_some() {
            for uplink in enable_ipv6_forwarding()? {
                eprintln!(
                    "kvm-natup: warning: IPv6 forwarding is now on, so {uplink} (accept_ra=1) ignores router advertisements; if it gets its address or route from them, set net.ipv6.conf.{uplink}.accept_ra=2"
                );
            }
        }
    }
    trace(format_args!("attaching {} to {name} (mtu {})", port.name, bridge.mtu));
    netlink.attach(port, &bridge).await
}

/// `kvm-natdown`: detaches the tap; when no other port is left, removes
/// kvm-net's rules for the bridge and, if kvm-net created it, the bridge.
pub fn natdown(tap: &IfName, network: &Network) -> Result<()> {
    if !network.mode.is_managed() {
        return Err(wrong_helper(network, "kvm-natup/kvm-natdown"));
    }
    let lock = BridgeLock::acquire(&network.bridge)?;
    let firewall = IptablesFirewall::new();
    let dhcp_server = Dnsmasq::for_bridge(&network.bridge)?;
    let chains = all_chains(&network.bridge);
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
                trace(format_args!("bridge {} is gone; removing any rules and dnsmasq left for it", network.bridge));
                dhcp_server.stop()?;
                firewall.remove(&chains)?;
                return Ok(true);
            }
        };
        // QEMU runs the downscript while the tap is still a port: never count it.
        let others = netlink
            .ports_of(&bridge)
            .await?
            .into_iter()
            .filter(|link| Some(link.index) != port.as_ref().map(|p| p.index))
            .count();
        if others > 0 {
            trace(format_args!("bridge {} keeps {others} port(s)", bridge.name));
            return Ok(false);
        }
        // Teardown order: the daemon, the rules, then the bridge.
        dhcp_server.stop().with_context(|| format!("stopping DHCP on bridge {}", bridge.name))?;
        firewall.remove(&chains).with_context(|| format!("removing the rules for bridge {}", bridge.name))?;
        if bridge.is_managed() {
            trace(format_args!("deleting bridge {}", bridge.name));
            netlink.delete(&bridge).await?;
        } else {
            trace(format_args!("bridge {} is not kvm-net's; leaving it", bridge.name));
        }
        Ok(true)
    })?;
    // Nothing of kvm-net's is left for this bridge: neither is its lock file.
    if network_gone {
        lock.remove_file()?;
    }
    Ok(())
}

/// A stable, locally administered MAC for a bridge kvm-net creates: a bridge
/// without one takes the lowest MAC of its ports, which changes as VMs come
/// and go and makes guests' ARP caches stale.
pub fn bridge_mac(bridge: &IfName) -> [u8; 6] {
    // FNV-1a: tiny, stable across releases and platforms.
    let hash = bridge
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let [a, b, c, d, e, ..] = hash.to_be_bytes();
    [0x02, a, b, c, d, e]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_unicast_locally_administered_and_stable() {
        let name = IfName::parse("br0").expect("valid");
        let mac = bridge_mac(&name);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac, bridge_mac(&name));
        assert_ne!(mac, bridge_mac(&IfName::parse("br1").expect("valid")));
    }
}
