//! Each guest port's rate limits (`bandwidth`, `bandwidth_overrides`), beside
//! the switch that holds the port: what the guest receives is shaped on the
//! tap's own egress; what it sends is redirected from the tap's ingress to
//! an `ifb` device of the port's and shaped there ([`crate::kernel::tc`]).
//! Set before the port comes up, taken away with it. The ifb is named by
//! the tap's index (`kvmibN`: the kernel does not reuse an index soon), and
//! an ifb outlives its tap (a VM killed, any tap of the bridge helper), so
//! the watcher and `kvm-net gc` remove every ifb of kvm-net's whose tap is
//! gone, or no longer sends to it.

use anyhow::{Context, Result};

use crate::config::model::{Bandwidth, Network, Rate};
use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::tc::Shaper;
use crate::trace::trace;

/// What kvm-net's ifbs' names start with; the tap's index follows.
const IFB_PREFIX: &str = "kvmib";

/// The ifb of `port`.
fn ifb_name(port: &Link) -> String {
    format!("{IFB_PREFIX}{}", port.index)
}

/// The index of the tap an ifb is for, if it is kvm-net's.
fn tap_of(ifb: &Link) -> Option<u32> {
    if ifb.kind.as_deref() != Some("ifb") {
        return None;
    }
    ifb.name.strip_prefix(IFB_PREFIX)?.parse().ok()
}

/// Whether a network's guest ports are limited at all: nothing is asked
/// of the kernel for a network without limits.
pub fn is_asked_for(network: &Network) -> bool {
    network.has_limits()
}

/// Gives `port` the limits `network` asks for it, replacing any it has:
/// before the port comes up, for each port kvm-net attaches.
pub fn limit(netlink: &mut Netlink, network: &Network, port: &Link) -> Result<()> {
    let limits = network.limits_for(&port.name);
    trace(format_args!("{}: {limits}", port.name));
    apply(netlink, port, &limits).with_context(|| format!("limiting {} (network {})", port.name, network.name))
}

/// Makes `port`'s limits exactly `limits`.
fn apply(netlink: &mut Netlink, port: &Link, limits: &Bandwidth) -> Result<()> {
    match limits.to_guest {
        Some(rate) => netlink.shape(port, &Shaper::of_rate(rate.bytes_per_second()))?,
        None if netlink.shaped_rate(port)?.is_some() => netlink.unshape(port)?,
        None => {}
    }
    match limits.from_guest {
        Some(rate) => {
            let ifb = ifb_of(netlink, port)?;
            netlink.shape(&ifb, &Shaper::of_rate(rate.bytes_per_second()))?;
            netlink.redirect_ingress(port, &ifb)
        }
        None => unredirect(netlink, port),
    }
}

/// Takes away `port`'s redirect to its ifb, and the ifb; a redirect to
/// anything else is not kvm-net's, and stays.
fn unredirect(netlink: &mut Netlink, port: &Link) -> Result<()> {
    let Some(ifb) = netlink.link_by_name(&ifb_name(port))? else { return Ok(()) };
    if tap_of(&ifb) != Some(port.index) {
        return Ok(());
    }
    if netlink.ingress_redirect(port)? == Some(ifb.index) {
        netlink.unredirect(port)?;
    }
    netlink.delete(&ifb)
}

/// `port`'s ifb, made if it has none, with the port's MTU (one of its
/// name with another MTU goes first).
fn ifb_of(netlink: &mut Netlink, port: &Link) -> Result<Link> {
    let name = ifb_name(port);
    if let Some(made) = netlink.create_ifb(&name, port.mtu)? {
        return Ok(made);
    }
    if let Some(existing) = netlink.link_by_name(&name)? {
        if tap_of(&existing) == Some(port.index) && existing.mtu == port.mtu {
            return Ok(existing);
        }
        netlink.delete(&existing)?;
    }
    netlink.create_ifb(&name, port.mtu)?.with_context(|| format!("{name} came back while it was made anew"))
}

/// Takes `port`'s limits away (it left its switch): kvm-net's shaper and
/// redirect, and its ifb; anyone else's qdiscs stay.
pub fn unlimit(netlink: &mut Netlink, port: &Link) -> Result<()> {
    let removed = || format!("removing the limits of {}", port.name);
    if netlink.shaped_rate(port).with_context(removed)?.is_some() {
        netlink.unshape(port).with_context(removed)?;
    }
    unredirect(netlink, port).with_context(removed)
}

/// The limits in force on `port`, as the kernel has them.
pub fn in_force(netlink: &mut Netlink, port: &Link) -> Result<Bandwidth> {
    let to_guest = netlink.shaped_rate(port)?.map(|rate| Rate(rate * 8));
    let from_guest = match netlink.ingress_redirect(port)? {
        Some(index) => match netlink.link_by_index(index)? {
            Some(ifb) if tap_of(&ifb) == Some(port.index) => netlink.shaped_rate(&ifb)?.map(|rate| Rate(rate * 8)),
            _ => None,
        },
        None => None,
    };
    Ok(Bandwidth { to_guest, from_guest })
}

/// kvm-net's ifbs now, and those of them whose tap is gone (or no longer
/// sends to it: another link of that index).
fn ifbs(netlink: &mut Netlink) -> Result<(usize, Vec<Link>)> {
    let links = netlink.all_links()?;
    let ours: Vec<&Link> = links.iter().filter(|link| tap_of(link).is_some()).collect();
    let mut departed = Vec::new();
    for ifb in &ours {
        let tap = links.iter().find(|link| Some(link.index) == tap_of(ifb));
        let alive = match tap {
            Some(tap) => netlink.ingress_redirect(tap)? == Some(ifb.index),
            None => false,
        };
        if !alive {
            departed.push((*ifb).clone());
        }
    }
    Ok((ours.len(), departed))
}

/// The ifbs of kvm-net's whose tap is gone: what [`release_departed`] removes.
pub fn departed(netlink: &mut Netlink) -> Result<Vec<String>> {
    Ok(ifbs(netlink)?.1.into_iter().map(|ifb| ifb.name).collect())
}

/// Removes every ifb of kvm-net's whose tap is gone (or is another link
/// now). Returns whether any ifb of kvm-net's is left.
pub fn release_departed(netlink: &mut Netlink) -> Result<bool> {
    let (count, departed) = ifbs(netlink)?;
    for ifb in &departed {
        trace(format_args!("{}: its tap is gone", ifb.name));
        netlink.delete(ifb)?;
    }
    Ok(count > departed.len())
}

/// Whether `network`'s port `port` is a guest's whose limits kvm-net keeps:
/// every port of a bridge kvm-net manages; on a bridged network only
/// tun/tap devices (the bridge's other ports, the host's NIC, are not guests).
pub fn is_guest_port(network: &Network, port: &Link) -> bool {
    network.mode.is_managed() || port.tun.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: &str) -> Link {
        Link { index, name: name.to_owned(), kind: Some(kind.to_owned()), mtu: 1500, up: true, ..Link::default() }
    }

    #[test]
    fn an_ifb_names_its_tap_and_no_other_is_taken_for_one() {
        let tap = link(i32::MAX as u32, "vm-web1.0", "tun");
        let name = ifb_name(&tap);
        assert!(name.len() <= 15, "{name} fits IFNAMSIZ");
        assert_eq!(tap_of(&link(12, &name, "ifb")), Some(i32::MAX as u32));
        assert_eq!(tap_of(&link(13, "ifb0", "ifb")), None);
        assert_eq!(tap_of(&link(14, &name, "veth")), None, "only an ifb");
        assert_eq!(tap_of(&link(15, "kvmibx", "ifb")), None);
    }
}
