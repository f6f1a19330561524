//! Named networks: the system config file, validated whole on every use, or
//! the classic scripts' single network when there is no file.

mod env;
mod file;
mod select;

use std::fmt;
use std::fs::Metadata;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::access::Grants;
use crate::error::Error;
use crate::firewall::Choice;
use crate::ifname::IfName;
use crate::ports::{PortRange, Protocol};

pub use self::env::{Environment, ENV_ADDRESS, ENV_BRIDGE, ENV_CONFIG, ENV_FIREWALL, ENV_NETWORK};
pub use self::select::{choose, choose_by_bridge_argument, Chosen};

/// The system config file; only this one is read by a privileged helper.
pub const SYSTEM_CONFIG: &str = "/etc/kvm-net/kvm-net.toml";
/// The network used when nothing else picks one.
pub const DEFAULT_NETWORK: &str = "default";
/// The bridge name of `/etc/qemu-ifup` and `qemu-natup`.
pub const DEFAULT_BRIDGE: &str = "br0";
/// The bridge address of `qemu-natup`, host part included.
pub const DEFAULT_ADDRESS: &str = "192.168.100.1/24";

/// How a network reaches the world, and so which helpers serve it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Guests reach out through the host's address (masquerade).
    Nat,
    /// Guests reach out with their own addresses; upstream routes the subnet back.
    Routed,
    /// Guests reach each other (and the host, if the bridge has an address); nothing is forwarded.
    Isolated,
    /// A bridge the system owns, usually holding the host's NIC; kvm-net only attaches taps.
    Bridged,
    /// An Open vSwitch bridge (OVN's `br-int`, say) the system owns; kvm-net
    /// only adds and removes taps as its ports, through OVSDB.
    Ovs,
}

impl Mode {
    /// Whether kvm-net creates and removes this network's bridge (kvm-natup/kvm-natdown).
    pub fn is_managed(self) -> bool {
        matches!(self, Mode::Nat | Mode::Routed | Mode::Isolated)
    }

    /// Whether guests' traffic is forwarded past the bridge.
    pub fn forwards(self) -> bool {
        matches!(self, Mode::Nat | Mode::Routed)
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "nat" => Some(Mode::Nat),
            "routed" => Some(Mode::Routed),
            "isolated" => Some(Mode::Isolated),
            "bridged" => Some(Mode::Bridged),
            "ovs" => Some(Mode::Ovs),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Nat => "nat",
            Mode::Routed => "routed",
            Mode::Isolated => "isolated",
            Mode::Bridged => "bridged",
            Mode::Ovs => "ovs",
        })
    }
}

/// One network, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Its name in the config file.
    pub name: String,
    /// How it reaches the world.
    pub mode: Mode,
    /// The bridge its taps are attached to.
    pub bridge: IfName,
    /// The host's IPv4 address on the bridge, with the subnet's prefix.
    pub ipv4: Option<Ipv4Network>,
    /// The host's IPv6 address on the bridge, with the subnet's prefix.
    pub ipv6: Option<Ipv6Network>,
    /// MTU for a bridge kvm-net creates (taps always take the bridge's).
    pub mtu: Option<u32>,
    /// Tap-name patterns that pick this network (`lab-*`).
    pub taps: Vec<glob::Pattern>,
    /// DHCP (and DNS) for guests, served by a dnsmasq of kvm-net's; `None`: off.
    pub dhcp: Option<Dhcp>,
    /// Who besides root may use it through a setuid or capability helper.
    pub grants: Grants,
    /// Which firewall backend writes its rules (the file's `firewall`).
    pub firewall: Choice,
    /// How many taps the bridge helper makes on it for one user other than
    /// root, so that no user can fill the bridge (`max_taps_per_user`).
    pub max_taps_per_user: u32,
    /// Whether its guests may not reach each other (`isolate_guests`): every
    /// port kvm-net attaches is isolated, and routing between them through
    /// the host is dropped.
    pub isolate_guests: bool,
    /// Connections to the host's own addresses forwarded to guests (nat and
    /// routed networks).
    pub forwards: Vec<Forward>,
    /// Whether guests may send as another guest (`guest_spoofing`).
    pub guest_spoofing: Spoofing,
    /// How taps join the network's Open vSwitch bridge (`mode = "ovs"` only).
    pub ovs: Option<OvsPorts>,
}

/// How a network's taps become ports of its Open vSwitch bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsPorts {
    /// The template of each port's `external_ids:iface-id` (`{tap}`: the tap's name).
    pub iface_id: String,
    /// The OVSDB server's Unix socket.
    pub ovsdb: PathBuf,
    /// The port's access VLAN tag, if any.
    pub vlan: Option<u16>,
}

/// `external_ids:iface-id` by default: the tap's name, as libvirt and OVN's
/// own scripts name their ports.
pub const DEFAULT_IFACE_ID: &str = "{tap}";
/// Open vSwitch's database socket where its packages put it.
pub const DEFAULT_OVSDB: &str = "unix:/run/openvswitch/db.sock";

impl OvsPorts {
    /// The iface-id for `tap`.
    pub fn iface_id_of(&self, tap: &str) -> String {
        self.iface_id.replace("{tap}", tap)
    }
}

/// What a guest may send as (`guest_spoofing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spoofing {
    /// Anything, as on a plain bridge (the default).
    #[default]
    Allow,
    /// Only its first MAC, the address DHCP leased it, and no server
    /// replies or router advertisements (see
    /// docs/firewall.md).
    Deny,
}

impl Spoofing {
    /// Reads `allow` or `deny`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Spoofing::Allow),
            "deny" => Some(Spoofing::Deny),
            _ => None,
        }
    }

    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Spoofing::Allow => "allow",
            Spoofing::Deny => "deny",
        }
    }
}

/// A port forward: connections to the host's own addresses (or to one of
/// them) on `host_ports` go to a guest, port for port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Forward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The host's port, or ports.
    pub host_ports: PortRange,
    /// The guest's address.
    pub guest: Ipv4Addr,
    /// The `dhcp.hosts` name it was given by, if any.
    pub guest_name: Option<String>,
    /// The guest's ports, as many as `host_ports`, mapped one to one.
    pub guest_ports: PortRange,
    /// Only connections to this address of the host; `None`: to any of them.
    pub host_address: Option<Ipv4Addr>,
}

impl Forward {
    /// Whether a connection could match both.
    pub fn overlaps(&self, other: &Forward) -> bool {
        let addresses = match (self.host_address, other.host_address) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.protocol == other.protocol && addresses && self.host_ports.overlaps(&other.host_ports)
    }

    /// `tcp 2222`, `udp 10.0.0.5:8000-8010`: what it listens for.
    pub fn listens(&self) -> String {
        match self.host_address {
            Some(address) => format!("{} {address}:{}", self.protocol, self.host_ports),
            None => format!("{} {}", self.protocol, self.host_ports),
        }
    }

    /// `web1 (192.168.100.10):22`, or `192.168.100.10:22`: where it goes.
    pub fn target(&self) -> String {
        match &self.guest_name {
            Some(name) => format!("{name} ({}):{}", self.guest, self.guest_ports),
            None => format!("{}:{}", self.guest, self.guest_ports),
        }
    }
}

/// The default of `max_taps_per_user`: a few VMs with several NICs each,
/// far below the kernel's 1023 ports per bridge.
pub const DEFAULT_MAX_TAPS_PER_USER: u32 = 32;

/// What the network's dnsmasq hands out and answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp {
    /// First and last address leased dynamically.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Lease time as dnsmasq reads it (`1h`, `45m`, `infinite`).
    pub lease_time: String,
    /// Whether dnsmasq also answers DNS on the bridge (and says so in its offers).
    pub dns: bool,
    /// Fixed addresses by MAC.
    pub hosts: Vec<StaticLease>,
    /// Extra names dnsmasq answers for.
    pub records: Vec<HostRecord>,
}

impl Dhcp {
    /// The defaults for a subnet: the upper half leased for an hour, leaving
    /// the lower half to guests with static addresses; DNS on.
    pub fn defaults_for(address: Ipv4Network) -> Self {
        let network = u32::from(address.network());
        let broadcast = u32::from(address.broadcast());
        let half = (broadcast - network).div_ceil(2);
        Dhcp {
            range: (Ipv4Addr::from(network + half.max(2)), Ipv4Addr::from(broadcast - 1)),
            lease_time: "1h".to_owned(),
            dns: true,
            hosts: Vec::new(),
            records: Vec::new(),
        }
    }
}

/// A fixed address for one MAC, as `dhcp-host=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticLease {
    /// The guest NIC's MAC, lower case.
    pub mac: String,
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// Host name handed to the guest and resolvable through the bridge's DNS.
    pub name: Option<String>,
    /// The taps that alone may use this MAC and take this address (`tap`,
    /// a pattern): a reservation, so that no other guest can claim a
    /// forward's target while it is stopped.
    pub tap: Option<glob::Pattern>,
}

/// An extra name in the bridge's DNS, as `host-record=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRecord {
    /// Fully qualified or short name.
    pub name: String,
    /// Its address.
    pub ip: IpAddr,
}

impl Network {
    /// The classic scripts' network: NAT on `br0` with `192.168.100.1/24`.
    pub fn classic() -> Self {
        Network {
            name: DEFAULT_NETWORK.to_owned(),
            mode: Mode::Nat,
            bridge: IfName::builtin(DEFAULT_BRIDGE),
            ipv4: DEFAULT_ADDRESS.parse().ok(),
            ipv6: None,
            mtu: None,
            taps: Vec::new(),
            dhcp: None,
            grants: Grants::default(),
            firewall: Choice::Auto,
            max_taps_per_user: DEFAULT_MAX_TAPS_PER_USER,
            isolate_guests: false,
            forwards: Vec::new(),
            guest_spoofing: Spoofing::Allow,
            ovs: None,
        }
    }

    /// The host's addresses on the bridge, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpNetwork> {
        self.ipv4.map(IpNetwork::V4).into_iter().chain(self.ipv6.map(IpNetwork::V6))
    }

    /// The subnets guests live in, IPv4 first.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> {
        self.subnet4().map(IpNetwork::V4).into_iter().chain(self.subnet6().map(IpNetwork::V6))
    }

    /// The IPv4 subnet guests live in: what firewall rules match.
    pub fn subnet4(&self) -> Option<Ipv4Network> {
        self.ipv4.and_then(|a| Ipv4Network::new(a.network(), a.prefix()).ok())
    }

    /// The IPv6 subnet guests live in.
    pub fn subnet6(&self) -> Option<Ipv6Network> {
        self.ipv6.and_then(|a| Ipv6Network::new(a.network(), a.prefix()).ok())
    }
}

/// Where the networks came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// No config file: the classic single network.
    Builtin,
    /// A config file.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("the built-in default (no config file)"),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Every network the host knows.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file they were read from, if any.
    pub source: Source,
    /// Which firewall backend writes the networks' rules.
    pub firewall: Choice,
    /// The networks, in file order.
    pub networks: Vec<Network>,
}

/// The largest config file kvm-net reads; a few hundred networks fit.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// Reads and validates `path`; a missing file means the classic network.
    /// Only a regular file of at most [`MAX_CONFIG_BYTES`] is read (a FIFO
    /// or a device is refused without blocking). With `trusted_only` (a
    /// helper privileged beyond its caller), the file and its directory must
    /// also be root's and writable by no one else: whoever can write them
    /// grants networks.
    pub fn load(path: &Path, trusted_only: bool) -> Result<Self, Error> {
        let bad =
            |reason: String| Error::Config { path: path.display().to_string(), network: None, field: None, reason };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(file) => file,
            // The classic scripts exactly: no DHCP server appears on br0 just
            // because kvm-net replaced them.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config {
                    source: Source::Builtin,
                    firewall: Choice::Auto,
                    networks: vec![Network::classic()],
                })
            }
            Err(err) => return Err(bad(format!("cannot read it: {err}"))),
        };
        let meta = file.metadata().map_err(|err| bad(format!("cannot read it: {err}")))?;
        if !meta.file_type().is_file() {
            return Err(bad("it is not a regular file".to_owned()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("it is {} bytes, over the limit of {MAX_CONFIG_BYTES}", meta.len())));
        }
        if trusted_only {
            check_trusted(path, &meta).map_err(bad)?;
        }
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|err| bad(format!("cannot read it: {err}")))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(format!("it grew over the limit of {MAX_CONFIG_BYTES} bytes while being read")));
        }
        file::parse(&text, path)
    }

    /// The config with the environment's firewall choice (`KVM_NET_FIREWALL`), if any.
    pub fn with_environment(mut self, env: &Environment) -> Result<Self, Error> {
        if let Some(choice) = env.firewall_choice()? {
            self.firewall = choice;
            for network in &mut self.networks {
                network.firewall = choice;
            }
        }
        Ok(self)
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// The config of a privileged helper must be root's alone: the file, and
/// the directory it is in (whoever can write the directory can replace it).
fn check_trusted(path: &Path, meta: &Metadata) -> Result<(), String> {
    let unsafe_owner = |what: &str, meta: &Metadata| -> Option<String> {
        if meta.uid() != 0 {
            Some(format!("{what} is owned by uid {}, not root", meta.uid()))
        } else if meta.mode() & 0o022 != 0 && !(meta.is_dir() && meta.mode() & libc::S_ISVTX != 0) {
            Some(format!("{what} has mode {:04o}: others may write to it", meta.mode() & 0o7777))
        } else {
            None
        }
    };
    if let Some(reason) = unsafe_owner("the file", meta) {
        return Err(format!("{reason}; a setuid or capability helper reads only a config that root alone can change"));
    }
    let real = std::fs::canonicalize(path).map_err(|err| format!("cannot resolve it: {err}"))?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::metadata(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    match unsafe_owner(&format!("its directory {}", dir.display()), &dir_meta) {
        Some(reason) => {
            Err(format!("{reason}; a setuid or capability helper reads only a config that root alone can change"))
        }
        None => Ok(()),
    }
}
