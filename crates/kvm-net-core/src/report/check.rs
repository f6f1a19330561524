//! `kvm-net check`: what is wrong with the networks kvm-net manages, one
//! finding each, with what the user sees and the fix.

use anyhow::Result;
use serde::Serialize;

use crate::config::model::{Config, Mode, Network, Spoofing};
use crate::error::Error;
use crate::firewall::guests::{FilterState, GuestFilter};
use crate::firewall::{self, firewalld, plan, Backend, Family, Hook, Kind, RuleState};
use crate::kernel::listeners::listeners;
use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::sysctl::{deaf_to_advertisements, read_small};
use crate::services::dnsmasq::Dnsmasq;
use crate::shaping;
use crate::switch::linux::abandoned_bridges;
use crate::switch::{self, Switch};

/// How bad a finding is; the exit status is the worst one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Works now, but will bite (exit status 1).
    Warning,
    /// Guests are or will be cut off (exit status 2).
    Error,
}

/// One problem, with its fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Warning or error.
    pub severity: Severity,
    /// Stable identifier, documented in docs/troubleshooting.md.
    pub code: String,
    /// The network concerned, if one is.
    pub network: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub fix: String,
}

impl Finding {
    fn new(
        severity: Severity,
        code: impl Into<String>,
        network: Option<&Network>,
        message: String,
        fix: String,
    ) -> Self {
        Self { severity, code: code.into(), network: network.map(|n| n.name.clone()), message, fix }
    }
}

/// 0 when clean, 1 with warnings only, 2 with errors.
pub fn exit_code(findings: &[Finding]) -> u8 {
    match findings.iter().map(|f| f.severity).max() {
        None => 0,
        Some(Severity::Warning) => 1,
        Some(Severity::Error) => 2,
    }
}

/// Runs every check; a config that does not load is itself a finding.
pub fn run(config: Result<Config, Error>) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let firewalld_runs = firewalld::running()?;
    let config = match config {
        Ok(config) => Some(config),
        Err(err) => {
            findings.push(Finding {
                severity: Severity::Error,
                code: "config".to_owned(),
                network: None,
                message: err.to_string(),
                fix: err.advice().to_owned(),
            });
            None
        }
    };
    {
        let mut netlink = Netlink::connect()?;
        let links = netlink.all_links()?;
        for link in abandoned_bridges(&links) {
            findings.push(Finding {
                severity: Severity::Warning,
                code: "empty-bridge".to_owned(),
                network: config
                    .as_ref()
                    .and_then(|c| c.networks.iter().find(|n| n.bridge.as_str() == link.name))
                    .map(|n| n.name.clone()),
                message: format!(
                    "bridge {} was made by kvm-net and has no ports left (a VM killed without its downscript?)",
                    link.name
                ),
                fix: "run `kvm-net gc` to remove it with its rules and dnsmasq".to_owned(),
            });
        }
        let mut in_iptables = Vec::new();
        for network in config.iter().flat_map(|c| &c.networks) {
            if check_network(&mut netlink, &links, network, firewalld_runs, &mut findings)? == Some(Backend::Iptables) {
                in_iptables.push(network.name.clone());
            }
        }
        check_iptables_scaling(&in_iptables, &mut findings);
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    Ok(findings)
}

/// A network several users' guests share, whose guests may impersonate
/// each other.
/// Whether more than one user may start guests on the network: two
/// granted users, or any group.
fn shared(network: &Network) -> bool {
    let grants = network.grants.users.len() + network.grants.groups.len();
    grants > 1 || !network.grants.groups.is_empty()
}

fn check_spoofing(network: &Network, findings: &mut Vec<Finding>) {
    if network.mode.is_managed() && network.guest_spoofing == Spoofing::Allow && shared(network) {
        findings.push(Finding::new(
            Severity::Warning,
            "guest-spoofing",
            Some(network),
            format!(
                "network {} is granted to more than one user or group, and its guests may send as each other (guest_spoofing = \"allow\"): one guest can take another's address or MAC, or poison its ARP",
                network.name
            ),
            format!("set guest_spoofing = \"deny\" for network {} (it needs DHCP on the network)", network.name),
        ));
    }
}

/// An autostart network whose bridge is not there: down since boot
/// (kvm-net.service not enabled, or it failed) or taken down by hand.
fn check_autostart(network: &Network, findings: &mut Vec<Finding>) {
    if network.autostart {
        findings.push(Finding::new(
            Severity::Warning,
            "autostart-down",
            Some(network),
            format!("network {} has autostart = true and is down", network.name),
            format!(
                "run `kvm-net up {}`; at boot kvm-net.service brings it up (systemctl enable --now kvm-net.service, and its journal says why it failed)",
                network.name
            ),
        ));
    }
}

/// A forward to a guest that no reservation ties to its taps, on a network
/// several users start guests on: while the forward's guest is stopped,
/// another user's guest can take its MAC and address first, and with them
/// the connections the forward sends.
fn check_reservations(network: &Network, findings: &mut Vec<Finding>) {
    if !shared(network) {
        return;
    }
    let hosts = network.dhcp.as_ref().map_or(&[][..], |d| &d.hosts[..]);
    for forward in &network.forwards {
        let reserved = hosts.iter().any(|h| h.ip == forward.guest && h.tap.is_some());
        if reserved {
            continue;
        }
        let entry = hosts.iter().find(|h| h.ip == forward.guest);
        let fix = match entry {
            Some(host) => format!(
                "add tap = \"PATTERN\" to the dhcp.hosts entry of {} ({}), matching the taps its VM starts on (guest_spoofing = \"deny\" then keeps every other tap from its MAC and address)",
                host.name.as_deref().unwrap_or("that guest"),
                host.mac
            ),
            None => format!(
                "give the forward's guest a dhcp.hosts entry with its MAC, ip = \"{}\" and tap = \"PATTERN\" (its VM's taps)",
                forward.guest
            ),
        };
        findings.push(Finding::new(
            Severity::Warning,
            "forward-unreserved",
            Some(network),
            format!(
                "forward {} of network {} goes to {}, which no reservation ties to its taps, and the network is granted to more than one user or group: another user's guest can take that address while it is stopped, and receive the forward's connections",
                forward.listens(),
                network.name,
                forward.target()
            ),
            fix,
        ));
    }
}

/// Checks one network; for a managed network that is up, says which
/// backend holds its rules.
fn check_network(
    netlink: &mut Netlink,
    links: &[Link],
    network: &Network,
    firewalld_runs: bool,
    findings: &mut Vec<Finding>,
) -> Result<Option<Backend>> {
    let name = &network.name;
    let bridge = network.bridge.as_str();
    check_spoofing(network, findings);
    check_reservations(network, findings);
    if switch::database_of(network).is_some() {
        return check_switch(netlink, links, network, findings).map(|()| None);
    }
    let link = links.iter().find(|l| l.name == bridge);
    if let Some(link) = link.filter(|l| !l.is_bridge()) {
        findings.push(Finding::new(
            Severity::Error,
            "not-a-bridge",
            Some(network),
            format!(
                "{bridge}, the bridge of network {name}, is a {} link, not a bridge: no VM can start on it",
                link.kind.as_deref().unwrap_or("device")
            ),
            format!("rename or delete that link (ip link del {bridge}), or give network {name} another bridge"),
        ));
        return Ok(None);
    }
    if network.mode.is_managed() {
        for subnet in network.subnets() {
            let users = netlink.subnet_users(subnet, link.map(|l| l.index))?;
            if !users.is_empty() {
                findings.push(Finding::new(
                    Severity::Error,
                    "subnet-collision",
                    Some(network),
                    format!("subnet {subnet} of network {name} is in use by {}", users.join(", ")),
                    format!("give network {name} another subnet, or remove the other user"),
                ));
            }
        }
    }
    let Some(link) = link else {
        check_autostart(network, findings);
        return Ok(None);
    };
    // A bridge its VMs left behind is one finding (empty-bridge), whose fix
    // removes it; its rules and dnsmasq are not worth reporting as well.
    if abandoned_bridges(links).any(|abandoned| abandoned.index == link.index) {
        return Ok(None);
    }
    check_limits(netlink, network, link, findings)?;
    match network.mode {
        Mode::Bridged => {
            if read_small("/proc/sys/net/bridge/bridge-nf-call-iptables").ok().as_deref() == Some("1") {
                findings.push(Finding::new(
                    Severity::Warning,
                    "br-netfilter",
                    Some(network),
                    format!("net.bridge.bridge-nf-call-iptables=1: frames bridged on {bridge} go through iptables FORWARD, where a DROP policy or rule (Docker's) cuts the guests off"),
                    "sysctl -w net.bridge.bridge-nf-call-iptables=0 (and set it in /etc/sysctl.d), or accept the bridge's traffic in FORWARD (iptables -I FORWARD -m physdev --physdev-is-bridged -j ACCEPT)".to_owned(),
                ));
            }
        }
        _ => {
            if firewalld_runs {
                check_firewalld_zone(network, findings)?;
            }
            return check_managed(network, firewalld_runs, findings).map(Some);
        }
    }
    Ok(None)
}

/// Each guest port of a network with limits has exactly the limits the
/// config asks for it.
fn check_limits(netlink: &mut Netlink, network: &Network, bridge: &Link, findings: &mut Vec<Finding>) -> Result<()> {
    if !shaping::is_asked_for(network) {
        return Ok(());
    }
    let name = &network.name;
    for port in netlink.ports_of(bridge)?.iter().filter(|port| shaping::is_guest_port(network, port)) {
        let wanted = network.limits_for(&port.name);
        let found = shaping::in_force(netlink, port)?;
        if found == wanted {
            continue;
        }
        let code = if found.is_limited() { "limits-differ" } else { "limits-missing" };
        findings.push(Finding::new(
            Severity::Error,
            code,
            Some(network),
            format!(
                "port {} of network {name} has {}, and the config asks for {}: its guest is not held to its limits",
                port.name,
                if found.is_limited() { found.to_string() } else { "no limits".to_owned() },
                wanted
            ),
            format!("run `kvm-net repair {name}`"),
        ));
    }
    Ok(())
}

/// A switch beside the kernel (an ovs network's): reachable, with its
/// bridge, no port of kvm-net's whose tap is gone (or is another tap of its
/// name) or that the switch could not open, and no tap kvm-net attached
/// (its mark says so) that is no longer a port. Codes start with the
/// switch's kind.
fn check_switch(netlink: &mut Netlink, links: &[Link], network: &Network, findings: &mut Vec<Finding>) -> Result<()> {
    let name = &network.name;
    let mut switch = match switch::open(network, netlink, None) {
        Ok(switch) => switch,
        Err(err) => {
            let (code, fix) = match err.downcast_ref::<Error>() {
                Some(Error::OvsNoBridge(_)) => (
                    "ovs-no-bridge",
                    format!("create it (ovs-vsctl add-br {}; ovn-controller makes br-int itself), or give network {name} another bridge", network.bridge),
                ),
                _ => (
                    "ovs-unreachable",
                    format!("start Open vSwitch (ovsdb-server and ovs-vswitchd), or set ovsdb of network {name} to its socket"),
                ),
            };
            findings.push(Finding::new(
                Severity::Error,
                code,
                Some(network),
                format!("network {name}: {err:#}: no VM can join it"),
                fix,
            ));
            return Ok(());
        }
    };
    findings.extend(switch_findings(&mut *switch, netlink, links, network)?);
    Ok(())
}

/// What is wrong with an open switch's ports, whatever its kind.
fn switch_findings(
    switch: &mut dyn Switch,
    netlink: &mut Netlink,
    links: &[Link],
    network: &Network,
) -> Result<Vec<Finding>> {
    let (name, described) = (&network.name, switch.describe());
    let mut findings = Vec::new();
    let kind = switch.kind();
    let stale = switch.stale_ports(netlink)?;
    for port in &stale {
        findings.push(Finding::new(
            Severity::Warning,
            format!("{kind}-stale-port"),
            Some(network),
            format!(
                "port {port} of {described} was added by kvm-net and its tap is gone, or is another tap of that name (a VM killed without its downscript and no watcher left, a reboot?): the switch takes any tap of that name into the network"
            ),
            "run `kvm-net gc` to remove it".to_owned(),
        ));
    }
    for port in switch.port_reports(netlink)?.into_iter().filter(|p| !stale.contains(&p.name)) {
        let Some(problem) = port.problem else { continue };
        findings.push(Finding::new(
            Severity::Error,
            format!("{kind}-port-error"),
            Some(network),
            format!("{described} could not use its port {}: {problem}", port.name),
            format!(
                "see the switch's log (ovs-vswitchd's), then restart the VM's network (kvm-ifdown {0}; kvm-ifup {0})",
                port.name
            ),
        ));
    }
    for tap in switch.lost_taps(netlink, links)? {
        findings.push(Finding::new(
            Severity::Error,
            format!("{kind}-port-missing"),
            Some(network),
            format!("tap {tap} of network {name} is no longer a port of {described} (removed by someone else?): its VM is cut off"),
            format!("add it again: kvm-ifup {tap} (as root, with KVM_NET_NETWORK={name} if its name matches no taps pattern)"),
        ));
    }
    Ok(findings)
}

/// From how many networks in iptables on: every forwarded packet walks
/// the networks' jumps one by one there.
const IPTABLES_SCALING: usize = 10;

/// Many networks whose rules are in iptables: each forwarded packet is
/// compared with every one of them (nftables finds its network in one
/// lookup), which `make bench` measures.
fn check_iptables_scaling(networks: &[String], findings: &mut Vec<Finding>) {
    if networks.len() < IPTABLES_SCALING {
        return;
    }
    findings.push(Finding {
        severity: Severity::Warning,
        code: "iptables-scaling".to_owned(),
        network: None,
        message: format!(
            "{} networks are up with their rules in iptables, which compares every forwarded packet with each network's rules in turn: with 100 networks alive, make bench measured as little as 0.4x the plain kernel's rate of small packets and 0.6x its new connections per second (docs/performance.md); nftables finds a packet's network in one lookup, within noise of the plain kernel",
            networks.len()
        ),
        fix: "set firewall = \"nftables\" (or \"auto\", where iptables' legacy tables are not in use) in the config file: each network's rules move to nftables at its next VM start or `kvm-net repair NETWORK`".to_owned(),
    });
}

/// firewalld rejects what comes from an interface in no zone: the guests'
/// forwarded traffic, DHCP and DNS.
fn check_firewalld_zone(network: &Network, findings: &mut Vec<Finding>) -> Result<()> {
    let (name, bridge) = (&network.name, &network.bridge);
    if firewalld::zone_of(bridge)?.is_none() {
        findings.push(Finding::new(
            Severity::Error,
            "firewalld-zone",
            Some(network),
            format!("firewalld runs, and bridge {bridge} of network {name} is in none of its zones: firewalld rejects the guests' forwarded traffic, DHCP and DNS"),
            format!("run `kvm-net repair {name}`: kvm-net puts its bridges in firewalld's {} zone, at runtime and permanently", firewalld::ZONE),
        ));
    }
    Ok(())
}

fn check_managed(network: &Network, firewalld_runs: bool, findings: &mut Vec<Finding>) -> Result<Backend> {
    let name = &network.name;
    let bridge = &network.bridge;
    let (backend, chains) = firewall::state(&plan(network), network.firewall)?;
    if firewalld_runs && backend == Backend::Iptables {
        findings.push(Finding::new(
            Severity::Warning,
            "firewalld-reload",
            Some(network),
            format!("network {name}'s rules are in iptables, which every firewalld reload flushes: its guests lose their way out at each reload until a VM start or `kvm-net repair {name}`"),
            "use the nftables backend (firewall = \"auto\" or \"nftables\" in the config), whose tables firewalld leaves alone".to_owned(),
        ));
    }
    let mut broken: Vec<String> = chains
        .into_iter()
        .filter(|c| c.state != RuleState::Ok)
        .map(|c| format!("{} ({})", c.shown, c.state.as_str()))
        .collect();
    match GuestFilter::of(network).state()? {
        Some(FilterState::Differs) => broken.push(format!("bridge kvm_net spoof-{bridge} (differs)")),
        Some(FilterState::Missing) => broken.push(format!("bridge kvm_net spoof-{bridge} (missing)")),
        Some(FilterState::Whole) | None => {}
    }
    if !broken.is_empty() {
        findings.push(Finding::new(
            Severity::Error,
            "rules-missing",
            Some(network),
            format!(
                "network {name} is up on {bridge}, but its firewall rules are not as kvm-net set them: {}",
                broken.join(", ")
            ),
            format!("run `kvm-net repair {name}` (or start any VM on it): kvm-net restores exactly its own rules"),
        ));
    }
    if network.mode.forwards() {
        check_forwarding(network, backend, findings)?;
    }
    if network.dhcp.is_some() {
        check_iptables_drops(network, Family::V4, Kind::Input, backend, findings)?;
        check_foreign_drops(network, Family::V4, Hook::Input, findings)?;
    }
    check_forwards(network, findings)?;
    if network.dhcp.is_some() && Dnsmasq::for_bridge(bridge)?.running_pid().is_none() {
        findings.push(Finding::new(
            Severity::Error,
            "dnsmasq-down",
            Some(network),
            format!(
                "network {name} has DHCP on, but no dnsmasq of kvm-net's serves {bridge}: new guests get no address"
            ),
            format!(
                "run `kvm-net repair {name}` (or start any VM on it) to start it; see its log in {}/dnsmasq/",
                crate::security::rundir::RUN_DIR
            ),
        ));
    }
    Ok(backend)
}

/// Port forwards that go nowhere (no guest holds the address: where DHCP
/// serves the network, its leases say), and forwards that take connections
/// away from a local process listening on the same port.
fn check_forwards(network: &Network, findings: &mut Vec<Finding>) -> Result<()> {
    let name = &network.name;
    let leases = match &network.dhcp {
        Some(_) => Some(Dnsmasq::for_bridge(&network.bridge)?.leases()?),
        None => None,
    };
    let listening = if network.forwards.is_empty() { Vec::new() } else { listeners() };
    for forward in &network.forwards {
        let (listens, target) = (forward.listens(), forward.target());
        if leases.as_ref().is_some_and(|leases| !leases.iter().any(|lease| lease.ip == forward.guest)) {
            let fixed = network
                .dhcp
                .iter()
                .flat_map(|d| &d.hosts)
                .find(|h| h.ip == forward.guest)
                .map_or(String::new(), |h| format!(" (its MAC must be {} for that fixed address)", h.mac));
            findings.push(Finding::new(
                Severity::Warning,
                "forward-no-lease",
                Some(network),
                format!("forward {listens} of network {name} goes to {target}, which no guest holds a lease for: its connections go unanswered"),
                format!("start that guest{fixed}, or give it {} by hand", forward.guest),
            ));
        }
        for listener in
            listening.iter().filter(|l| l.protocol == forward.protocol && forward.host_ports.contains(l.port))
        {
            let shadowed = match (listener.address, forward.host_address) {
                (address, _) if address.is_unspecified() => true,
                (std::net::IpAddr::V4(address), Some(host)) => address == host,
                (address, None) => !address.is_loopback(),
                _ => false,
            };
            if !shadowed {
                continue;
            }
            let at = match listener.address {
                std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", listener.port),
                v4 => format!("{v4}:{}", listener.port),
            };
            findings.push(Finding::new(
                Severity::Warning,
                "forward-port-in-use",
                Some(network),
                format!("forward {listens} of network {name} goes to {target}, and a local process listens on {} {at} too: connections to the host on that port reach the guest, never that process", forward.protocol),
                "move the forward (host_port, or host_address) or the local service to another port".to_owned(),
            ));
        }
    }
    Ok(())
}

/// A nat or routed network that is up: forwarding on in each of its
/// families, and nothing dropping what its rules accept.
fn check_forwarding(network: &Network, backend: Backend, findings: &mut Vec<Finding>) -> Result<()> {
    let name = &network.name;
    for (family, subnet, sysctl) in [
        (Family::V4, network.ipv4.is_some(), "/proc/sys/net/ipv4/ip_forward"),
        (Family::V6, network.ipv6.is_some(), "/proc/sys/net/ipv6/conf/all/forwarding"),
    ] {
        if !subnet {
            continue;
        }
        if read_small(sysctl).ok().as_deref() == Some("0") {
            let key = sysctl.trim_start_matches("/proc/sys/").replace('/', ".");
            findings.push(Finding::new(
                Severity::Error,
                "forwarding-off",
                Some(network),
                format!(
                    "{key}=0 while {} network {name} is up: guests reach the host but nothing beyond",
                    network.mode
                ),
                format!("run `kvm-net repair {name}`, or sysctl -w {key}=1"),
            ));
        }
        if family == Family::V6 {
            check_deaf_uplinks(network, findings)?;
        }
        check_iptables_drops(network, family, Kind::Forward, backend, findings)?;
        check_foreign_drops(network, family, Hook::Forward, findings)?;
    }
    Ok(())
}

/// Interfaces that ignore router advertisements now that IPv6 forwarding
/// is on (accept_ra=1) but hold an address or route one gave them: the
/// host loses it when it expires.
fn check_deaf_uplinks(network: &Network, findings: &mut Vec<Finding>) -> Result<()> {
    for uplink in deaf_to_advertisements()? {
        findings.push(Finding::new(
            Severity::Warning,
            "uplink-ignores-ra",
            Some(network),
            format!("{uplink} has accept_ra=1 with IPv6 forwarding on: it ignores router advertisements, and loses the address or route it learned from them when it expires"),
            format!("sysctl -w net.ipv6.conf.{uplink}.accept_ra=2 (and in /etc/sysctl.d, to keep it)"),
        ));
    }
    Ok(())
}

/// What guests lose when `kind` is blocked, and the finding's code.
fn blocked_what(kind: Kind) -> (&'static str, &'static str, &'static str) {
    match kind {
        Kind::Input => ("input-drop", "cannot get DHCP or DNS from the host", "reaching the host"),
        _ => ("forward-drop", "cannot get out", "forwarded traffic"),
    }
}

/// A DROP or REJECT of iptables' `filter` table ahead of kvm-net's accepts
/// (or with none there to pass it).
fn check_iptables_drops(
    network: &Network,
    family: Family,
    kind: Kind,
    backend: Backend,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let name = &network.name;
    let Some(drops) = firewall::drops_ahead(family, kind, backend, &network.bridge)? else { return Ok(()) };
    if drops.rules.is_empty() && (drops.jump_present || !drops.blocked) {
        return Ok(());
    }
    let (code, lose, traffic) = blocked_what(kind);
    let hook = drops.hook;
    let why = match (drops.jump_present, drops.rules.first(), drops.why) {
        (true, Some(rule), _) => format!("`{rule}` comes before kvm-net's accepts"),
        (false, Some(rule), None) if !drops.blocked => {
            format!("`{rule}` drops {traffic} and kvm-net's accepts are missing")
        }
        (_, _, Some(why)) => {
            format!("iptables drops {traffic} here ({why}) and kvm-net's accepts in {hook} are missing")
        }
        _ => format!("{hook}'s policy is DROP and kvm-net's accepts are missing"),
    };
    findings.push(Finding::new(
        Severity::Error,
        code,
        Some(network),
        format!("guests of network {name} {lose}: {why}"),
        format!(
            "run `kvm-net repair {name}` to put kvm-net's jump back at the top of {hook}, or move that rule after it"
        ),
    ));
    Ok(())
}

/// Drops in another nftables table that no accept of kvm-net's can pass:
/// named, with the rules that let the network's traffic through.
fn check_foreign_drops(network: &Network, family: Family, hook: Hook, findings: &mut Vec<Finding>) -> Result<()> {
    let (name, bridge) = (&network.name, &network.bridge);
    for drop in firewall::foreign_drops(family, hook, bridge)? {
        let (what, accepts) = match hook {
            Hook::Input => (
                "guests' DHCP and DNS to the host",
                vec![
                    format!("iifname {bridge} udp dport {{ 53, 67 }} accept"),
                    format!("iifname {bridge} tcp dport 53 accept"),
                ],
            ),
            Hook::Forward if network.mode == Mode::Routed => (
                "guests' forwarded traffic",
                vec![format!("iifname {bridge} accept"), format!("oifname {bridge} accept")],
            ),
            Hook::Forward => (
                "guests' forwarded traffic",
                vec![
                    format!("iifname {bridge} accept"),
                    format!("oifname {bridge} ct state established,related accept"),
                ],
            ),
        };
        let (table, chain) = (format!("{} {}", drop.family, drop.table), &drop.chain);
        let how = if drop.policy_drop { "its policy is drop" } else { "a rule of it drops or rejects" };
        let fix: Vec<String> = accepts.iter().map(|rule| format!("nft insert rule {table} {chain} {rule}")).collect();
        let finding = Finding::new(
            if drop.policy_drop { Severity::Error } else { Severity::Warning },
            "foreign-drop",
            Some(network),
            format!(
                "table {table}, chain {chain} ({} hook) can drop network {name}'s {what} ({how}), and an accept in kvm-net's own table cannot undo a drop in another table",
                drop.hook.as_str()
            ),
            format!("accept the bridge's traffic in that chain: {}", fix.join("; ")),
        );
        // An inet table carries both families: one finding.
        if !findings.contains(&finding) {
            findings.push(finding);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::{Departures, PortReport, Tap};

    /// A switch of a kind of its own, whose ports are what the test says.
    struct Fake {
        stale: Vec<String>,
        reports: Vec<PortReport>,
        lost: Vec<String>,
    }

    impl Switch for Fake {
        fn describe(&self) -> String {
            "fake switch sw0".to_owned()
        }
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn attach(&mut self, _: &mut Netlink, _: &Link, _: Tap) -> Result<()> {
            Ok(())
        }
        fn detach(&mut self, _: &mut Netlink, _: &Link) -> Result<()> {
            Ok(())
        }
        fn ports(&mut self, _: &mut Netlink) -> Result<Vec<Link>> {
            Ok(Vec::new())
        }
        fn stale_ports(&mut self, _: &mut Netlink) -> Result<Vec<String>> {
            Ok(self.stale.clone())
        }
        fn departures(&mut self, _: &mut Netlink) -> Result<Departures> {
            Ok(Departures::Taps { names: Vec::new(), alias: String::new() })
        }
        fn port_reports(&mut self, _: &mut Netlink) -> Result<Vec<PortReport>> {
            Ok(self.reports.clone())
        }
        fn lost_taps(&mut self, _: &mut Netlink, _: &[Link]) -> Result<Vec<String>> {
            Ok(self.lost.clone())
        }
    }

    #[test]
    fn a_switch_of_any_kind_gets_findings_through_the_seam_alone() {
        let mut fake = Fake {
            stale: vec!["t-stale".to_owned()],
            reports: vec![
                PortReport { name: "t-stale".to_owned(), problem: Some("gone".to_owned()), ..PortReport::default() },
                PortReport {
                    name: "t-bad".to_owned(),
                    problem: Some("no port number".to_owned()),
                    ..PortReport::default()
                },
                PortReport { name: "t-good".to_owned(), ..PortReport::default() },
            ],
            lost: vec!["t-lost".to_owned()],
        };
        let mut netlink = Netlink::connect().expect("a netlink socket");
        let network = Network { name: "lab".to_owned(), ..Network::classic() };
        let findings = switch_findings(&mut fake, &mut netlink, &[], &network).expect("findings");
        let codes: Vec<(&str, &str)> = findings.iter().map(|f| (f.code.as_str(), f.message.as_str())).collect();
        assert_eq!(codes.len(), 3, "{codes:?}");
        assert!(codes[0].0 == "fake-stale-port" && codes[0].1.contains("port t-stale of fake switch sw0"));
        assert!(codes[1].0 == "fake-port-error" && codes[1].1.contains("t-bad: no port number"));
        assert!(codes[2].0 == "fake-port-missing" && codes[2].1.contains("tap t-lost of network lab"));
    }
}
