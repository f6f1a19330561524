//! Failures a user can act on, each with the advice the helpers print after it.

use crate::ifname::IfNameError;

/// Why a managed network needs root.
pub const NEEDS_ROOT_MANAGED: &str = "a managed network needs root (iptables, dnsmasq, /run/kvm-net)";
/// Why an Open vSwitch port needs root.
pub const NEEDS_ROOT_OVS: &str = "an Open vSwitch port needs root (the OVSDB socket and /run/kvm-net are root's)";

/// A failure whose cause is known well enough to tell the user what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line does not follow QEMU's contract (`HELPER IFNAME`).
    #[error("{0}")]
    Usage(String),
    /// The bridge helper's command line does not follow QEMU's protocol
    /// (`HELPER [--use-vnet] --fd=N --br=NAME`).
    #[error("{0}")]
    HelperUsage(String),
    /// The interface name QEMU passed cannot be a kernel interface name.
    #[error("bad interface name")]
    BadInterfaceName(#[source] IfNameError),
    /// A setting from the environment does not parse.
    #[error("{key}={value:?} is invalid: {reason}")]
    BadSetting { key: &'static str, value: String, reason: String },
    /// The tap QEMU named is not there (QEMU creates it before running the script).
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    /// kvm-ifup needs a bridge that the system set up.
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    /// The bridge's name is taken by a link of another kind.
    #[error("{name} is a {kind} link, not a bridge")]
    NotABridge { name: String, kind: String },
    /// The config file cannot be read or does not validate.
    #[error("config {path}{}{}: {reason}", network.as_ref().map(|n| format!(": network {n}")).unwrap_or_default(), field.as_ref().map(|f| format!(": field {f}")).unwrap_or_default())]
    Config { path: String, network: Option<String>, field: Option<String>, reason: String },
    /// The network chosen for a tap is not in the config.
    #[error("no network named {name} in {origin} ({how})")]
    UnknownNetwork { name: String, how: String, origin: String },
    /// A managed network given to kvm-ifup, or a bridged one to kvm-natup.
    #[error("network {network} is {mode}, which {helpers} do not serve")]
    WrongHelper { network: String, mode: crate::config::model::Mode, helpers: &'static str },
    /// A new managed network's subnet is already on another interface.
    #[error("subnet {subnet} of network {network} is in use by {user}")]
    SubnetInUse { subnet: String, network: String, user: String },
    /// A setuid-root helper could not take root's real IDs for the commands it runs.
    #[error("cannot switch to root's real user and group IDs: {0}")]
    DropCallerIds(#[source] nix::errno::Errno),
    /// DHCP is on for a network, and dnsmasq is not installed.
    #[error("network {0} has DHCP on, and dnsmasq is not installed")]
    MissingDnsmasq(String),
    /// A command kvm-net runs is not installed.
    #[error("the {0} command is not installed")]
    MissingTool(&'static str),
    /// The tap itself is a bridge or is the bridge.
    #[error("{0} is a bridge, not a VM's tap")]
    TapIsBridge(String),
    /// A caller who is not root has no grant for the network.
    #[error("user {user} may not use network {network} (chosen by {how})")]
    NotGranted { user: String, network: String, how: String },
    /// A caller who is not root named a link that is not its own tun/tap device.
    #[error("user {user} may not use {tap}: {why}")]
    NotYourTap { tap: String, user: String, why: String },
    /// A helper with file capabilities was asked for a job that needs root.
    #[error("{helper} runs with file capabilities, but {job}")]
    NeedsRoot {
        /// The helper.
        helper: &'static str,
        /// What needs root, and why ([`NEEDS_ROOT_MANAGED`], [`NEEDS_ROOT_OVS`]).
        job: &'static str,
    },
    /// A directory or file under /run/kvm-net (or the config) is not root's alone.
    #[error("{path} is unsafe to use: {why}")]
    UnsafePath { path: String, why: String },
    /// Another kvm-net run held the bridge's lock for too long.
    #[error("another kvm-net run has held the lock of bridge {bridge} for {seconds} s")]
    LockTimeout { bridge: String, seconds: u64 },
    /// Open vSwitch's database server cannot be reached, or does not answer.
    #[error("Open vSwitch's database at {socket} cannot be used: {why}")]
    OvsUnreachable { socket: String, why: String },
    /// The network's Open vSwitch bridge does not exist.
    #[error("Open vSwitch has no bridge {0}")]
    OvsNoBridge(String),
    /// ovs-vswitchd did not apply a change to the database.
    #[error("ovs-vswitchd did not apply {what} within {seconds} s (is it running?)")]
    OvsNotApplied { what: String, seconds: u64 },
    /// A resource limit the caller lowered is below what the job needs, and
    /// cannot be raised again (no CAP_SYS_RESOURCE).
    #[error("the hard limit {limit} is {value}; kvm-net needs {needs} to bring a network up")]
    LimitTooLow { limit: &'static str, value: String, needs: String },
    /// The bridge has as many ports as the kernel allows.
    #[error("bridge {bridge} has {ports} ports, the kernel's limit")]
    BridgeFull { bridge: String, ports: usize },
    /// A caller of the bridge helper has as many taps on the network as the config allows.
    #[error("user {user} already has {max} taps on network {network} (max_taps_per_user)")]
    TooManyTaps { user: String, network: String, max: u32 },
    /// Rules of someone else's still jump into a chain of kvm-net's.
    #[error("kvm-net's chains could not be deleted: {0}")]
    ChainInUse(String),
}

impl Error {
    /// Refuses `network` to helpers that do not serve its mode.
    pub fn wrong_helper(network: &crate::config::model::Network, helpers: &'static str) -> anyhow::Error {
        anyhow::Error::new(Error::WrongHelper { network: network.name.clone(), mode: network.mode, helpers })
            .context(format!("choosing network {}", network.name))
    }

    /// What the user should do next, printed after the cause.
    pub fn advice(&self) -> &'static str {
        match self {
            Error::Usage(_) => "QEMU runs this helper as `HELPER IFNAME`; see --help",
            Error::HelperUsage(_) => {
                "QEMU runs this helper as `HELPER [--use-vnet] --fd=N --br=NETWORK` with a Unix socket as descriptor N (-netdev bridge,br=NETWORK,helper=...); see --help"
            }
            Error::BadInterfaceName(_) => "pass the tap's name as QEMU does (-netdev tap,ifname=NAME,script=...)",
            Error::BadSetting { .. } => "fix or unset the variable in the environment QEMU is started from",
            Error::NoSuchInterface(_) => "create the tap first (QEMU does this itself before running the script)",
            Error::NoBridge(_) => {
                "create the bridge first (ip link add br0 type bridge), set KVM_NET_BRIDGE to an existing one, or use kvm-natup for a NAT network"
            }
            Error::NotABridge { .. } => "rename or delete that link, or set KVM_NET_BRIDGE to another bridge name",
            Error::Config { .. } => "fix the file (see kvm-net.toml(5) and docs/configuration.md); nothing was changed",
            Error::UnknownNetwork { .. } => "add the network to the config file, or pick one that is there",
            Error::WrongHelper { mode, .. } if mode.is_managed() => {
                "use script=kvm-natup,downscript=kvm-natdown for nat, routed and isolated networks"
            }
            Error::WrongHelper { .. } => "use script=kvm-ifup,downscript=kvm-ifdown for bridged and ovs networks",
            Error::SubnetInUse { .. } => "pick another subnet for this network in the config file, or remove the other user",
            Error::DropCallerIds(_) => "install the helper owned by root with mode 4755, or run QEMU as root",
            Error::MissingDnsmasq(_) => {
                "install it (Debian and Ubuntu: apt-get install dnsmasq-base; Fedora: dnf install dnsmasq), or set dhcp = { enabled = false } for the network"
            }
            Error::MissingTool(_) => "install it (Debian and Ubuntu: apt-get install iptables; Fedora: dnf install iptables-nft)",
            Error::TapIsBridge(_) => "pass the VM's tap interface, not the bridge",
            Error::NotGranted { .. } => {
                "ask the administrator to add you to allow_users or allow_groups of that network in /etc/kvm-net/kvm-net.toml (see docs/security.md); nothing was changed"
            }
            Error::NotYourTap { .. } => {
                "use a tap you own (ip tuntap add dev TAP mode tap user YOU, then -netdev tap,ifname=TAP,...); nothing was changed"
            }
            Error::NeedsRoot { .. } => {
                "install the helpers setuid root (see docs/security.md), or run QEMU as root; nothing was changed"
            }
            Error::UnsafePath { .. } => {
                "remove it as root (rm -rf it: /run is emptied at boot anyway) and start again; kvm-net recreates it owned by root"
            }
            Error::LockTimeout { .. } => {
                "see which kvm-net process is stuck (ps -C kvm-natup,kvm-natdown,kvm-net) and stop it, then try again"
            }
            Error::ChainInUse(_) => "delete those rules, then run `kvm-net gc` to remove what is left",
            Error::BridgeFull { .. } => {
                "stop a VM on it, or put the next VMs on another network (a second bridge); nothing was changed"
            }
            Error::TooManyTaps { .. } => {
                "stop one of your VMs first, or ask the administrator to raise max_taps_per_user for the network in /etc/kvm-net/kvm-net.toml; nothing was changed"
            }
            Error::OvsUnreachable { .. } => {
                "start Open vSwitch (Debian: service openvswitch-switch start), or set ovsdb = \"unix:PATH\" for the network to its database socket; nothing was changed"
            }
            Error::OvsNoBridge(_) => {
                "create it (ovs-vsctl add-br BRIDGE; ovn-controller makes br-int itself), or give the network the bridge that exists; nothing was changed"
            }
            Error::OvsNotApplied { .. } => {
                "start ovs-vswitchd (Debian: service openvswitch-switch start) and try again (a port being added was taken out of the database again)"
            }
            Error::LimitTooLow { .. } => {
                "start QEMU without lowering that limit (once lowered, a hard limit cannot be raised without CAP_SYS_RESOURCE); nothing was changed"
            }
        }
    }

    /// Exit status: 2 for a wrong invocation, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::HelperUsage(_) | Error::BadInterfaceName(_) => 2,
            _ => 1,
        }
    }
}
