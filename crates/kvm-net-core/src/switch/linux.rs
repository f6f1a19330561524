//! A Linux bridge as a network's switch: ports are links whose master is
//! the bridge (`IFLA_MASTER`), attached with the bridge's MTU and, with
//! `isolate_guests`, isolated before they come up.

use anyhow::Result;

use super::{Switch, Tap};
use crate::config::model::Network;
use crate::error::Error;
use crate::ifname::IfName;
use crate::kernel::netlink::{Link, Netlink, PortIsolation};
use crate::trace::trace;

/// A link named `bridge`, if there is one, refusing a link of another kind.
pub fn find_bridge(netlink: &mut Netlink, bridge: &IfName) -> Result<Option<Link>> {
    match netlink.link_by_name(bridge.as_str())? {
        Some(link) if !link.is_bridge() => {
            Err(Error::NotABridge { name: bridge.to_string(), kind: link.kind.unwrap_or_else(|| "device".to_owned()) }
                .into())
        }
        found => Ok(found),
    }
}

/// A Linux bridge, as the kernel has it now.
pub struct LinuxBridge {
    bridge: Link,
    isolation: PortIsolation,
}

impl LinuxBridge {
    /// The bridge a network names; it must exist (kvm-net makes only managed networks' bridges).
    pub fn existing(netlink: &mut Netlink, network: &Network) -> Result<Self> {
        let name = &network.bridge;
        let bridge = find_bridge(netlink, name)?.ok_or_else(|| Error::NoBridge(name.to_string()))?;
        Ok(Self::new(bridge, PortIsolation::of(network.isolate_guests)))
    }

    /// A bridge found (or made) already.
    pub fn new(bridge: Link, isolation: PortIsolation) -> Self {
        Self { bridge, isolation }
    }
}

impl Switch for LinuxBridge {
    fn describe(&self) -> String {
        format!("bridge {}", self.bridge.name)
    }

    fn attach(&mut self, netlink: &mut Netlink, port: &Link, tap: Tap) -> Result<()> {
        trace(format_args!("attaching {} to {} (mtu {})", port.name, self.bridge.name, self.bridge.mtu));
        match tap {
            Tap::Qemu => netlink.attach(port, &self.bridge, self.isolation),
            Tap::Made => netlink.attach_new_tap(port, &self.bridge, self.isolation),
        }
    }

    fn detach(&mut self, netlink: &mut Netlink, port: &Link) -> Result<()> {
        // `port` may have been looked up before it was attached here.
        netlink.detach_and_down(&Link { controller: Some(self.bridge.index), ..port.clone() })
    }

    fn ports(&mut self, netlink: &mut Netlink) -> Result<Vec<Link>> {
        netlink.ports_of(&self.bridge)
    }
}
