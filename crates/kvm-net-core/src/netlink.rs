//! The kernel's view of links and addresses, asked and changed over rtnetlink.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use nix::errno::Errno;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, Nla, NLM_F_DUMP, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkExtentMask;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};
use rtnetlink::{Handle, LinkBridge, LinkGetRequest, LinkUnspec, RouteMessageBuilder};

/// The alias kvm-net puts on bridges it creates, for people reading `ip -d
/// link`. The mark that makes a bridge kvm-net's own to delete is its MAC
/// ([`bridge_mac`]), which is set in the very request that creates it: the
/// alias can only follow in a second request, and a crash in between must not
/// leave a bridge that no one removes.
pub const MANAGED_ALIAS: &str = "kvm-net managed bridge";
/// The alias of a managed bridge that `kvm-net up` keeps up without VMs.
pub const KEPT_UP_ALIAS: &str = "kvm-net managed bridge, kept up";

/// What kvm-net needs to know about one link.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Owner and group of a tun/tap device; `None` for every other kind.
    pub tun: Option<TunOwner>,
}

/// Who may open a tun/tap device without CAP_NET_ADMIN (`ip tuntap add ...
/// user U group G`); unset means only a privileged process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunOwner {
    /// `IFLA_TUN_OWNER`.
    pub owner: Option<u32>,
    /// `IFLA_TUN_GROUP`.
    pub group: Option<u32>,
}

/// `IFLA_TUN_OWNER` and `IFLA_TUN_GROUP` (linux/if_link.h), which
/// netlink-packet-route leaves undecoded.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;

impl TunOwner {
    fn from_attributes(attributes: &[InfoTun]) -> Self {
        let mut owner = TunOwner::default();
        for attribute in attributes {
            let InfoTun::Other(nla) = attribute else { continue };
            let mut value = [0u8; 4];
            if nla.value_len() != value.len() {
                continue;
            }
            nla.emit_value(&mut value);
            match nla.kind() {
                IFLA_TUN_OWNER => owner.owner = Some(u32::from_ne_bytes(value)),
                IFLA_TUN_GROUP => owner.group = Some(u32::from_ne_bytes(value)),
                _ => {}
            }
        }
        owner
    }
}

/// A stable, locally administered MAC for a bridge kvm-net creates: a bridge
/// without one takes the lowest MAC of its ports, which changes as VMs come
/// and go and makes guests' ARP caches stale. It is also kvm-net's mark.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    // FNV-1a: tiny, stable across releases and platforms.
    let hash = bridge.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let [a, b, c, d, e, ..] = hash.to_be_bytes();
    [0x02, a, b, c, d, e]
}

impl Link {
    fn from_message(message: LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            controller: None,
            alias: None,
            up: message.header.flags.contains(LinkFlags::Up),
            mac: None,
            tun: None,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
                LinkAttribute::Address(address) => link.mac = <[u8; 6]>::try_from(address.as_slice()).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::Tun(attributes)) => {
                                link.tun = Some(TunOwner::from_attributes(&attributes))
                            }
                            _ => {}
                        }
                    }
                    if link.kind.as_deref() == Some("tun") && link.tun.is_none() {
                        link.tun = Some(TunOwner::default());
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// Whether the kernel treats this link as a bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some(InfoKind::Bridge.to_string().as_str())
    }

    /// Whether kvm-net created this bridge (and so may delete it): it has
    /// kvm-net's MAC for its name, or (bridges of kvm-net 0.1 that someone
    /// re-addressed) kvm-net's alias.
    pub fn is_managed(&self) -> bool {
        self.is_bridge()
            && (self.mac == Some(bridge_mac(&self.name))
                || matches!(self.alias.as_deref(), Some(MANAGED_ALIAS | KEPT_UP_ALIAS)))
    }

    /// Whether this managed bridge lacks the alias that says so (kvm-net
    /// stopped between creating and naming it).
    pub fn lacks_alias(&self) -> bool {
        self.is_managed() && !matches!(self.alias.as_deref(), Some(MANAGED_ALIAS | KEPT_UP_ALIAS))
    }

    /// Whether `kvm-net up` asked for this bridge to stay without VMs, so that
    /// neither the last VM's downscript nor `kvm-net gc` removes it.
    pub fn is_kept_up(&self) -> bool {
        self.is_bridge() && self.alias.as_deref() == Some(KEPT_UP_ALIAS)
    }
}

/// Bridges kvm-net created that have no ports and that `kvm-net up` does not
/// keep: what a VM killed without its downscript leaves (`gc` removes them,
/// `check` reports them).
pub fn abandoned_bridges(links: &[Link]) -> impl Iterator<Item = &Link> {
    links.iter().filter(|l| l.is_managed() && !l.is_kept_up() && !links.iter().any(|p| p.controller == Some(l.index)))
}

/// Whether a netlink request failed with `errno`.
fn failed_with(err: &rtnetlink::Error, errno: Errno) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(message) if message.to_io().raw_os_error() == Some(errno as i32))
}

/// The one link a get request names; `None` when there is no such link.
async fn one_link(request: LinkGetRequest, what: impl FnOnce() -> String) -> Result<Option<Link>> {
    let mut answers = std::pin::pin!(request.execute());
    match answers.try_next().await {
        Ok(message) => Ok(message.map(Link::from_message)),
        Err(err) if failed_with(&err, Errno::ENODEV) => Ok(None),
        Err(err) => Err(err).with_context(what),
    }
}

/// A connection to the kernel's routing netlink, for one helper run.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its driver on the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Looks a link up by name; `None` when there is no such link.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        one_link(self.handle.link().get().match_name(name.to_owned()), || format!("asking the kernel about {name}"))
            .await
    }

    /// Looks a link up by index; `None` when there is no such link.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        one_link(self.handle.link().get().match_index(index), || format!("asking the kernel about interface #{index}"))
            .await
    }

    /// Every link in the namespace.
    pub async fn all_links(&self) -> Result<Vec<Link>> {
        let messages: Vec<LinkMessage> =
            self.handle.link().get().execute().try_collect().await.context("listing the links")?;
        Ok(messages.into_iter().map(Link::from_message).collect())
    }

    /// The addresses on a link, with their prefixes.
    pub async fn addresses_of(&self, link: &Link) -> Result<Vec<IpNetwork>> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("listing the addresses of {}", link.name))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                m.attributes.into_iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNetwork::new(ip, prefix).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Ports of a bridge, filtered by the kernel (a dump restricted to one controller).
    pub async fn ports_of(&self, bridge: &Link) -> Result<Vec<Link>> {
        let mut request = self.handle.link().get();
        request.message_mut().attributes.push(LinkAttribute::Controller(bridge.index));
        let messages: Vec<LinkMessage> = request
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("listing the ports of bridge {}", bridge.name))?;
        Ok(messages.into_iter().map(Link::from_message).filter(|link| link.controller == Some(bridge.index)).collect())
    }

    /// Creates a bridge marked as kvm-net's by its MAC ([`bridge_mac`]), in
    /// the same request, then names it with kvm-net's alias. Returns `None` if
    /// another process won the race.
    pub async fn create_managed_bridge(&self, name: &str, mtu: Option<u32>) -> Result<Option<Link>> {
        let mut builder = LinkBridge::new(name).address(bridge_mac(name).to_vec());
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let message = builder.build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => {}
            Err(err) if failed_with(&err, Errno::EEXIST) => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("creating bridge {name}")),
        }
        let bridge = self
            .link_by_name(name)
            .await?
            .with_context(|| format!("bridge {name} vanished right after it was created"))?;
        self.set_alias(&bridge, MANAGED_ALIAS).await?;
        Ok(Some(Link { alias: Some(MANAGED_ALIAS.to_owned()), ..bridge }))
    }

    /// Adds the address to the link unless it is already there. IPv6
    /// addresses skip duplicate address detection: the bridge's address is
    /// the guests' gateway and must work at once.
    pub async fn ensure_address(&self, link: &Link, address: IpNetwork) -> Result<()> {
        let present = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_any(|message| {
                let hit = message.header.prefix_len == address.prefix()
                    && message
                        .attributes
                        .iter()
                        .any(|a| matches!(a, AddressAttribute::Address(ip) if *ip == address.ip()));
                futures::future::ready(hit)
            })
            .await
            .with_context(|| format!("listing the addresses of {}", link.name))?;
        if present {
            return Ok(());
        }
        let mut request = self.handle.address().add(link.index, address.ip(), address.prefix());
        if address.is_ipv6() {
            request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Err(err) if failed_with(&err, Errno::EEXIST) => Ok(()),
            other => other.with_context(|| format!("adding address {address} to {}", link.name)),
        }
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("setting the MTU of {} to {mtu}", link.name))
    }

    /// Interfaces other than `except` that already use part of `subnet`, by an
    /// address or a route ("eth0 (route 10.0.0.0/8)").
    pub async fn subnet_users(&self, subnet: IpNetwork, except: Option<u32>) -> Result<Vec<String>> {
        let overlaps = |other: IpNetwork| other.contains(subnet.network()) || subnet.contains(other.network());
        let mut users: Vec<(u32, String)> = Vec::new();
        let addresses: Vec<_> =
            self.handle.address().get().execute().try_collect().await.context("listing addresses")?;
        for message in addresses {
            let index = message.header.index;
            for attribute in &message.attributes {
                if let AddressAttribute::Address(ip) = attribute {
                    if let Ok(net) = IpNetwork::new(*ip, message.header.prefix_len) {
                        if Some(index) != except && net.is_ipv4() == subnet.is_ipv4() && overlaps(net) {
                            users.push((index, format!("address {net}")));
                        }
                    }
                }
            }
        }
        let query = if subnet.is_ipv4() {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        };
        let routes: Vec<_> = self.handle.route().get(query).execute().try_collect().await.context("listing routes")?;
        for message in routes {
            if message.header.destination_prefix_length == 0 || message.header.kind != RouteType::Unicast {
                continue;
            }
            let mut destination = None;
            let mut oif = None;
            for attribute in &message.attributes {
                match attribute {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(IpAddr::V4(*ip)),
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => destination = Some(IpAddr::V6(*ip)),
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            let (Some(ip), Some(index)) = (destination, oif) else {
                continue;
            };
            if let Ok(net) = IpNetwork::new(ip, message.header.destination_prefix_length) {
                if Some(index) != except && overlaps(net) {
                    users.push((index, format!("route {net}")));
                }
            }
        }
        let mut described = Vec::new();
        for (index, what) in users {
            let name = match self.link_by_index(index).await? {
                Some(link) => link.name,
                None => format!("interface #{index}"),
            };
            described.push(format!("{name} ({what})"));
        }
        Ok(described)
    }

    /// Sets a link's alias (kvm-net's marks on bridges).
    pub async fn set_alias(&self, link: &Link, alias: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).alias(alias).build();
        self.handle.link().set(message).execute().await.with_context(|| format!("marking {} as {alias:?}", link.name))
    }

    /// Brings a link up.
    pub async fn set_up(&self, link: &Link) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).up().build();
        self.handle.link().set(message).execute().await.with_context(|| format!("bringing {} up", link.name))
    }

    /// Makes `port` a port of `bridge` with the bridge's MTU, then brings it up:
    /// the order in which no frame crosses a link with mismatched MTUs.
    pub async fn attach(&self, port: &Link, bridge: &Link) -> Result<()> {
        if port.mtu != bridge.mtu {
            let message = LinkUnspec::new_with_index(port.index).mtu(bridge.mtu).build();
            self.handle.link().set(message).execute().await.with_context(|| {
                format!("setting the MTU of {} to {} (bridge {})", port.name, bridge.mtu, bridge.name)
            })?;
        }
        let message = LinkUnspec::new_with_index(port.index).controller(bridge.index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("attaching {} to bridge {}", port.name, bridge.name))
    }

    /// Takes `port` off whatever bridge holds it and sets it down. A link that
    /// vanished meanwhile (QEMU exited) counts as done.
    pub async fn detach_and_down(&self, port: &Link) -> Result<()> {
        let mut builder = LinkUnspec::new_with_index(port.index).down();
        if port.controller.is_some() {
            builder = builder.nocontroller();
        }
        match self.handle.link().set(builder.build()).execute().await {
            Err(err) if failed_with(&err, Errno::ENODEV) => Ok(()),
            other => other.with_context(|| format!("detaching {} and setting it down", port.name)),
        }
    }

    /// Deletes a link; one already gone counts as deleted.
    pub async fn delete(&self, link: &Link) -> Result<()> {
        match self.handle.link().del(link.index).execute().await {
            Err(err) if failed_with(&err, Errno::ENODEV) => Ok(()),
            other => other.with_context(|| format!("deleting {}", link.name)),
        }
    }
}

/// Whether `bridge` has a port other than `except`: the last-port question of
/// every VM stop. A kernel-filtered dump, read one datagram at a time on a
/// socket of its own and abandoned at the first port found: through the
/// shared connection the whole dump would be read (the kernel builds each
/// batch as it is read), and with 1000 VMs on a bridge that cost 80 ms.
pub fn has_port_besides(bridge: &Link, except: Option<u32>) -> Result<bool> {
    let context = || format!("listing the ports of bridge {}", bridge.name);
    let mut socket = Socket::new(NETLINK_ROUTE).with_context(context)?;
    socket.bind_auto().with_context(context)?;
    socket.connect(&SocketAddr::new(0, 0)).with_context(context)?;
    let mut query = LinkMessage::default();
    query.attributes.push(LinkAttribute::Controller(bridge.index));
    query.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetLink(query));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).with_context(context)?;
    let mut datagram: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        datagram.clear();
        socket.recv(&mut datagram, 0).with_context(context)?;
        let mut offset = 0;
        while offset < datagram.len() {
            let message =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..]).with_context(context)?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    let link = Link::from_message(link);
                    if link.controller == Some(bridge.index) && Some(link.index) != except {
                        return Ok(true);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(false),
                NetlinkPayload::Error(error) => return Err(error.to_io()).with_context(context),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_mac_is_unicast_locally_administered_and_stable() {
        let mac = bridge_mac("br0");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_eq!(mac, bridge_mac("br0"));
        assert_ne!(mac, bridge_mac("br1"));
    }
}
