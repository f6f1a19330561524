//! Where a network's taps are plugged in: a Linux bridge (one kvm-net made
//! for a managed network, or the system's for a bridged one) or an Open
//! vSwitch bridge. One interface for what the helpers, the watcher,
//! `status`, `check` and `gc` do with either: plug a port in, take it out,
//! list the ports kvm-net put there. A third kind is one more module here.
//! What only a managed Linux bridge has (kvm-net creates and deletes it,
//! with its addresses, rules and dnsmasq) stays in [`crate::ops::network`].

pub mod linux;
pub mod ovs;
pub mod ovsdb;

use anyhow::Result;

use crate::config::model::{Mode, Network};
use crate::kernel::netlink::{Link, Netlink};

pub use self::linux::LinuxBridge;
pub use self::ovs::OvsBridge;

/// Where a tap came from, which decides what attaching it sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tap {
    /// QEMU made it (the tap scripts): only its switch, MTU and state change.
    Qemu,
    /// The bridge helper just made it: its MAC is kvm-net's to choose too.
    Made,
}

/// One switch a network's taps are ports of.
pub trait Switch {
    /// What it is, for messages (`bridge br0`, `Open vSwitch bridge br-int`).
    fn describe(&self) -> String;

    /// Makes `port` one of its ports and brings it up.
    fn attach(&mut self, netlink: &mut Netlink, port: &Link, tap: Tap) -> Result<()>;

    /// Takes `port` off it and sets it down; a port already gone counts as done.
    fn detach(&mut self, netlink: &mut Netlink, port: &Link) -> Result<()>;

    /// Whether it forwards frames whose checksums a guest left unfinished
    /// (virtio-net checksum offload, through a tap with virtio-net headers)
    /// as they are, so that receivers drop them: Open vSwitch's userspace
    /// datapath (`datapath_type=netdev`) does. The kernel's bridge finishes them.
    fn forwards_unfinished_checksums(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Its ports kvm-net attached for the network, as the kernel has them
    /// (a port whose tap is gone is not among them).
    fn ports(&mut self, netlink: &mut Netlink) -> Result<Vec<Link>>;
}

/// The switch of a network that kvm-net does not create (bridged, ovs): it
/// must exist. Managed networks' bridges come from [`crate::ops::network::Bringup`].
pub fn existing(network: &Network, netlink: &mut Netlink) -> Result<Box<dyn Switch>> {
    match (network.mode, &network.ovs) {
        (Mode::Ovs, Some(ports)) => Ok(Box::new(OvsBridge::connect(&network.name, &network.bridge, ports)?)),
        _ => Ok(Box::new(LinuxBridge::existing(netlink, network)?)),
    }
}
