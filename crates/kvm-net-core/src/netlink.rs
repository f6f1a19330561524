//! The kernel's view of links and addresses, asked and changed over rtnetlink.

use std::io;
use std::net::IpAddr;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use nix::errno::Errno;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

/// The alias kvm-net puts on bridges it creates: the mark that makes them its own to delete.
pub const MANAGED_ALIAS: &str = "kvm-net managed bridge";

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
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
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

    /// Whether kvm-net created this bridge (and so may delete it).
    pub fn is_managed(&self) -> bool {
        self.is_bridge() && self.alias.as_deref() == Some(MANAGED_ALIAS)
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
        let mut request = std::pin::pin!(self.handle.link().get().match_name(name.to_owned()).execute());
        match request.try_next().await {
            Ok(message) => Ok(message.map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(message))
                if message.to_io().raw_os_error() == Some(Errno::ENODEV as i32) =>
            {
                Ok(None)
            }
            Err(err) => Err(err).with_context(|| format!("asking the kernel about {name}")),
        }
    }

    /// Ports of a bridge, filtered by the kernel (a dump restricted to one controller).
    pub async fn ports_of(&self, bridge: &Link) -> Result<Vec<Link>> {
        let mut request = self.handle.link().get();
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::Controller(bridge.index));
        let messages: Vec<LinkMessage> = request
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("listing the ports of bridge {}", bridge.name))?;
        Ok(messages
            .into_iter()
            .map(Link::from_message)
            .filter(|link| link.controller == Some(bridge.index))
            .collect())
    }

    /// Creates a bridge marked as kvm-net's, with a fixed MAC so that it does not
    /// change as ports come and go. Returns `None` if another process won the race.
    pub async fn create_managed_bridge(&self, name: &str, mac: [u8; 6]) -> Result<Option<Link>> {
        let message = LinkBridge::new(name).address(mac.to_vec()).build();
        match self.handle.link().add(message).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(m)) if m.to_io().kind() == io::ErrorKind::AlreadyExists => {
                return Ok(None)
            }
            Err(err) => return Err(err).with_context(|| format!("creating bridge {name}")),
        }
        let bridge = self
            .link_by_name(name)
            .await?
            .with_context(|| format!("bridge {name} vanished right after it was created"))?;
        let mark = LinkUnspec::new_with_index(bridge.index).alias(MANAGED_ALIAS).build();
        self.handle
            .link()
            .set(mark)
            .execute()
            .await
            .with_context(|| format!("marking bridge {name} as kvm-net's"))?;
        Ok(Some(Link {
            alias: Some(MANAGED_ALIAS.to_owned()),
            ..bridge
        }))
    }

    /// Adds the address to the link unless it is already there.
    pub async fn ensure_ipv4(&self, link: &Link, address: Ipv4Network) -> Result<()> {
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
                        .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == address.ip()));
                futures::future::ready(hit)
            })
            .await
            .with_context(|| format!("listing the addresses of {}", link.name))?;
        if present {
            return Ok(());
        }
        match self
            .handle
            .address()
            .add(link.index, IpAddr::V4(address.ip()), address.prefix())
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(m)) if m.to_io().kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other.with_context(|| format!("adding address {address} to {}", link.name)),
        }
    }

    /// Brings a link up.
    pub async fn set_up(&self, link: &Link) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("bringing {} up", link.name))
    }

    /// Makes `port` a port of `bridge` with the bridge's MTU, then brings it up:
    /// the order in which no frame crosses a link with mismatched MTUs.
    pub async fn attach(&self, port: &Link, bridge: &Link) -> Result<()> {
        if port.mtu != bridge.mtu {
            let message = LinkUnspec::new_with_index(port.index).mtu(bridge.mtu).build();
            self.handle.link().set(message).execute().await.with_context(|| {
                format!(
                    "setting the MTU of {} to {} (bridge {})",
                    port.name, bridge.mtu, bridge.name
                )
            })?;
        }
        let message = LinkUnspec::new_with_index(port.index)
            .controller(bridge.index)
            .up()
            .build();
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
            Err(rtnetlink::Error::NetlinkError(m)) if m.to_io().raw_os_error() == Some(Errno::ENODEV as i32) => Ok(()),
            other => other.with_context(|| format!("detaching {} and setting it down", port.name)),
        }
    }

    /// Deletes a link; one already gone counts as deleted.
    pub async fn delete(&self, link: &Link) -> Result<()> {
        match self.handle.link().del(link.index).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.to_io().raw_os_error() == Some(Errno::ENODEV as i32) => Ok(()),
            other => other.with_context(|| format!("deleting {}", link.name)),
        }
    }
}
