//! The kernel's view of links, addresses and routes, asked and changed
//! over rtnetlink, one synchronous request at a time (see [`crate::kernel::wire`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;

use crate::error::Error;
use crate::kernel::uapi;

use crate::kernel::wire::{
    attribute, attributes, string, u32_at, word, Channel, Object, Received, Request, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL,
};

/// The most ports a Linux bridge takes (port numbers 1 to `BR_MAX_PORTS` - 1).
pub const MAX_BRIDGE_PORTS: usize = 1023;
/// `struct ifinfomsg`, `struct ifaddrmsg`, `struct rtmsg`, `struct ndmsg`:
/// the family headers ahead of each message's attributes (musl's libc
/// defines the first two; the others' layout is fixed since Linux 2.2).
const IFINFOMSG: usize = std::mem::size_of::<libc::ifinfomsg>();
const IFADDRMSG: usize = std::mem::size_of::<libc::ifaddrmsg>();
const RTMSG: usize = 12;
const NDMSG: usize = 12;
/// libc's flags are `c_int`; link flags travel as `u32`.
const IFF_UP: u32 = libc::IFF_UP as u32;

/// What kvm-net needs to know about one link (`Default`: what an answer
/// that says nothing about it leaves).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Kernel interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link kind (`bridge`, `tun`, `veth`, ...); `None` for kind-less links such as a NIC.
    pub kind: Option<String>,
    /// Current MTU.
    pub mtu: u32,
    /// Index of the bridge this link is a port of.
    pub controller: Option<u32>,
    /// Free-text alias (`ip link set NAME alias TEXT`).
    pub alias: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Hardware address, for Ethernet-like links.
    pub mac: Option<[u8; 6]>,
    /// A tun/tap device's owner, group and headers; `None` for every other kind.
    pub tun: Option<Tun>,
    /// Whether it is a bridge port isolated from the bridge's other
    /// isolated ports (`uapi::IFLA_BRPORT_ISOLATED`).
    pub isolated: bool,
    /// Its IPv6 `accept_ra` setting, as the link's own answer carries it
    /// (`None` without IPv6): no read of /proc/sys needed to know it is off.
    pub accept_ra: Option<i32>,
    /// Its IPv6 `accept_dad` setting, from the same answer.
    pub accept_dad: Option<i32>,
    /// What it has received and sent (`None` where the answer had no counters).
    pub counters: Option<Counters>,
}

/// A link's traffic since it was made, as the kernel counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

impl Counters {
    /// The first four fields of `struct rtnl_link_stats64`.
    fn from_stats64(value: &[u8]) -> Option<Self> {
        let field =
            |at: usize| value.get(at * 8..at * 8 + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_ne_bytes);
        Some(Self { rx_packets: field(0)?, tx_packets: field(1)?, rx_bytes: field(2)?, tx_bytes: field(3)? })
    }
}

/// What the kernel says of a tun/tap device: who may open it without
/// CAP_NET_ADMIN (`ip tuntap add ... user U group G`; unset means only a
/// privileged process), and whether it carries virtio-net headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tun {
    /// `uapi::IFLA_TUN_OWNER`.
    pub owner: Option<u32>,
    /// `uapi::IFLA_TUN_GROUP`.
    pub group: Option<u32>,
    /// `uapi::IFLA_TUN_VNET_HDR`: frames carry virtio-net headers (QEMU's default).
    pub vnet_header: bool,
}

impl Link {
    /// A link from the kernel's echo of a link it made.
    pub(super) fn from_echo(body: &[u8]) -> Self {
        Self::from_object(body)
    }

    /// A link from an `libc::RTM_NEWLINK` answer: `struct ifinfomsg`, then attributes.
    fn from_object(body: &[u8]) -> Self {
        let mut link = Link { index: u32_at(body, 4), up: u32_at(body, 8) & IFF_UP != 0, ..Link::default() };
        for (kind, value) in attributes(body.get(IFINFOMSG..).unwrap_or_default()) {
            match kind {
                libc::IFLA_IFNAME => link.name = string(value).unwrap_or_default().to_owned(),
                libc::IFLA_MTU => link.mtu = u32_at(value, 0),
                libc::IFLA_MASTER => link.controller = Some(u32_at(value, 0)).filter(|index| *index != 0),
                libc::IFLA_IFALIAS => link.alias = string(value).map(str::to_owned),
                libc::IFLA_ADDRESS => link.mac = <[u8; 6]>::try_from(value).ok(),
                uapi::IFLA_STATS64 => link.counters = Counters::from_stats64(value),
                libc::IFLA_AF_SPEC => {
                    // IPv6's per-link settings: an array of i32 indexed by DEVCONF_*.
                    let settings = attribute(value, libc::AF_INET6 as u16)
                        .and_then(|inet6| attribute(inet6, uapi::IFLA_INET6_CONF));
                    let setting = |index: usize| {
                        settings
                            .and_then(|conf| conf.get(index * 4..index * 4 + 4))
                            .map(|bytes| i32::from_ne_bytes(word(bytes)))
                    };
                    link.accept_ra = setting(uapi::DEVCONF_ACCEPT_RA);
                    link.accept_dad = setting(uapi::DEVCONF_ACCEPT_DAD);
                }
                libc::IFLA_LINKINFO => {
                    link.kind = attribute(value, libc::IFLA_INFO_KIND).and_then(string).map(str::to_owned);
                    if attribute(value, libc::IFLA_INFO_SLAVE_KIND).and_then(string) == Some("bridge") {
                        let port = attribute(value, libc::IFLA_INFO_SLAVE_DATA).unwrap_or_default();
                        link.isolated =
                            attribute(port, uapi::IFLA_BRPORT_ISOLATED).is_some_and(|v| v.first() == Some(&1));
                    }
                    if link.kind.as_deref() == Some("tun") {
                        let data = attribute(value, libc::IFLA_INFO_DATA).unwrap_or_default();
                        link.tun = Some(Tun {
                            owner: attribute(data, uapi::IFLA_TUN_OWNER).map(|v| u32_at(v, 0)),
                            group: attribute(data, uapi::IFLA_TUN_GROUP).map(|v| u32_at(v, 0)),
                            vnet_header: attribute(data, uapi::IFLA_TUN_VNET_HDR)
                                .is_some_and(|v| v.first() == Some(&1)),
                        });
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// Whether the kernel treats this link as a bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// The flags an attach request sets: up, unless the port is isolated first.
fn up_unless_isolated(isolated: bool) -> u32 {
    if isolated {
        0
    } else {
        IFF_UP
    }
}

/// `struct ifinfomsg` for a link (0: none), with flags to set and which of them change.
pub(super) fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; IFINFOMSG] {
    let mut header = [0; IFINFOMSG];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header[8..12].copy_from_slice(&flags.to_ne_bytes());
    header[12..16].copy_from_slice(&change.to_ne_bytes());
    header
}

/// The address family byte of a family header.
fn family(net: &IpNetwork) -> u8 {
    if net.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// An address from an attribute's value.
fn ip_of(value: &[u8]) -> Option<IpAddr> {
    match value.len() {
        4 => <[u8; 4]>::try_from(value).ok().map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        16 => <[u8; 16]>::try_from(value).ok().map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        _ => None,
    }
}

/// An address from an `libc::RTM_NEWADDR` answer: its link's index, and the
/// address with its prefix.
fn address_of(object: &Object) -> Option<(u32, IpNetwork)> {
    let body = &object.body;
    let prefix = *body.get(1)?;
    let attrs = body.get(IFADDRMSG..)?;
    let ip = attribute(attrs, libc::IFA_LOCAL).or_else(|| attribute(attrs, libc::IFA_ADDRESS)).and_then(ip_of)?;
    IpNetwork::new(ip, prefix).ok().map(|net| (u32_at(body, 4), net))
}

/// A connection to the kernel's routing netlink, for one helper run.
pub struct Netlink {
    channel: Channel,
}

impl Netlink {
    /// Opens the socket.
    pub fn connect() -> Result<Self> {
        let channel = Channel::open(libc::NETLINK_ROUTE as isize).context("opening a netlink socket")?;
        channel.check_strictly()?;
        Ok(Self { channel })
    }

    /// A request's answer, the error kept as the kernel's errno (for a
    /// caller that tells one apart); errors in `absent` mean none.
    pub(super) fn channel_exchange(&mut self, request: Request, absent: &[i32]) -> io::Result<Vec<Object>> {
        self.channel.exchange(request, false, absent)
    }

    /// A request's answer; errors in `absent` (no such link) mean none.
    pub(super) fn ask(
        &mut self,
        request: Request,
        dump: bool,
        absent: &[i32],
        what: impl FnOnce() -> String,
    ) -> Result<Vec<Object>> {
        self.channel.exchange(request, dump, absent).map_err(|err| anyhow::Error::new(err).context(what()))
    }

    fn links(&mut self, request: Request, dump: bool, what: impl FnOnce() -> String) -> Result<Vec<Link>> {
        let objects = self.ask(request, dump, &[libc::ENODEV], what)?;
        Ok(objects.into_iter().filter(|o| o.kind == libc::RTM_NEWLINK).map(|o| Link::from_object(&o.body)).collect())
    }

    /// Looks a link up by name; `None` when there is no such link.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let request = Request::new(libc::RTM_GETLINK, 0, &ifinfomsg(0, 0, 0))
            .string(libc::IFLA_IFNAME, name)
            .u32(libc::IFLA_EXT_MASK, libc::RTEXT_FILTER_SKIP_STATS as u32);
        Ok(self.links(request, false, || format!("asking the kernel about {name}"))?.into_iter().next())
    }

    /// Looks a link up by index; `None` when there is no such link.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let request = Request::new(libc::RTM_GETLINK, 0, &ifinfomsg(index, 0, 0))
            .u32(libc::IFLA_EXT_MASK, libc::RTEXT_FILTER_SKIP_STATS as u32);
        Ok(self.links(request, false, || format!("asking the kernel about interface #{index}"))?.into_iter().next())
    }

    /// Every link in the namespace.
    pub fn all_links(&mut self) -> Result<Vec<Link>> {
        let request = Request::new(libc::RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0))
            .u32(libc::IFLA_EXT_MASK, libc::RTEXT_FILTER_SKIP_STATS as u32);
        self.links(request, true, || "listing the links".to_owned())
    }

    /// The addresses on a link, with their prefixes.
    pub fn addresses_of(&mut self, link: &Link) -> Result<Vec<IpNetwork>> {
        let all = self.addresses(link.index, || format!("listing the addresses of {}", link.name))?;
        Ok(all.into_iter().filter(|(index, _)| *index == link.index).map(|(_, net)| net).collect())
    }

    /// The addresses of the link with index `only` (0: of every link), with
    /// their link's index. Filtered by the kernel (the socket checks
    /// strictly): one link's answer does not grow with the namespace.
    fn addresses(&mut self, only: u32, what: impl FnOnce() -> String) -> Result<Vec<(u32, IpNetwork)>> {
        let mut header = [0; IFADDRMSG];
        header[4..8].copy_from_slice(&only.to_ne_bytes());
        let objects = self.ask(Request::new(libc::RTM_GETADDR, NLM_F_DUMP, &header), true, &[], what)?;
        Ok(objects.iter().filter_map(address_of).collect())
    }

    /// The MAC addresses `bridge` has learned (its forwarding database, not
    /// the ports' own permanent entries), each with the index of the port
    /// it was seen on.
    pub fn learned_macs(&mut self, bridge: &Link) -> Result<Vec<(u32, [u8; 6])>> {
        let mut header = [0; NDMSG];
        header[0] = libc::AF_BRIDGE as u8;
        let request = Request::new(libc::RTM_GETNEIGH, NLM_F_DUMP, &header).u32(uapi::NDA_MASTER, bridge.index);
        let entries =
            self.ask(request, true, &[], || format!("listing the MAC addresses bridge {} learned", bridge.name))?;
        Ok(entries
            .iter()
            .filter(|entry| entry.kind == libc::RTM_NEWNEIGH)
            .filter_map(|entry| {
                let body = &entry.body;
                let state = u16::from_ne_bytes([*body.get(8)?, *body.get(9)?]);
                let mac = <[u8; 6]>::try_from(attribute(body.get(NDMSG..)?, libc::NDA_LLADDR)?).ok()?;
                (state & libc::NUD_PERMANENT == 0).then_some((u32_at(body, 4), mac))
            })
            .collect())
    }

    /// Ports of a bridge, filtered by the kernel (a dump restricted to one controller).
    pub fn ports_of(&mut self, bridge: &Link) -> Result<Vec<Link>> {
        let ports =
            self.links(ports_request(bridge), true, || format!("listing the ports of bridge {}", bridge.name))?;
        Ok(ports.into_iter().filter(|link| link.controller == Some(bridge.index)).collect())
    }

    /// Creates a bridge with `mac` (and `mtu`) set in the creating request
    /// itself. Returns `None` if another process won the race.
    pub fn create_bridge(&mut self, name: &str, mtu: Option<u32>, mac: &[u8; 6]) -> Result<Option<Link>> {
        let mut request = Request::new(libc::RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0))
            .string(libc::IFLA_IFNAME, name)
            .bytes(libc::IFLA_ADDRESS, mac);
        if let Some(mtu) = mtu {
            request = request.u32(libc::IFLA_MTU, mtu);
        }
        let request = request.begin(libc::IFLA_LINKINFO).string(libc::IFLA_INFO_KIND, "bridge").end();
        match self.channel.exchange(request, false, &[]) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("creating bridge {name}")),
        }
        self.link_by_name(name)?.with_context(|| format!("bridge {name} vanished right after it was created")).map(Some)
    }

    /// Adds each of `addresses` the link lacks (one dump of its addresses).
    pub fn ensure_addresses(&mut self, link: &Link, addresses: &[IpNetwork]) -> Result<()> {
        if addresses.is_empty() {
            return Ok(());
        }
        let present = self.addresses_of(link)?;
        for address in addresses.iter().filter(|address| !present.contains(address)) {
            self.add_address(link, *address)?;
        }
        Ok(())
    }

    /// Adds the address to the link. IPv6 addresses skip duplicate address
    /// detection: the bridge's address is the guests' gateway and must work
    /// at once.
    fn add_address(&mut self, link: &Link, address: IpNetwork) -> Result<()> {
        let mut header = [0; IFADDRMSG];
        header[0] = family(&address);
        header[1] = address.prefix();
        header[4..8].copy_from_slice(&link.index.to_ne_bytes());
        let octets = match address.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        };
        let mut request = Request::new(libc::RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &header)
            .bytes(libc::IFA_LOCAL, &octets)
            .bytes(libc::IFA_ADDRESS, &octets);
        if address.is_ipv6() {
            request = request.u32(libc::IFA_FLAGS, libc::IFA_F_NODAD);
        }
        self.ask(request, false, &[libc::EEXIST], || format!("adding address {address} to {}", link.name)).map(drop)
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, link: &Link, mtu: u32) -> Result<()> {
        let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(link.index, 0, 0)).u32(libc::IFLA_MTU, mtu);
        self.ask(request, false, &[], || format!("setting the MTU of {} to {mtu}", link.name)).map(drop)
    }

    /// Interfaces other than `except` that already use part of `subnet`, by an
    /// address or a route ("eth0 (route 10.0.0.0/8)").
    pub fn subnet_users(&mut self, subnet: IpNetwork, except: Option<u32>) -> Result<Vec<String>> {
        let overlaps = |other: IpNetwork| other.contains(subnet.network()) || subnet.contains(other.network());
        let mut users: Vec<(u32, String)> = Vec::new();
        for (index, net) in self.addresses(0, || "listing addresses".to_owned())? {
            if Some(index) != except && net.is_ipv4() == subnet.is_ipv4() && overlaps(net) {
                users.push((index, format!("address {net}")));
            }
        }
        let mut header = [0; RTMSG];
        header[0] = family(&subnet);
        let routes =
            self.ask(Request::new(libc::RTM_GETROUTE, NLM_F_DUMP, &header), true, &[], || "listing routes".to_owned())?;
        for route in &routes {
            let body = &route.body;
            let (Some(&prefix), Some(&kind)) = (body.get(1), body.get(7)) else { continue };
            if prefix == 0 || kind != libc::RTN_UNICAST {
                continue;
            }
            let attrs = body.get(RTMSG..).unwrap_or_default();
            let destination = attribute(attrs, libc::RTA_DST).and_then(ip_of);
            let oif = attribute(attrs, libc::RTA_OIF).map(|v| u32_at(v, 0));
            let (Some(ip), Some(index)) = (destination, oif) else { continue };
            if let Ok(net) = IpNetwork::new(ip, prefix) {
                if Some(index) != except && overlaps(net) {
                    users.push((index, format!("route {net}")));
                }
            }
        }
        let mut described = Vec::new();
        for (index, what) in users {
            let name = match self.link_by_index(index)? {
                Some(link) => link.name,
                None => format!("interface #{index}"),
            };
            described.push(format!("{name} ({what})"));
        }
        Ok(described)
    }

    /// Sets a link's alias (kvm-net's marks on bridges).
    pub fn set_alias(&mut self, link: &Link, alias: &str) -> Result<()> {
        let request =
            Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(link.index, 0, 0)).string(libc::IFLA_IFALIAS, alias);
        self.ask(request, false, &[], || format!("marking {} as {alias:?}", link.name)).map(drop)
    }

    /// Removes a link's alias (an OVS port's mark, when it leaves); a link
    /// already gone has none.
    pub fn clear_alias(&mut self, link: &Link) -> Result<()> {
        let request =
            Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(link.index, 0, 0)).bytes(libc::IFLA_IFALIAS, &[]);
        self.ask(request, false, &[libc::ENODEV], || format!("removing the alias of {}", link.name)).map(drop)
    }

    /// Brings a link up.
    pub fn set_up(&mut self, link: &Link) -> Result<()> {
        let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(link.index, IFF_UP, IFF_UP));
        self.ask(request, false, &[], || format!("bringing {} up", link.name)).map(drop)
    }

    /// Makes `port` a port of `bridge` with the bridge's MTU, then brings it up:
    /// the order in which no frame crosses a link with mismatched MTUs. An
    /// `isolated` port is isolated before it comes up.
    pub fn attach(&mut self, port: &Link, bridge: &Link, isolated: bool) -> Result<()> {
        if port.mtu != bridge.mtu {
            let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, 0, 0))
                .u32(libc::IFLA_MTU, bridge.mtu);
            self.ask(request, false, &[], || {
                format!("setting the MTU of {} to {} (bridge {})", port.name, bridge.mtu, bridge.name)
            })?;
        }
        let up = up_unless_isolated(isolated);
        let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, up, IFF_UP))
            .u32(libc::IFLA_MASTER, bridge.index);
        self.enslave(request, port, bridge)?;
        self.isolate_and_bring_up(port, bridge, isolated)
    }

    /// Gives `port` the address `mac`, the bridge's MTU and the bridge, then
    /// brings it up, in one request (the kernel applies them in that
    /// order); an `isolated` port is isolated in a second, before it comes up.
    pub fn attach_with_mac(&mut self, port: &Link, bridge: &Link, mac: &[u8; 6], isolated: bool) -> Result<()> {
        let up = up_unless_isolated(isolated);
        let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, up, IFF_UP))
            .bytes(libc::IFLA_ADDRESS, mac)
            .u32(libc::IFLA_MTU, bridge.mtu)
            .u32(libc::IFLA_MASTER, bridge.index);
        self.enslave(request, port, bridge)?;
        self.isolate_and_bring_up(port, bridge, isolated)
    }

    /// Gives `port` the address `mac` and brings it up, in one request.
    pub fn bring_up_with_mac(&mut self, port: &Link, mac: &[u8; 6]) -> Result<()> {
        let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, IFF_UP, IFF_UP))
            .bytes(libc::IFLA_ADDRESS, mac);
        self.ask(request, false, &[], || format!("bringing {} up", port.name)).map(drop)
    }

    /// For an isolated port, attached but still down: sets the bridge
    /// port's isolation and brings it up in one request, so that it never
    /// forwards a frame unisolated. If that fails, it goes off the bridge again.
    fn isolate_and_bring_up(&mut self, port: &Link, bridge: &Link, isolated: bool) -> Result<()> {
        if !isolated {
            return Ok(());
        }
        let request = Request::new(libc::RTM_NEWLINK, NLM_F_ACK, &ifinfomsg(port.index, IFF_UP, IFF_UP))
            .begin(libc::IFLA_LINKINFO)
            .string(libc::IFLA_INFO_SLAVE_KIND, "bridge")
            .begin(libc::IFLA_INFO_SLAVE_DATA)
            .bytes(uapi::IFLA_BRPORT_ISOLATED, &[1])
            .end()
            .end();
        let isolated = self.ask(request, false, &[], || format!("isolating {} on bridge {}", port.name, bridge.name));
        if isolated.is_err() {
            // Best effort: the isolation's error is the one worth reporting.
            let _ = self.detach_and_down(&Link { controller: Some(bridge.index), ..port.clone() });
        }
        isolated.map(drop)
    }

    /// Sends an attach request (which brings the port up); a bridge out of
    /// port numbers (the kernel's EXFULL, "No error information") is said as
    /// such. The kernel applies the request's flags before its master: a
    /// port that was down and could not be attached is set down again.
    fn enslave(&mut self, request: Request, port: &Link, bridge: &Link) -> Result<()> {
        let what = || format!("attaching {} to bridge {}", port.name, bridge.name);
        let attached = self.channel.exchange(request, false, &[]);
        if attached.is_err() && !port.up {
            let down = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, 0, IFF_UP));
            // Best effort: the attach's error is the one worth reporting.
            let _ = self.channel.exchange(down, false, &[libc::ENODEV]);
        }
        match attached {
            Ok(_) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EXFULL) => {
                let ports = self.ports_of(bridge).map_or(MAX_BRIDGE_PORTS, |p| p.len());
                Err(anyhow::Error::new(Error::BridgeFull { bridge: bridge.name.clone(), ports }).context(what()))
            }
            Err(err) => Err(anyhow::Error::new(err).context(what())),
        }
    }

    /// Takes `port` off whatever bridge holds it, then sets it down. A link
    /// that vanished meanwhile (QEMU exited) counts as done. Two requests:
    /// in one, the kernel sets the port down first, and the bridge
    /// recomputes every port's state for it before the detach does it again.
    pub fn detach_and_down(&mut self, port: &Link) -> Result<()> {
        let what = || format!("detaching {} and setting it down", port.name);
        if port.controller.is_some() {
            let request =
                Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, 0, 0)).u32(libc::IFLA_MASTER, 0);
            self.ask(request, false, &[libc::ENODEV], what)?;
        }
        let request = Request::new(libc::RTM_SETLINK, NLM_F_ACK, &ifinfomsg(port.index, 0, IFF_UP));
        self.ask(request, false, &[libc::ENODEV], what).map(drop)
    }

    /// Deletes a link; one already gone counts as deleted.
    pub fn delete(&mut self, link: &Link) -> Result<()> {
        let request = Request::new(libc::RTM_DELLINK, NLM_F_ACK, &ifinfomsg(link.index, 0, 0));
        self.ask(request, false, &[libc::ENODEV], || format!("deleting {}", link.name)).map(drop)
    }
}

/// The kernel's link notifications, for waiting until a bridge may have lost
/// its last port.
pub struct LinkEvents {
    channel: Channel,
}

impl LinkEvents {
    /// Subscribes; notifications from now on are kept until read.
    pub fn subscribe() -> Result<Self> {
        let mut channel = Channel::open(libc::NETLINK_ROUTE as isize).context("listening to link notifications")?;
        channel.subscribe(libc::RTNLGRP_LINK)?;
        Ok(Self { channel })
    }

    /// Waits until a link is deleted, or a link other than `bridge` changes
    /// without being `bridge`'s port (a port taken off it): after either,
    /// `bridge` may have no ports left. Notifications lost because too many
    /// came at once (`ENOBUFS`) count as such a change.
    pub fn wait_for_departure(&mut self, bridge: u32) -> Result<()> {
        self.wait_for(|link| link.index != bridge && link.controller != Some(bridge))
    }

    /// Waits until a link is deleted, or one of `ports` (taps of a switch
    /// the kernel does not know the ports of: Open vSwitch) changes without
    /// carrying `alias` (taken off the switch: its alias cleared).
    pub fn wait_for_port_departure(&mut self, ports: &[String], alias: &str) -> Result<()> {
        self.wait_for(|link| ports.contains(&link.name) && link.alias.as_deref() != Some(alias))
    }

    /// Waits for a deletion, or a change `departed` says is one.
    fn wait_for(&mut self, mut departed: impl FnMut(Link) -> bool) -> Result<()> {
        let waiting = self.channel.receive(|received| match received {
            Received::Object { kind: libc::RTM_DELLINK, .. } => Ok(true),
            Received::Object { kind: libc::RTM_NEWLINK, body, .. } => Ok(departed(Link::from_object(body))),
            _ => Ok(false),
        });
        match waiting {
            Err(err)
                if err.chain().any(|c| {
                    c.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(libc::ENOBUFS)
                }) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// A dump of `bridge`'s ports, filtered by the kernel. Without
/// `libc::IFLA_EXT_MASK`: with one, the kernel first sizes every link of the
/// namespace to choose its buffer (0.2-0.7 ms with 1000 ports, on every VM
/// stop); without, the answers carry counters nobody reads.
fn ports_request(bridge: &Link) -> Request {
    Request::new(libc::RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0)).u32(libc::IFLA_MASTER, bridge.index)
}

/// Whether `bridge` has a port other than `except`: the last-port question of
/// every VM stop. A kernel-filtered dump, read one datagram at a time on a
/// socket of its own and abandoned at the first port found: read whole, with
/// 1000 VMs on a bridge, it cost 80 ms.
pub fn has_port_besides(bridge: &Link, except: Option<u32>) -> Result<bool> {
    let context = || format!("listing the ports of bridge {}", bridge.name);
    let mut channel = Channel::open(libc::NETLINK_ROUTE as isize).with_context(context)?;
    let sequence = channel.next_sequence();
    channel.send(&ports_request(bridge).finish(sequence)).with_context(context)?;
    let mut found = false;
    let mut failure = None;
    channel
        .receive_dump_head(|received| match received {
            Received::Object { body, .. } => {
                let link = Link::from_object(body);
                found = link.controller == Some(bridge.index) && Some(link.index) != except;
                Ok(found)
            }
            Received::Done { .. } => Ok(true),
            Received::Error { code, .. } => {
                if code != 0 {
                    failure = Some(io::Error::from_raw_os_error(-code));
                }
                Ok(true)
            }
        })
        .with_context(context)?;
    match failure {
        Some(err) => Err(err).with_context(context),
        None => Ok(found),
    }
}
