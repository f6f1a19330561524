//! The config file format (TOML) and its validation, which names the file,
//! the network and the field of every error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

use super::key_path;
use super::model::{
    Autoconfig, Bandwidth, BandwidthOverride, Choice, Config, Dhcp, Forward, Grants, HostRecord, Mode, Network,
    OvsPorts, Rate, Source, Spoofing, StaticLease, DEFAULT_IFACE_ID, DEFAULT_MAX_TAPS_PER_USER, DEFAULT_OVSDB,
};
use crate::error::Error;
use crate::ifname::IfName;
use crate::kernel::netlink::MAX_BRIDGE_PORTS;
use crate::ports::{PortRange, Protocol};

/// The file as written: strings, checked field by field afterwards so that
/// each error can say which field is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// `auto`, `nftables` or `iptables`.
    firewall: Option<String>,
    /// In the file's order: the first matching tap pattern wins.
    #[serde(default)]
    network: IndexMap<String, RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    mode: String,
    bridge: String,
    ipv4: Option<String>,
    ipv6: Option<String>,
    ipv6_autoconfig: Option<String>,
    mtu: Option<u32>,
    #[serde(default)]
    taps: Vec<String>,
    dhcp: Option<RawDhcp>,
    #[serde(default)]
    allow_users: Vec<String>,
    #[serde(default)]
    allow_groups: Vec<String>,
    max_taps_per_user: Option<u32>,
    isolate_guests: Option<bool>,
    #[serde(default)]
    forwards: Vec<RawForward>,
    guest_spoofing: Option<String>,
    bandwidth: Option<RawBandwidth>,
    #[serde(default)]
    bandwidth_overrides: Vec<RawOverride>,
    iface_id: Option<String>,
    ovsdb: Option<String>,
    vlan: Option<u16>,
    autostart: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBandwidth {
    to_guest: Option<String>,
    from_guest: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    taps: Vec<String>,
    to_guest: Option<String>,
    from_guest: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    proto: Option<String>,
    host_port: RawPorts,
    guest: String,
    guest_port: Option<RawPorts>,
    host_address: Option<String>,
}

/// A port as a number (`2222`) or ports as text (`"8000-8010"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPorts {
    Number(i64),
    Text(String),
}

impl RawPorts {
    fn parse(&self) -> Result<PortRange, String> {
        match self {
            RawPorts::Number(port) => match u16::try_from(*port) {
                Ok(port) if port > 0 => Ok(PortRange::single(port)),
                _ => Err(format!("{port} is not a port (1-65535)")),
            },
            RawPorts::Text(text) => PortRange::parse(text),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDhcp {
    enabled: Option<bool>,
    range: Option<Vec<String>>,
    ipv6_range: Option<Vec<String>>,
    lease_time: Option<String>,
    dns: Option<bool>,
    #[serde(default)]
    hosts: Vec<RawLease>,
    #[serde(default)]
    records: Vec<RawRecord>,
    domain: Option<String>,
    upstream_dns: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    mac: String,
    ip: String,
    ipv6: Option<String>,
    name: Option<String>,
    tap: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: String,
    ip: String,
}

/// Parses and validates a whole config file.
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    let raw: RawFile = toml::from_str(text).map_err(|err| syntax_error(text, path, &err))?;
    let firewall = match raw.firewall.as_deref() {
        None => Choice::Auto,
        Some(text) => Choice::parse(text).ok_or_else(|| Error::Config {
            path: path.display().to_string(),
            network: None,
            field: Some("firewall".to_owned()),
            reason: format!("{text:?} is not one of auto, nftables, iptables"),
        })?,
    };
    let networks = raw
        .network
        .into_iter()
        .map(|(name, network)| network.validate(name, path).map(|n| Network { firewall, ..n }))
        .collect::<Result<Vec<_>, _>>()?;
    let config = Config { source: Source::File(path.to_owned()), firewall, networks };
    check_unique(&config)?;
    Ok(config)
}

/// A TOML or type error, with the line, and the network and field it is in
/// (`network.lab.dhcp.hosts[0].ip` names network lab, field dhcp.hosts[0].ip).
fn syntax_error(text: &str, path: &Path, err: &toml::de::Error) -> Error {
    let line = err.span().map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let segments = err.span().map(|span| key_path::at(text, span.start)).unwrap_or_default();
    let (network, field) = match segments.as_slice() {
        [table, name, rest @ ..] if table == "network" => {
            let field = (!rest.is_empty()).then(|| rest.join(".").replace(".[", "["));
            (Some(name.clone()), field)
        }
        _ => (None, None),
    };
    Error::Config {
        path: match line {
            Some(line) => format!("{} line {line}", path.display()),
            None => path.display().to_string(),
        },
        network,
        field,
        reason: err.message().trim().to_owned(),
    }
}

/// A field that does not validate, and why.
type Invalid = (&'static str, String);

/// A network's name: what the config's tables, messages and `kvm-natup@NAME` take.
fn check_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 15 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(("name", format!("{name:?} must be 1-15 letters, digits, '-' or '_'")));
    }
    Ok(())
}

fn field_error(path: &Path, network: &str, field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.display().to_string(),
        network: Some(network.to_owned()),
        field: Some(field.to_owned()),
        reason: reason.into(),
    }
}

impl RawNetwork {
    fn validate(self, name: String, path: &Path) -> Result<Network, Error> {
        let bad = |(field, reason): Invalid| field_error(path, &name, field, reason);
        check_name(&name).map_err(bad)?;
        let mode = Mode::parse(&self.mode).ok_or_else(|| {
            bad(("mode", format!("{:?} is not one of nat, routed, isolated, bridged, ovs", self.mode)))
        })?;
        let bridge = IfName::parse_bridge(&self.bridge).map_err(|e| bad(("bridge", e.to_string())))?;
        let ovs = self.ovs_ports(mode).map_err(bad)?;
        let (ipv4, ipv6) = self.addresses(mode).map_err(bad)?;
        let taps = self
            .taps
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| bad(("taps", format!("{p:?}: {e}")))))
            .collect::<Result<Vec<_>, _>>()?;
        let dhcp = self.dhcp_of(mode, ipv4, ipv6).map_err(bad)?;
        let ipv6_autoconfig = self.autoconfig(mode, ipv6).map_err(bad)?;
        let (grants, max_taps_per_user) = self.grants().map_err(bad)?;
        let guest_spoofing = self.spoofing(&name, mode, dhcp.is_some()).map_err(bad)?;
        let forwards =
            self.forwards_of(ipv4, dhcp.as_ref(), |field, reason| field_error(path, &name, &field, reason))?;
        let (bandwidth, bandwidth_overrides) =
            self.bandwidth_of(mode).map_err(|(field, reason)| field_error(path, &name, &field, reason))?;
        let autostart = self.autostart_of(mode).map_err(bad)?;
        Ok(Network {
            name,
            mode,
            bridge,
            ipv4,
            ipv6,
            ipv6_autoconfig,
            mtu: self.mtu,
            taps,
            dhcp,
            grants,
            firewall: Choice::Auto,
            max_taps_per_user,
            isolate_guests: self.isolate_guests.unwrap_or(false),
            forwards,
            guest_spoofing,
            bandwidth,
            bandwidth_overrides,
            ovs,
            autostart,
        })
    }

    /// `autostart`, for the networks kvm-net brings up itself.
    fn autostart_of(&self, mode: Mode) -> Result<bool, Invalid> {
        match self.autostart {
            Some(true) if !mode.is_managed() => Err((
                "autostart",
                format!("kvm-net brings up only the networks it makes (nat, routed, isolated), and this one is {mode}"),
            )),
            autostart => Ok(autostart.unwrap_or(false)),
        }
    }

    /// `bandwidth` and `bandwidth_overrides`, each rate checked; an error
    /// names the field (`bandwidth.to_guest`, `bandwidth_overrides[1].taps`).
    fn bandwidth_of(&self, mode: Mode) -> Result<(Bandwidth, Vec<BandwidthOverride>), (String, String)> {
        let rate = |field: String, text: &Option<String>| -> Result<Option<Rate>, (String, String)> {
            let Some(text) = text else { return Ok(None) };
            match Rate::parse(text) {
                Some(rate) if rate >= Rate::MIN => Ok(Some(rate)),
                _ => Err((
                    field,
                    format!(
                        "{text:?} is not a rate of at least 8kbit: an integer with kbit, mbit or gbit (\"50mbit\")"
                    ),
                )),
            }
        };
        let bandwidth = match &self.bandwidth {
            None => Bandwidth::default(),
            Some(raw) => Bandwidth {
                to_guest: rate("bandwidth.to_guest".to_owned(), &raw.to_guest)?,
                from_guest: rate("bandwidth.from_guest".to_owned(), &raw.from_guest)?,
            },
        };
        let mut overrides = Vec::new();
        for (index, raw) in self.bandwidth_overrides.iter().enumerate() {
            let field = |name: &str| format!("bandwidth_overrides[{index}].{name}");
            if raw.taps.is_empty() {
                return Err((field("taps"), "name at least one tap pattern (\"db-*\")".to_owned()));
            }
            let taps = raw
                .taps
                .iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| (field("taps"), format!("{p:?}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let limits = Bandwidth {
                to_guest: rate(field("to_guest"), &raw.to_guest)?,
                from_guest: rate(field("from_guest"), &raw.from_guest)?,
            };
            overrides.push(BandwidthOverride { taps, limits });
        }
        let set = self.bandwidth.is_some() || !overrides.is_empty();
        if set && mode == Mode::Ovs {
            let field = if self.bandwidth.is_some() { "bandwidth" } else { "bandwidth_overrides" };
            return Err((
                field.to_owned(),
                "kvm-net does not limit Open vSwitch ports: set ingress_policing_rate or a QoS on the port's Interface row (ovs-vsctl)".to_owned(),
            ));
        }
        Ok((bandwidth, overrides))
    }

    /// The bridge's addresses, and the MTU, as `mode` allows them.
    fn addresses(&self, mode: Mode) -> Result<(Option<Ipv4Network>, Option<Ipv6Network>), Invalid> {
        let ipv4 = self.ipv4.as_deref().map(parse_ipv4).transpose().map_err(|e| ("ipv4", e))?;
        let ipv6 = self.ipv6.as_deref().map(parse_ipv6).transpose().map_err(|e| ("ipv6", e))?;
        if let Some(mtu) = self.mtu.filter(|mtu| !(68..=65535).contains(mtu)) {
            return Err(("mtu", format!("{mtu} is outside 68-65535")));
        }
        match mode {
            Mode::Nat if ipv4.is_none() => Err(("ipv4", "a nat network needs an IPv4 address".to_owned())),
            Mode::Routed if ipv4.is_none() && ipv6.is_none() => {
                Err(("ipv4", "a routed network needs an IPv4 or IPv6 address".to_owned()))
            }
            Mode::Bridged | Mode::Ovs => {
                let set = [("ipv4", ipv4.is_some()), ("ipv6", ipv6.is_some()), ("mtu", self.mtu.is_some())];
                match set.into_iter().find(|(_, set)| *set) {
                    Some((field, _)) => Err((
                        field,
                        format!("kvm-net never changes a {mode} network's bridge; set it on the bridge itself"),
                    )),
                    None => Ok((ipv4, ipv6)),
                }
            }
            _ => Ok((ipv4, ipv6)),
        }
    }

    /// DHCP, on by default wherever there is an IPv4 subnet to serve.
    fn dhcp_of(
        &self,
        mode: Mode,
        ipv4: Option<Ipv4Network>,
        ipv6: Option<Ipv6Network>,
    ) -> Result<Option<Dhcp>, Invalid> {
        match &self.dhcp {
            Some(_) if !mode.is_managed() => {
                Err(("dhcp", "kvm-net runs no DHCP server on a bridge it does not own".to_owned()))
            }
            Some(RawDhcp { enabled: Some(false), .. }) => Ok(None),
            Some(raw) => match ipv4 {
                Some(address) => raw.validate(address, ipv6).map(Some),
                None => Err(("dhcp", "DHCP needs the network's ipv4 address".to_owned())),
            },
            None => Ok(ipv4.filter(|_| mode.is_managed()).map(Dhcp::defaults_for)),
        }
    }

    /// `ipv6_autoconfig`: SLAAC by default for a /64, off otherwise; the
    /// DHCPv6 range from `dhcp.ipv6_range`, or the subnet's upper half.
    fn autoconfig(&self, mode: Mode, ipv6: Option<Ipv6Network>) -> Result<Autoconfig, Invalid> {
        let range = self.dhcp.as_ref().and_then(|dhcp| dhcp.ipv6_range.as_ref());
        let asked = self.ipv6_autoconfig.as_deref();
        let Some(address) = ipv6 else {
            return match (asked, range) {
                (Some(_), _) => {
                    Err(("ipv6_autoconfig", "IPv6 autoconfiguration needs the network's ipv6 address".to_owned()))
                }
                (None, Some(_)) => Err(("dhcp.ipv6_range", "DHCPv6 needs the network's ipv6 address".to_owned())),
                (None, None) => Ok(Autoconfig::Off),
            };
        };
        // A bridged or ovs network has no ipv6 (refused above): managed here.
        let autoconfig = match asked {
            None if address.prefix() == 64 && mode.is_managed() => Autoconfig::Slaac,
            None | Some("off") => Autoconfig::Off,
            Some("slaac") if address.prefix() != 64 => {
                return Err((
                    "ipv6_autoconfig",
                    format!("\"slaac\" needs a /64 (guests build their addresses from a 64-bit prefix), and ipv6 is {address}; use \"dhcpv6\" or a /64"),
                ))
            }
            Some("slaac") => Autoconfig::Slaac,
            Some("dhcpv6") => {
                let subnet = Ipv6Network::new(address.network(), address.prefix()).unwrap_or(address);
                let range = match range {
                    None => Autoconfig::default_range(subnet),
                    Some(range) => parse_ipv6_range(range, address)?,
                };
                Autoconfig::Dhcpv6 { range }
            }
            Some(other) => {
                return Err(("ipv6_autoconfig", format!("{other:?} is not one of slaac, dhcpv6, off")));
            }
        };
        if range.is_some() && !matches!(autoconfig, Autoconfig::Dhcpv6 { .. }) {
            return Err((
                "dhcp.ipv6_range",
                format!(
                    "a range is leased only with ipv6_autoconfig = \"dhcpv6\", and this network's is \"{}\"",
                    autoconfig.as_str()
                ),
            ));
        }
        Ok(autoconfig)
    }

    /// Who may use the network through a privileged helper, and how many taps each.
    fn grants(&self) -> Result<(Grants, u32), Invalid> {
        for (field, names) in [("allow_users", &self.allow_users), ("allow_groups", &self.allow_groups)] {
            if let Some(bad_name) = names.iter().find(|n| !is_account_name(n)) {
                return Err((field, format!("{bad_name:?} is not a user or group name")));
            }
        }
        let max_taps_per_user = self.max_taps_per_user.unwrap_or(DEFAULT_MAX_TAPS_PER_USER);
        if !(1..=MAX_BRIDGE_PORTS as u32).contains(&max_taps_per_user) {
            return Err(("max_taps_per_user", format!("{max_taps_per_user} is outside 1-{MAX_BRIDGE_PORTS}")));
        }
        Ok((Grants { users: self.allow_users.clone(), groups: self.allow_groups.clone() }, max_taps_per_user))
    }

    /// `guest_spoofing`, where `mode` and DHCP let it be "deny"; and the
    /// other settings that only some modes have.
    fn spoofing(&self, name: &str, mode: Mode, dhcp: bool) -> Result<Spoofing, Invalid> {
        if !self.forwards.is_empty() && !mode.forwards() {
            return Err(("forwards", format!("port forwards need a nat or routed network, and {name} is {mode}")));
        }
        if mode == Mode::Ovs && self.isolate_guests == Some(true) {
            return Err((
                "isolate_guests",
                "Open vSwitch ports are kept apart by the switch's own flows (OVN's port groups and ACLs), not by kvm-net".to_owned(),
            ));
        }
        let spoofing = match self.guest_spoofing.as_deref() {
            None => Spoofing::Allow,
            Some(text) => {
                Spoofing::parse(text).ok_or(("guest_spoofing", format!("{text:?} is not \"allow\" or \"deny\"")))?
            }
        };
        if spoofing == Spoofing::Deny && !mode.is_managed() {
            let whose = match mode {
                Mode::Ovs => "an ovs network's ports are kept honest by OVS's flows (OVN's port_security)",
                _ => "a bridged network's guests are the LAN's",
            };
            return Err((
                "guest_spoofing",
                format!("\"deny\" needs a network kvm-net manages (nat, routed or isolated): {whose}"),
            ));
        }
        if spoofing == Spoofing::Deny && !dhcp {
            return Err((
                "guest_spoofing",
                "\"deny\" needs DHCP on the network: each guest may send only from the address kvm-net's DHCP server leased it, so guests with hand-set addresses would be cut off".to_owned(),
            ));
        }
        Ok(spoofing)
    }

    /// The port forwards, each checked, none overlapping an earlier one;
    /// `bad` names the field (`forwards[1].guest`).
    fn forwards_of(
        &self,
        ipv4: Option<Ipv4Network>,
        dhcp: Option<&Dhcp>,
        bad: impl Fn(String, String) -> Error,
    ) -> Result<Vec<Forward>, Error> {
        let mut forwards: Vec<Forward> = Vec::new();
        for (index, raw) in self.forwards.iter().enumerate() {
            let forward = raw
                .validate(ipv4, dhcp)
                .map_err(|(field, reason)| bad(format!("forwards[{index}].{field}"), reason))?;
            if let Some(earlier) = forwards.iter().position(|f| f.overlaps(&forward)) {
                return Err(bad(
                    format!("forwards[{index}].host_port"),
                    format!("{} overlaps forwards[{earlier}] ({})", forward.listens(), forwards[earlier].listens()),
                ));
            }
            forwards.push(forward);
        }
        Ok(forwards)
    }
}

impl RawNetwork {
    /// The OVS settings of an `ovs` network (refused in any other).
    fn ovs_ports(&self, mode: Mode) -> Result<Option<OvsPorts>, (&'static str, String)> {
        if mode != Mode::Ovs {
            for (field, set) in
                [("iface_id", self.iface_id.is_some()), ("ovsdb", self.ovsdb.is_some()), ("vlan", self.vlan.is_some())]
            {
                if set {
                    return Err((field, format!("only an ovs network has {field}, and this one is {mode}")));
                }
            }
            return Ok(None);
        }
        let iface_id = self.iface_id.clone().unwrap_or_else(|| DEFAULT_IFACE_ID.to_owned());
        let example = iface_id.replace("{tap}", "tap0");
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@');
        if example.is_empty() || example.len() > 255 || !example.chars().all(allowed) {
            return Err((
                "iface_id",
                format!(
                    "{iface_id:?} must be letters, digits, . _ - : / @ and {{tap}} (the tap's name), at most 255 bytes"
                ),
            ));
        }
        let socket = self.ovsdb.as_deref().unwrap_or(DEFAULT_OVSDB);
        let ovsdb = match socket.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => PathBuf::from(path),
            _ => {
                return Err((
                    "ovsdb",
                    format!("{socket:?} is not unix:/ABSOLUTE/PATH (kvm-net speaks to OVSDB over its Unix socket)"),
                ))
            }
        };
        if let Some(vlan) = self.vlan {
            if vlan > 4095 {
                return Err(("vlan", format!("{vlan} is outside 0-4095")));
            }
        }
        Ok(Some(OvsPorts { iface_id, ovsdb, vlan: self.vlan }))
    }
}

impl RawForward {
    /// The forward, checked against the network's subnet and fixed leases;
    /// an error names the field (`guest`, `host_port`, ...).
    fn validate(&self, ipv4: Option<Ipv4Network>, dhcp: Option<&Dhcp>) -> Result<Forward, (&'static str, String)> {
        let protocol = match self.proto.as_deref() {
            None => Protocol::Tcp,
            Some(text) => Protocol::parse(text).ok_or(("proto", format!("{text:?} is not tcp or udp")))?,
        };
        let host_ports = self.host_port.parse().map_err(|reason| ("host_port", reason))?;
        let guest_ports = match &self.guest_port {
            None => host_ports,
            Some(raw) => raw.parse().map_err(|reason| ("guest_port", reason))?,
        };
        if guest_ports.count() != host_ports.count() {
            return Err((
                "guest_port",
                format!(
                    "{guest_ports} holds {} ports and host_port {host_ports} {}: they are mapped one to one",
                    guest_ports.count(),
                    host_ports.count()
                ),
            ));
        }
        let Some(address) = ipv4 else {
            return Err(("guest", "port forwards need the network's ipv4 address".to_owned()));
        };
        let subnet = Ipv4Network::new(address.network(), address.prefix()).unwrap_or(address);
        let (guest, guest6, guest_name) = match self.guest.parse::<Ipv4Addr>() {
            Ok(ip) => {
                if !subnet.contains(ip) || ip == subnet.network() || ip == subnet.broadcast() || ip == address.ip() {
                    return Err(("guest", format!("{ip} is not a guest's address in {subnet}")));
                }
                (ip, None, None)
            }
            Err(_) => {
                let hosts = dhcp.map_or(&[][..], |d| &d.hosts);
                let Some(host) = hosts.iter().find(|h| h.name.as_deref() == Some(self.guest.as_str())) else {
                    return Err((
                        "guest",
                        format!("{:?} is no IPv4 address and no dhcp.hosts entry is named so", self.guest),
                    ));
                };
                (host.ip, host.ipv6, Some(self.guest.clone()))
            }
        };
        let host_address = match &self.host_address {
            None => None,
            Some(text) => {
                let ip: Ipv4Addr =
                    text.parse().map_err(|_| ("host_address", format!("{text:?} is not an IPv4 address")))?;
                if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                    return Err(("host_address", format!("{ip} cannot be an address other hosts connect to")));
                }
                Some(ip)
            }
        };
        // Only to the host's IPv4 address given: nothing listens on IPv6.
        let guest6 = guest6.filter(|_| host_address.is_none());
        Ok(Forward { protocol, host_ports, guest, guest6, guest_name, guest_ports, host_address })
    }
}

impl RawDhcp {
    fn validate(&self, address: Ipv4Network, ipv6: Option<Ipv6Network>) -> Result<Dhcp, (&'static str, String)> {
        let subnet = Ipv4Network::new(address.network(), address.prefix()).unwrap_or(address);
        let host_ip = |field: &'static str, text: &str| -> Result<Ipv4Addr, (&'static str, String)> {
            let ip: Ipv4Addr = text.parse().map_err(|_| (field, format!("{text:?} is not an IPv4 address")))?;
            if !subnet.contains(ip) || ip == subnet.network() || ip == subnet.broadcast() {
                return Err((field, format!("{ip} is not a host address of {subnet}")));
            }
            Ok(ip)
        };
        let mut dhcp = Dhcp::defaults_for(address);
        if let Some(range) = &self.range {
            let [start, end] = range.as_slice() else {
                return Err(("dhcp.range", "write it as [\"FIRST\", \"LAST\"]".to_owned()));
            };
            let (start, end) = (host_ip("dhcp.range", start)?, host_ip("dhcp.range", end)?);
            if start > end {
                return Err(("dhcp.range", format!("{start} comes after {end}")));
            }
            dhcp.range = (start, end);
        }
        if let Some(lease_time) = self.lease_time.clone() {
            if !valid_lease_time(&lease_time) {
                return Err((
                    "dhcp.lease_time",
                    format!("{lease_time:?} is not a time of at least 2m (like 45m, 12h, 1d) or \"infinite\""),
                ));
            }
            dhcp.lease_time = lease_time;
        }
        dhcp.dns = self.dns.unwrap_or(true);
        for lease in &self.hosts {
            let mac = lease.mac.to_ascii_lowercase();
            let octets: Vec<&str> = mac.split(':').collect();
            if octets.len() != 6 || !octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit())) {
                return Err(("dhcp.hosts", format!("{:?} is not a MAC address like 52:54:00:12:34:56", lease.mac)));
            }
            let ip = host_ip("dhcp.hosts", &lease.ip)?;
            let ipv6 = match (&lease.ipv6, ipv6) {
                (None, _) => None,
                (Some(_), None) => return Err(("dhcp.hosts", "an ipv6 needs the network's ipv6 address".to_owned())),
                (Some(text), Some(address)) => Some(guest_ipv6("dhcp.hosts", text, address)?),
            };
            if let Some(name) = &lease.name {
                if !is_hostname(name) {
                    return Err(("dhcp.hosts", format!("{name:?} is not a host name")));
                }
            }
            if dhcp.hosts.iter().any(|h: &StaticLease| h.mac == mac || h.ip == ip) {
                return Err(("dhcp.hosts", format!("{mac} or {ip} is given twice")));
            }
            if let Some(v6) = ipv6.filter(|v6| dhcp.hosts.iter().any(|h| h.ipv6 == Some(*v6))) {
                return Err(("dhcp.hosts", format!("{v6} is given twice")));
            }
            let tap = match &lease.tap {
                None => None,
                Some(pattern) if pattern.is_empty() || pattern.len() > 64 => {
                    return Err(("dhcp.hosts", format!("tap {pattern:?} must be a tap name pattern of 1-64 bytes")))
                }
                Some(pattern) => Some(
                    glob::Pattern::new(pattern)
                        .map_err(|err| ("dhcp.hosts", format!("tap {pattern:?} is not a pattern: {err}")))?,
                ),
            };
            dhcp.hosts.push(StaticLease { mac, ip, ipv6, name: lease.name.clone(), tap });
        }
        if let Some(domain) = &self.domain {
            if !is_hostname(domain) {
                return Err(("dhcp.domain", format!("{domain:?} is not a DNS name (like vm.internal)")));
            }
            dhcp.domain = Some(domain.to_ascii_lowercase());
        }
        if self.upstream_dns.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                "dhcp.upstream_dns",
                "name at least one resolver, or leave upstream_dns out for the host's /etc/resolv.conf".to_owned(),
            ));
        }
        let own = [Some(IpAddr::V4(address.ip())), ipv6.map(|v6| IpAddr::V6(v6.ip()))];
        for server in self.upstream_dns.iter().flatten() {
            let ip: IpAddr = server
                .parse()
                .map_err(|_| ("dhcp.upstream_dns", format!("{server:?} is not an IPv4 or IPv6 address")))?;
            if own.contains(&Some(ip)) {
                return Err((
                    "dhcp.upstream_dns",
                    format!("{ip} is this network's own address: dnsmasq would ask itself"),
                ));
            }
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
                return Err(("dhcp.upstream_dns", format!("{ip} cannot be a resolver")));
            }
            if dhcp.upstream_dns.contains(&ip) {
                return Err(("dhcp.upstream_dns", format!("{ip} is given twice")));
            }
            dhcp.upstream_dns.push(ip);
        }
        for record in &self.records {
            if !is_hostname(&record.name) {
                return Err(("dhcp.records", format!("{:?} is not a host name", record.name)));
            }
            let ip =
                record.ip.parse().map_err(|_| ("dhcp.records", format!("{:?} is not an IP address", record.ip)))?;
            dhcp.records.push(HostRecord { name: record.name.clone(), ip });
        }
        Ok(dhcp)
    }
}

/// dnsmasq's lease times: a number of seconds (at least 120) with an optional
/// unit, or `infinite`.
fn valid_lease_time(text: &str) -> bool {
    if text == "infinite" {
        return true;
    }
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 604800,
        _ => return false,
    };
    digits.parse::<u64>().is_ok_and(|n| n.saturating_mul(factor) >= 120)
}

/// A user or group name as useradd and groupadd accept them (letters,
/// digits, `.`, `_`, `-`, a trailing `$`; not starting with `-`).
fn is_account_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= 32
        && !body.starts_with('-')
        && body.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Parses a bridge's IPv4 address: a host address with a prefix that leaves room for guests.
pub(super) fn parse_ipv4(value: &str) -> Result<Ipv4Network, String> {
    if !value.contains('/') {
        return Err(format!("{value:?} has no prefix length (write it as 192.168.100.1/24)"));
    }
    let net: Ipv4Network = value.parse().map_err(|e: ipnetwork::IpNetworkError| format!("{value:?}: {e}"))?;
    if net.prefix() > 30 {
        return Err(format!("{value:?}: a prefix longer than /30 leaves no address for a guest"));
    }
    if net.ip() == net.network() || net.ip() == net.broadcast() {
        return Err(format!(
            "{value:?}: {} is the subnet's network or broadcast address, not a host address",
            net.ip()
        ));
    }
    Ok(net)
}

/// Parses a bridge's IPv6 address: a host address with a prefix.
fn parse_ipv6(value: &str) -> Result<Ipv6Network, String> {
    if !value.contains('/') {
        return Err(format!("{value:?} has no prefix length (write it as fd00:6b76::1/64)"));
    }
    let net: Ipv6Network = value.parse().map_err(|e: ipnetwork::IpNetworkError| format!("{value:?}: {e}"))?;
    if net.prefix() > 126 {
        return Err(format!("{value:?}: a prefix longer than /126 leaves no address for a guest"));
    }
    if net.ip() == net.network() {
        return Err(format!("{value:?}: {} is the subnet's own address, not a host address", net.ip()));
    }
    Ok(net)
}

/// A guest's IPv6 address in the bridge's subnet (`address`): not the
/// subnet's own (its router anycast address), not the bridge's, not multicast.
fn guest_ipv6(field: &'static str, text: &str, address: Ipv6Network) -> Result<Ipv6Addr, (&'static str, String)> {
    let ip: Ipv6Addr = text.parse().map_err(|_| (field, format!("{text:?} is not an IPv6 address")))?;
    let subnet = Ipv6Network::new(address.network(), address.prefix()).unwrap_or(address);
    if !subnet.contains(ip) || ip == subnet.network() {
        return Err((field, format!("{ip} is not a guest's address in {subnet}")));
    }
    if ip == address.ip() {
        return Err((field, format!("{ip} is the bridge's own address")));
    }
    Ok(ip)
}

/// `dhcp.ipv6_range`: `["FIRST", "LAST"]`, guests' addresses of the bridge's subnet.
fn parse_ipv6_range(range: &[String], address: Ipv6Network) -> Result<(Ipv6Addr, Ipv6Addr), Invalid> {
    let field = "dhcp.ipv6_range";
    let [first, last] = range else { return Err((field, "write it as [\"FIRST\", \"LAST\"]".to_owned())) };
    let (first, last) = (guest_ipv6(field, first, address)?, guest_ipv6(field, last, address)?);
    if first > last {
        return Err((field, format!("{first} comes after {last}")));
    }
    if (first..=last).contains(&address.ip()) {
        return Err((field, format!("{first}-{last} holds the bridge's own address {}", address.ip())));
    }
    Ok((first, last))
}

/// Bridges and subnets may not be shared between networks.
pub(super) fn check_unique(config: &Config) -> Result<(), Error> {
    let path = match &config.source {
        Source::File(path) => path.display().to_string(),
        Source::Builtin => config.source.to_string(),
    };
    let bad = |network: &Network, field: &str, reason: String| Error::Config {
        path: path.clone(),
        network: Some(network.name.clone()),
        field: Some(field.to_owned()),
        reason,
    };
    let subnets: Vec<_> = config.networks.iter().map(|n| (n, n.subnet4(), n.subnet6())).collect();
    for (i, &(a, a4, a6)) in subnets.iter().enumerate() {
        for &(b, b4, b6) in &subnets[..i] {
            // OVS networks may share a bridge: each is a kind of port on it
            // (its iface-id template, its tag), br-int holding them all.
            if a.bridge == b.bridge && !(a.mode == Mode::Ovs && b.mode == Mode::Ovs) {
                return Err(bad(a, "bridge", format!("{} is already the bridge of network {}", a.bridge, b.name)));
            }
            if let (Some(x), Some(y)) = (a4, b4) {
                if x.contains(y.network()) || y.contains(x.network()) {
                    return Err(bad(a, "ipv4", format!("{x} overlaps {y} of network {}", b.name)));
                }
            }
            if let (Some(x), Some(y)) = (a6, b6) {
                if x.contains(y.network()) || y.contains(x.network()) {
                    return Err(bad(a, "ipv6", format!("{x} overlaps {y} of network {}", b.name)));
                }
            }
            for (index, forward) in a.forwards.iter().enumerate() {
                if let Some(other) = b.forwards.iter().position(|f| f.overlaps(forward)) {
                    let reason = format!(
                        "{} overlaps forwards[{other}] of network {} ({})",
                        forward.listens(),
                        b.name,
                        b.forwards[other].listens()
                    );
                    return Err(bad(a, &format!("forwards[{index}].host_port"), reason));
                }
            }
        }
    }
    // From every address of the host, a forward would also take what guests
    // send their gateway (an address of the host): DNS and DHCP renewals.
    for network in &config.networks {
        for (index, forward) in network.forwards.iter().enumerate().filter(|(_, f)| f.host_address.is_none()) {
            for served in config.networks.iter().filter(|n| n.mode.is_managed()) {
                let Some(dhcp) = &served.dhcp else { continue };
                let dns = dhcp.dns && forward.host_ports.contains(53);
                let renewals = forward.protocol == Protocol::Udp && forward.host_ports.contains(67);
                if dns || renewals {
                    let service = if dns { "DNS" } else { "DHCP" };
                    return Err(bad(
                        network,
                        &format!("forwards[{index}].host_port"),
                        format!(
                            "{} from every address of the host would take the {service} that guests of network {} ask their gateway for; set host_address",
                            forward.listens(),
                            served.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/kvm-net/kvm-net.toml";

    fn parse_text(text: &str) -> Result<Config, Error> {
        parse(text, Path::new(PATH))
    }

    #[test]
    fn reads_every_mode_in_file_order() {
        let config = parse_text(
            r#"
            [network.lab]
            mode = "isolated"
            bridge = "labbr0"
            taps = ["lab-*"]

            [network.default]
            mode = "nat"
            bridge = "br0"
            ipv4 = "192.168.100.1/24"
            ipv6 = "fd00:6b76::1/64"
            mtu = 9000

            [network.dmz]
            mode = "routed"
            bridge = "dmzbr0"
            ipv4 = "10.77.0.1/24"

            [network.lan]
            mode = "bridged"
            bridge = "br-lan"
            taps = ["srv-*", "web?"]
            "#,
        )
        .expect("valid file");
        let names: Vec<&str> = config.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lab", "default", "dmz", "lan"]);
        let default = config.network("default").expect("default");
        assert_eq!(default.mode, Mode::Nat);
        assert_eq!(default.subnet4().map(|s| s.to_string()), Some("192.168.100.0/24".to_owned()));
        assert_eq!(default.subnet6().map(|s| s.to_string()), Some("fd00:6b76::/64".to_owned()));
        assert_eq!(default.mtu, Some(9000));
        assert_eq!(config.network("lab").map(|n| n.ipv4), Some(None));
        assert!(config.network("lan").is_some_and(|n| n.taps[1].matches("web1")));
    }

    #[test]
    fn order_comes_from_the_document_not_from_its_text() {
        let config = parse_text(
            "# [network.b] used to be first\n[network.a]\nmode = \"isolated\"\nbridge = \"a0\"\ntaps = [\"t*\"]\n\
             [network.b]\nmode = \"isolated\"\nbridge = \"b0\"\ntaps = [\"t*\"]\n",
        )
        .expect("valid");
        let names: Vec<&str> = config.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn type_errors_name_the_field() {
        let net =
            |body: &str| format!("[network.n1]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\n{body}\n");
        assert_error(&net("taps = \"a-*\""), Some("n1"), Some("taps"), "invalid type");
        assert_error(&net("mtu = \"1400\""), Some("n1"), Some("mtu"), "invalid type");
        assert_error(&net("[network.n1.dhcp]\ndns = \"yes\""), Some("n1"), Some("dhcp.dns"), "invalid type");
        assert_error(
            &net("[network.n1.dhcp]\nhosts = [{ mac = \"52:54:00:00:00:01\", ip = 5 }]"),
            Some("n1"),
            Some("dhcp.hosts[0].ip"),
            "invalid type",
        );
        assert_error(&net("allow_users = \"alice\""), Some("n1"), Some("allow_users"), "invalid type");
    }

    #[test]
    fn grants_and_bridge_names() {
        let config = parse_text(
            "[network.n1]\nmode = \"isolated\"\nbridge = \"br0\"\nallow_users = [\"alice\", \"svc$\"]\nallow_groups = [\"kvm\"]\n",
        )
        .expect("valid");
        assert_eq!(config.networks[0].grants.users, ["alice", "svc$"]);
        assert_eq!(config.networks[0].grants.groups, ["kvm"]);
        let net = |body: &str| format!("[network.n1]\nmode = \"isolated\"\n{body}\n");
        assert_error(&net("bridge = \"br0\"\nallow_groups = [\"-x\"]"), Some("n1"), Some("allow_groups"), "not a user");
        assert_error(&net("bridge = \"br0\"\nallow_users = [\"a b\"]"), Some("n1"), Some("allow_users"), "not a user");
        assert_error(&net("bridge = \"br+\""), Some("n1"), Some("bridge"), "wildcard");
    }

    #[test]
    fn dhcp_defaults_and_settings() {
        let config = parse_text(
            r#"
            [network.default]
            mode = "nat"
            bridge = "br0"
            ipv4 = "192.168.100.1/24"
            [network.lab]
            mode = "isolated"
            bridge = "lab0"
            ipv4 = "10.0.0.1/16"
            [network.lab.dhcp]
            range = ["10.0.1.10", "10.0.1.99"]
            lease_time = "12h"
            dns = false
            hosts = [{ mac = "52:54:00:AA:BB:01", ip = "10.0.0.50", name = "fixed" }]
            records = [{ name = "upstream.lab", ip = "203.0.113.2" }]
            [network.quiet]
            mode = "isolated"
            bridge = "q0"
            [network.off]
            mode = "nat"
            bridge = "off0"
            ipv4 = "10.9.0.1/24"
            dhcp = { enabled = false }
            "#,
        )
        .expect("valid");
        let default = config.network("default").and_then(|n| n.dhcp.clone()).expect("on by default");
        assert_eq!(default.range, (Ipv4Addr::new(192, 168, 100, 128), Ipv4Addr::new(192, 168, 100, 254)));
        assert_eq!((default.lease_time.as_str(), default.dns), ("1h", true));
        let lab = config.network("lab").and_then(|n| n.dhcp.clone()).expect("configured");
        assert_eq!(lab.range, (Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 1, 99)));
        assert_eq!((lab.lease_time.as_str(), lab.dns), ("12h", false));
        assert_eq!(
            lab.hosts,
            [StaticLease {
                mac: "52:54:00:aa:bb:01".into(),
                ip: Ipv4Addr::new(10, 0, 0, 50),
                ipv6: None,
                name: Some("fixed".into()),
                tap: None,
            }]
        );
        assert_eq!(lab.records[0].ip.to_string(), "203.0.113.2");
        assert_eq!(config.network("quiet").map(|n| n.dhcp.is_some()), Some(false), "no address, no DHCP");
        assert_eq!(config.network("off").map(|n| n.dhcp.is_some()), Some(false));
    }

    #[test]
    fn dhcp_errors_name_their_field() {
        let net = |dhcp: &str| {
            format!(
                "[network.n1]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\n[network.n1.dhcp]\n{dhcp}\n"
            )
        };
        assert_error(
            &net("range = [\"10.0.1.5\", \"10.0.0.9\"]"),
            Some("n1"),
            Some("dhcp.range"),
            "not a host address of 10.0.0.0/24",
        );
        assert_error(&net("range = [\"10.0.0.90\", \"10.0.0.9\"]"), Some("n1"), Some("dhcp.range"), "comes after");
        assert_error(&net("range = [\"10.0.0.9\"]"), Some("n1"), Some("dhcp.range"), "[\"FIRST\", \"LAST\"]");
        assert_error(&net("lease_time = \"10s\""), Some("n1"), Some("dhcp.lease_time"), "at least 2m");
        assert_error(
            &net("hosts = [{ mac = \"52:54:00\", ip = \"10.0.0.5\" }]"),
            Some("n1"),
            Some("dhcp.hosts"),
            "not a MAC",
        );
        assert_error(
            &net("hosts = [{ mac = \"52:54:00:00:00:01\", ip = \"10.0.0.5\", name = \"bad_name\" }]"),
            Some("n1"),
            Some("dhcp.hosts"),
            "not a host name",
        );
        assert_error(
            &net("records = [{ name = \"x\", ip = \"nope\" }]"),
            Some("n1"),
            Some("dhcp.records"),
            "not an IP",
        );
        assert_error(&net("leases = 3"), Some("n1"), Some("dhcp.leases"), "unknown field `leases`");
        assert_error(
            "[network.n1]\nmode = \"bridged\"\nbridge = \"br0\"\n[network.n1.dhcp]\nenabled = true\n",
            Some("n1"),
            Some("dhcp"),
            "does not own",
        );
        assert_error(
            "[network.n1]\nmode = \"isolated\"\nbridge = \"br0\"\n[network.n1.dhcp]\nenabled = true\n",
            Some("n1"),
            Some("dhcp"),
            "needs the network's ipv4",
        );
    }

    #[test]
    fn ipv6_guests_configure_themselves_by_slaac_on_a_64_and_by_dhcpv6_when_asked() {
        let v6 = |extra: &str, prefix: u8| {
            parse_text(&format!(
                "[network.v6]\nmode = \"nat\"\nbridge = \"v6br0\"\nipv4 = \"192.168.60.1/24\"\nipv6 = \"fd00:60::1/{prefix}\"\n{extra}\n"
            ))
            .map(|config| config.networks[0].clone())
        };
        assert_eq!(v6("", 64).map(|n| n.ipv6_autoconfig).ok(), Some(Autoconfig::Slaac));
        assert_eq!(v6("", 112).map(|n| n.ipv6_autoconfig).ok(), Some(Autoconfig::Off));
        assert_eq!(v6("ipv6_autoconfig = \"off\"", 64).map(|n| n.ipv6_autoconfig).ok(), Some(Autoconfig::Off));
        let range = |first: &str, last: &str| Autoconfig::Dhcpv6 {
            range: (first.parse().expect("an address"), last.parse().expect("an address")),
        };
        assert_eq!(
            v6("ipv6_autoconfig = \"dhcpv6\"", 64).map(|n| n.ipv6_autoconfig).ok(),
            Some(range("fd00:60::8000:0:0:0", "fd00:60::ffff:ffff:ffff:ff7f"))
        );
        assert_eq!(
            v6("ipv6_autoconfig = \"dhcpv6\"", 120).map(|n| n.ipv6_autoconfig).ok(),
            Some(range("fd00:60::80", "fd00:60::ff"))
        );
        let configured = v6(
            "ipv6_autoconfig = \"dhcpv6\"\n[network.v6.dhcp]\nipv6_range = [\"fd00:60::1000\", \"fd00:60::1fff\"]\nhosts = [{ mac = \"52:54:00:00:60:10\", ip = \"192.168.60.10\", ipv6 = \"fd00:60::10\", name = \"web1\" }]",
            64,
        )
        .expect("a valid network");
        assert_eq!(configured.ipv6_autoconfig, range("fd00:60::1000", "fd00:60::1fff"));
        let host = &configured.dhcp.as_ref().expect("dhcp").hosts[0];
        assert_eq!(host.ipv6, "fd00:60::10".parse().ok());
    }

    #[test]
    fn ipv6_settings_that_cannot_work_are_refused_by_field() {
        let v6 = |extra: &str, ipv6: &str| {
            format!("[network.v6]\nmode = \"nat\"\nbridge = \"v6br0\"\nipv4 = \"192.168.60.1/24\"\n{ipv6}\n{extra}\n")
        };
        let with = |extra: &str| v6(extra, "ipv6 = \"fd00:60::1/64\"");
        assert_error(
            &v6("ipv6_autoconfig = \"slaac\"", "ipv6 = \"fd00:60::1/80\""),
            Some("v6"),
            Some("ipv6_autoconfig"),
            "needs a /64",
        );
        assert_error(
            &v6("ipv6_autoconfig = \"slaac\"", ""),
            Some("v6"),
            Some("ipv6_autoconfig"),
            "needs the network's ipv6",
        );
        assert_error(
            &with("ipv6_autoconfig = \"radvd\""),
            Some("v6"),
            Some("ipv6_autoconfig"),
            "not one of slaac, dhcpv6, off",
        );
        assert_error(
            &with("[network.v6.dhcp]\nipv6_range = [\"fd00:60::10\", \"fd00:60::20\"]"),
            Some("v6"),
            Some("dhcp.ipv6_range"),
            "only with ipv6_autoconfig = \"dhcpv6\"",
        );
        let dhcpv6 = |dhcp: &str| with(&format!("ipv6_autoconfig = \"dhcpv6\"\n[network.v6.dhcp]\n{dhcp}"));
        assert_error(
            &dhcpv6("ipv6_range = [\"fd00:61::10\", \"fd00:61::20\"]"),
            Some("v6"),
            Some("dhcp.ipv6_range"),
            "not a guest's address in fd00:60::/64",
        );
        assert_error(
            &dhcpv6("ipv6_range = [\"fd00:60::20\", \"fd00:60::10\"]"),
            Some("v6"),
            Some("dhcp.ipv6_range"),
            "comes after",
        );
        assert_error(
            &dhcpv6("ipv6_range = [\"fd00:60::0:1\", \"fd00:60::10\"]"),
            Some("v6"),
            Some("dhcp.ipv6_range"),
            "is the bridge's own address",
        );
        assert_error(
            &dhcpv6("ipv6_range = [\"fd00:60::\", \"fd00:60::10\"]"),
            Some("v6"),
            Some("dhcp.ipv6_range"),
            "not a guest's address",
        );
        let host = |ipv6: &str| {
            format!("hosts = [{{ mac = \"52:54:00:00:60:10\", ip = \"192.168.60.10\", ipv6 = \"{ipv6}\" }}]")
        };
        assert_error(
            &with(&format!("[network.v6.dhcp]\n{}", host("fd00:60::1"))),
            Some("v6"),
            Some("dhcp.hosts"),
            "the bridge's own address",
        );
        assert_error(
            &with(&format!("[network.v6.dhcp]\n{}", host("2001:db8::1"))),
            Some("v6"),
            Some("dhcp.hosts"),
            "not a guest's address",
        );
        assert_error(
            &v6(&format!("[network.v6.dhcp]\n{}", host("fd00:60::10")), ""),
            Some("v6"),
            Some("dhcp.hosts"),
            "needs the network's ipv6",
        );
        assert_error(
            "[network.lan]\nmode = \"bridged\"\nbridge = \"br-lan\"\nipv6_autoconfig = \"slaac\"\n",
            Some("lan"),
            Some("ipv6_autoconfig"),
            "needs the network's ipv6",
        );
    }

    #[track_caller]
    fn assert_error(text: &str, network: Option<&str>, field: Option<&str>, reason: &str) {
        match parse_text(text) {
            Err(Error::Config { path, network: n, field: f, reason: r }) => {
                assert!(path.starts_with(PATH), "{path}");
                assert_eq!(n.as_deref(), network, "{r}");
                assert_eq!(f.as_deref(), field, "{r}");
                assert!(r.contains(reason), "{r:?} lacks {reason:?}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn each_error_names_file_network_and_field() {
        let net = |body: &str| format!("[network.n1]\n{body}\n");
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\nbridgee = \"x\""),
            Some("n1"),
            Some("bridgee"),
            "unknown field `bridgee`",
        );
        assert_error("[networks.x]\nmode = \"nat\"", None, None, "unknown field `networks`");
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.300/24\""),
            Some("n1"),
            Some("ipv4"),
            "10.0.0.300",
        );
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1\""),
            Some("n1"),
            Some("ipv4"),
            "no prefix",
        );
        assert_error(&net("mode = \"nat\"\nbridge = \"br0\""), Some("n1"), Some("ipv4"), "needs an IPv4");
        assert_error(
            &net("mode = \"nat\"\nbridge = \"averyveryverylongbr\"\nipv4 = \"10.0.0.1/24\""),
            Some("n1"),
            Some("bridge"),
            "15",
        );
        assert_error(&net("mode = \"natt\"\nbridge = \"br0\""), Some("n1"), Some("mode"), "natt");
        assert_error(
            &net("mode = \"bridged\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\""),
            Some("n1"),
            Some("ipv4"),
            "never changes",
        );
        assert_error(&net("mode = \"isolated\"\nbridge = \"br0\"\nmtu = 20"), Some("n1"), Some("mtu"), "68-65535");
        assert_error(
            &net("mode = \"isolated\"\nbridge = \"br0\"\nipv6 = \"fd00::/64\""),
            Some("n1"),
            Some("ipv6"),
            "subnet's own",
        );
        assert_error(
            "[network.averyveryverylongname]\nmode = \"isolated\"\nbridge = \"br0\"",
            Some("averyveryverylongname"),
            Some("name"),
            "1-15",
        );
        assert_error(
            "[network.a]\nmode = \"isolated\"\nbridge = \"br0\"\n[network.b]\nmode = \"isolated\"\nbridge = \"br0\"",
            Some("b"),
            Some("bridge"),
            "already the bridge of network a",
        );
        assert_error(
            "[network.a]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/16\"\n[network.b]\nmode = \"nat\"\nbridge = \"br1\"\nipv4 = \"10.0.5.1/24\"",
            Some("b"),
            Some("ipv4"),
            "overlaps 10.0.0.0/16 of network a",
        );
    }

    #[test]
    fn ovs_networks_take_ovn_defaults_share_a_bridge_and_refuse_what_is_not_theirs() {
        let config = parse_text(
            "[network.ovn]\nmode = \"ovs\"\nbridge = \"br-int\"\ntaps = [\"ovn-*\"]\n\
             [network.web]\nmode = \"ovs\"\nbridge = \"br-int\"\niface_id = \"vm-{tap}\"\nvlan = 10\novsdb = \"unix:/var/run/ovs/db.sock\"\n",
        )
        .expect("two ovs networks on one bridge");
        let ovn = config.networks[0].ovs.as_ref().expect("ovs settings");
        assert_eq!(
            (ovn.iface_id_of("ovn-1").as_str(), ovn.ovsdb.as_path(), ovn.vlan),
            ("ovn-1", Path::new("/run/openvswitch/db.sock"), None)
        );
        assert!(config.networks[0].dhcp.is_none() && !config.networks[0].mode.is_managed());
        let web = config.networks[1].ovs.as_ref().expect("ovs settings");
        assert_eq!((web.iface_id_of("t"), web.vlan), ("vm-t".to_owned(), Some(10)));
        let net = |body: &str| format!("[network.n1]\n{body}");
        let ovs = |extra: &str| net(&format!("mode = \"ovs\"\nbridge = \"br-int\"\n{extra}"));
        assert_error(
            &net("mode = \"bridged\"\nbridge = \"br0\"\nvlan = 3"),
            Some("n1"),
            Some("vlan"),
            "only an ovs network",
        );
        assert_error(&ovs("vlan = 4096"), Some("n1"), Some("vlan"), "0-4095");
        assert_error(&ovs("ovsdb = \"tcp:127.0.0.1:6640\""), Some("n1"), Some("ovsdb"), "unix:/ABSOLUTE/PATH");
        assert_error(&ovs("iface_id = \"a b\""), Some("n1"), Some("iface_id"), "letters");
        assert_error(&ovs("ipv4 = \"10.0.0.1/24\""), Some("n1"), Some("ipv4"), "never changes");
        assert_error(&ovs("isolate_guests = true"), Some("n1"), Some("isolate_guests"), "OVN");
        assert_error(&ovs("dhcp = { enabled = true }"), Some("n1"), Some("dhcp"), "does not own");
        assert_error(
            "[network.a]\nmode = \"ovs\"\nbridge = \"br0\"\n[network.b]\nmode = \"bridged\"\nbridge = \"br0\"",
            Some("b"),
            Some("bridge"),
            "already the bridge of network a",
        );
    }
}
