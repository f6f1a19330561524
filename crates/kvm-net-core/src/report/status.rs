//! `kvm-net status`: what each configured network looks like in the kernel,
//! the firewall and the process table, as a stable structure (`--json`).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::config::model::{Config, Forward, Network};
use crate::error::Error;
use crate::firewall::guests::{Binding, GuestFilter};
use crate::firewall::{self, plan};
use crate::ifname::IfName;
use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::netns::processes_here;
use crate::mac;
use crate::security::privilege;
use crate::services::dnsmasq::Dnsmasq;
use crate::services::names;
use crate::shaping;
use crate::switch::linux::Marks;
use crate::switch::{self, PortReport, Switch};

/// The version of the JSON shape; bumped on any incompatible change (2:
/// `firewall` per network; nftables chains have table `kvm_net`). Fields
/// added since (`ovs`, a port's `iface_id` and `ovn_installed`) are new
/// keys, not changes.
pub const STATUS_VERSION: u32 = 2;

/// Everything `kvm-net status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Shape version, [`STATUS_VERSION`].
    pub version: u32,
    /// Where the networks came from.
    pub config: String,
    /// One entry per configured network, in config order.
    pub networks: Vec<NetworkStatus>,
    /// Bridges kvm-net created that no configured network names.
    pub unconfigured_bridges: Vec<String>,
}

/// One network.
#[derive(Debug, Serialize)]
pub struct NetworkStatus {
    /// Network name.
    pub name: String,
    /// `nat`, `routed`, `isolated`, `bridged` or `ovs`.
    pub mode: String,
    /// Bridge name.
    pub bridge: String,
    /// `up` (bridge exists), `down` (no such link; for ovs: no such bridge
    /// in OVSDB), `not-a-bridge`, or `unreachable` (ovs: see `ovs.error`).
    pub state: &'static str,
    /// Whether the bridge carries kvm-net's mark (created by kvm-net).
    pub created_by_kvm_net: bool,
    /// Whether `kvm-net up` keeps it up without VMs (until `kvm-net down`).
    pub kept_up: bool,
    /// Addresses on the bridge, CIDR.
    pub addresses: Vec<String>,
    /// The bridge's ports.
    pub ports: Vec<PortStatus>,
    /// The firewall backend holding (or that would hold) its rules:
    /// `nftables` or `iptables`; `null` for bridged networks.
    pub firewall: Option<&'static str>,
    /// kvm-net's chains for the network (empty for bridged networks).
    pub rules: Vec<RuleStatus>,
    /// The network's dnsmasq; `null` when DHCP is off.
    pub dnsmasq: Option<DnsmasqStatus>,
    /// Whether its guests are kept from reaching each other (`isolate_guests`).
    pub isolate_guests: bool,
    /// `allow` or `deny` (`guest_spoofing`).
    pub guest_spoofing: &'static str,
    /// Its port forwards, as configured (in place while the network is up).
    pub forwards: Vec<ForwardStatus>,
    /// The leases its dnsmasq holds now (empty while it is down or without DHCP).
    pub leases: Vec<LeaseStatus>,
    /// Where its Open vSwitch is (`null` for Linux bridges).
    pub ovs: Option<OvsStatus>,
    /// Its guests' DNS domain (`dhcp.domain`), if it has one.
    pub domain: Option<String>,
    /// Whether `kvm-net up --autostart` brings it up at boot (`autostart`).
    pub autostart: bool,
    /// What could not be read without root (`rules`, `guest filter`): the
    /// firewall answers only a process with CAP_NET_ADMIN.
    pub needs_root: Vec<&'static str>,
}

/// An ovs network's database.
#[derive(Debug, Serialize)]
pub struct OvsStatus {
    /// The OVSDB socket.
    pub socket: String,
    /// Why it could not be asked, when it could not.
    pub error: Option<String>,
}

/// One port forward.
#[derive(Debug, Serialize)]
pub struct ForwardStatus {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    /// The one host address it is for; `null`: every address of the host.
    pub host_address: Option<String>,
    /// The host's port or ports (`2222`, `8000-8010`).
    pub host_ports: String,
    /// The `dhcp.hosts` name it names, if it names one.
    pub guest: Option<String>,
    /// The guest's address.
    pub guest_address: String,
    /// The guest's port or ports.
    pub guest_ports: String,
}

/// One DHCP lease.
#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    /// The guest's MAC, as the guest sent it.
    pub mac: String,
    /// The address leased.
    pub address: String,
    /// Its name in the network's DNS: a `dhcp.hosts` name, or the host name
    /// the guest gave where kvm-net published it.
    pub name: Option<String>,
    /// The port the bridge last saw that MAC on, if it has seen it.
    pub tap: Option<String>,
    /// When the lease runs out (seconds since the epoch); 0 for never.
    pub expires: u64,
}

/// One port of a bridge.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    /// Interface name.
    pub name: String,
    /// PID of the process holding the tap open (QEMU), when found.
    pub pid: Option<u32>,
    /// That process's name.
    pub process: Option<String>,
    /// Whether it is an isolated port (`isolate_guests`).
    pub isolated: bool,
    /// The MAC the guest filter locked it to (`guest_spoofing = "deny"`).
    pub bound_mac: Option<String>,
    /// The address the guest filter lets it send from (its lease).
    pub bound_address: Option<String>,
    /// The IPv6 addresses the guest filter holds for it (claimed by use,
    /// first come first served, or leased by DHCPv6).
    pub bound_ipv6: Vec<String>,
    /// An OVS port's `external_ids:iface-id` (`null` on a Linux bridge).
    pub iface_id: Option<String>,
    /// Whether OVN reports an OVS port's flows installed
    /// (`external_ids:ovn-installed`; `null` on a Linux bridge).
    pub ovn_installed: Option<bool>,
    /// The limits in force on it (`bandwidth`): `50mbit`, `null` for none;
    /// `null` as a whole where the switch's port is no link of this host's.
    pub limits: Option<LimitsStatus>,
    /// What went through it since its tap was made, from the kernel's link
    /// counters (`null` where the switch's port is no link of this host's).
    pub traffic: Option<TrafficStatus>,
}

/// A port's limits in force, per direction.
#[derive(Debug, Serialize)]
pub struct LimitsStatus {
    /// What the guest may receive.
    pub to_guest: Option<String>,
    /// What the guest may send.
    pub from_guest: Option<String>,
}

/// A port's traffic: to the guest is what its tap sent, from the guest
/// what it received.
#[derive(Debug, Serialize)]
pub struct TrafficStatus {
    /// Bytes the guest received.
    pub to_guest_bytes: u64,
    /// Packets the guest received.
    pub to_guest_packets: u64,
    /// Bytes the guest sent.
    pub from_guest_bytes: u64,
    /// Packets the guest sent.
    pub from_guest_packets: u64,
}

/// One of kvm-net's chains.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// Its table: iptables' `nat`, `filter`, `mangle`, or nftables' `kvm_net`.
    pub table: String,
    /// Chain name.
    pub chain: String,
    /// `ok`, `missing`, `differs` or `no-jump`.
    pub state: &'static str,
}

/// A network's DHCP server.
#[derive(Debug, Serialize)]
pub struct DnsmasqStatus {
    /// PID of the running dnsmasq; `null` when it is not running.
    pub pid: Option<i32>,
}

/// Reads the state of every network in `config` (or of the one named `only`).
pub fn collect(config: &Config, only: Option<&str>) -> Result<Status> {
    let holders = tap_holders();
    let mut netlink = Netlink::connect()?;
    let links = netlink.all_links()?;
    let firewall_readable = privilege::can_read_firewall();
    let mut networks = Vec::new();
    for network in config.networks.iter().filter(|n| only.is_none_or(|name| n.name == name)) {
        networks.push(network_status(&mut netlink, &links, &holders, network, firewall_readable)?);
    }
    let unconfigured_bridges = links
        .iter()
        .filter(|l| l.is_managed() && !config.networks.iter().any(|n| n.bridge.as_str() == l.name))
        .map(|l| l.name.clone())
        .collect();
    Ok(Status { version: STATUS_VERSION, config: config.source.to_string(), networks, unconfigured_bridges })
}

fn network_status(
    netlink: &mut Netlink,
    links: &[Link],
    holders: &HashMap<String, (u32, String)>,
    network: &Network,
    firewall_readable: bool,
) -> Result<NetworkStatus> {
    let managed = network.mode.is_managed();
    let guest_filter = GuestFilter::of(network);
    let mut needs_root = Vec::new();
    if !firewall_readable && managed {
        needs_root.push("rules");
        if guest_filter.is_asked_for() {
            needs_root.push("guest filter");
        }
    }
    let Seen { state, mut switch, error } = open_switch(network, netlink)?;
    let link = switch.as_ref().and_then(|s| s.link().cloned());
    let addresses = match &link {
        Some(link) => netlink.addresses_of(link)?.iter().map(ToString::to_string).collect(),
        None => Vec::new(),
    };
    let bound = match guest_filter.is_asked_for() && link.is_some() && firewall_readable {
        true => guest_filter.bindings()?,
        false => Vec::new(),
    };
    let ports = match &mut switch {
        Some(switch) => {
            let mut ports: Vec<PortStatus> =
                switch.port_reports(netlink)?.into_iter().map(|port| port_status(port, holders, &bound)).collect();
            for port in &mut ports {
                let Some(link) = links.iter().find(|link| link.name == port.name) else { continue };
                port.traffic = link.counters.map(|c| TrafficStatus {
                    to_guest_bytes: c.tx_bytes,
                    to_guest_packets: c.tx_packets,
                    from_guest_bytes: c.rx_bytes,
                    from_guest_packets: c.rx_packets,
                });
                let limits = shaping::in_force(netlink, link)?;
                port.limits = Some(LimitsStatus {
                    to_guest: limits.to_guest.map(|rate| rate.to_string()),
                    from_guest: limits.from_guest.map(|rate| rate.to_string()),
                });
            }
            ports
        }
        None => Vec::new(),
    };
    let (backend, rules) = if managed && firewall_readable { rule_states(network)? } else { (None, Vec::new()) };
    let dnsmasq = match &network.dhcp {
        Some(_) if managed => {
            Some(DnsmasqStatus { pid: Dnsmasq::for_bridge(&network.bridge)?.running_pid().map(|p| p.as_raw()) })
        }
        _ => None,
    };
    let leases = match (&network.dhcp, &link) {
        (Some(_), Some(bridge)) if managed => leases_on(netlink, links, bridge, &network.bridge)?,
        _ => Vec::new(),
    };
    Ok(NetworkStatus {
        name: network.name.clone(),
        mode: network.mode.to_string(),
        bridge: network.bridge.to_string(),
        state,
        created_by_kvm_net: link.as_ref().is_some_and(Marks::is_managed),
        kept_up: link.as_ref().is_some_and(Marks::is_kept_up),
        addresses,
        ports,
        firewall: backend,
        rules,
        dnsmasq,
        isolate_guests: network.isolate_guests,
        guest_spoofing: network.guest_spoofing.as_str(),
        forwards: network.forwards.iter().map(forward_status).collect(),
        leases,
        ovs: switch::database_of(network).map(|socket| OvsStatus { socket, error }),
        domain: network.dhcp.as_ref().and_then(|dhcp| dhcp.domain.clone()),
        autostart: network.autostart,
        needs_root,
    })
}

/// A network's switch as reports see it: its state (`up`, `down`: no such
/// bridge, `not-a-bridge`, or `unreachable`: a switch beside the kernel that
/// does not answer, with what it said: a state, not an error), and the
/// switch when it is up.
struct Seen {
    state: &'static str,
    switch: Option<Box<dyn Switch>>,
    error: Option<String>,
}

fn open_switch(network: &Network, netlink: &mut Netlink) -> Result<Seen> {
    let seen = |state, error| Seen { state, switch: None, error };
    match switch::open(network, netlink, None) {
        Ok(switch) => Ok(Seen { state: "up", switch: Some(switch), error: None }),
        Err(err) => match err.downcast_ref::<Error>() {
            Some(Error::NoBridge(_) | Error::OvsNoBridge(_)) => Ok(seen("down", None)),
            Some(Error::NotABridge { .. }) => Ok(seen("not-a-bridge", None)),
            _ if switch::database_of(network).is_some() => Ok(seen("unreachable", Some(format!("{err:#}")))),
            _ => Err(err),
        },
    }
}

/// One port, with the process holding its tap and what the guest filter binds to it.
fn port_status(port: PortReport, holders: &HashMap<String, (u32, String)>, bound: &[Binding]) -> PortStatus {
    let holder = holders.get(&port.name);
    let binding = bound
        .iter()
        .find(|b| b.port == port.name && b.ip.is_some())
        .or_else(|| bound.iter().find(|b| b.port == port.name));
    PortStatus {
        pid: holder.map(|h| h.0),
        process: holder.map(|h| h.1.clone()),
        isolated: port.isolated,
        bound_mac: binding.map(|b| mac::show(&b.mac)),
        bound_address: binding.and_then(|b| b.ip).map(|ip| ip.to_string()),
        bound_ipv6: bound
            .iter()
            .filter(|b| b.port == port.name)
            .flat_map(|b| b.ipv6.iter().map(ToString::to_string))
            .collect(),
        iface_id: port.iface_id,
        ovn_installed: port.ovn_installed,
        limits: None,
        traffic: None,
        name: port.name,
    }
}

/// The firewall backend holding a managed network's rules, and each chain's state.
fn rule_states(network: &Network) -> Result<(Option<&'static str>, Vec<RuleStatus>)> {
    let (backend, chains) = firewall::state(&plan(network), network.firewall)?;
    let rules = chains
        .into_iter()
        .map(|c| RuleStatus { family: c.family.as_str(), table: c.table, chain: c.chain, state: c.state.as_str() })
        .collect();
    Ok((Some(backend.as_str()), rules))
}

fn forward_status(forward: &Forward) -> ForwardStatus {
    ForwardStatus {
        proto: forward.protocol.as_str(),
        host_address: forward.host_address.map(|a| a.to_string()),
        host_ports: forward.host_ports.to_string(),
        guest: forward.guest_name.clone(),
        guest_address: forward.guest.to_string(),
        guest_ports: forward.guest_ports.to_string(),
    }
}

/// The bridge's dnsmasq's leases, each with its name in the network's DNS
/// and the port the bridge learned its MAC on.
fn leases_on(netlink: &mut Netlink, links: &[Link], bridge: &Link, name: &IfName) -> Result<Vec<LeaseStatus>> {
    let dnsmasq = Dnsmasq::for_bridge(name)?;
    let leases = dnsmasq.leases()?;
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let published = dnsmasq.dir()?.map(|dir| names::published(&dir)).unwrap_or_default();
    let learned = netlink.learned_macs(bridge)?;
    let port_of = |mac: &str| {
        let (index, _) = learned.iter().find(|(_, learned)| mac::show(learned) == mac)?;
        links.iter().find(|l| l.index == *index).map(|l| l.name.clone())
    };
    Ok(leases
        .into_iter()
        .map(|lease| LeaseStatus {
            tap: port_of(&lease.mac),
            name: lease.name.or_else(|| published.iter().find(|(ip, _)| *ip == lease.ip).map(|(_, n)| n.clone())),
            mac: lease.mac,
            address: lease.ip.to_string(),
            expires: lease.expires,
        })
        .collect())
}

/// Which process holds each tap open, for processes in this network
/// namespace: a tun descriptor's fdinfo names its interface (`iff:`).
fn tap_holders() -> HashMap<String, (u32, String)> {
    let mut holders = HashMap::new();
    for (pid, dir) in processes_here() {
        let Ok(fds) = fs::read_dir(dir.join("fd")) else { continue };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).ok().as_deref() != Some(Path::new("/dev/net/tun")) {
                continue;
            }
            let info = fs::read_to_string(dir.join("fdinfo").join(fd.file_name())).unwrap_or_default();
            if let Some(name) = info.lines().find_map(|l| l.strip_prefix("iff:")) {
                let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_owned();
                holders.insert(name.trim().to_owned(), (pid, comm));
            }
        }
    }
    holders
}
