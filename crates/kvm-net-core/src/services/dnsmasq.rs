//! One dnsmasq per managed network with DHCP, started hermetic (its own
//! generated config file and nothing else, bound to the bridge only), and
//! recognised by its command line so that kvm-net never stops a dnsmasq it
//! did not start.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::model::{Autoconfig, Mode, Network};
use crate::ifname::IfName;
use crate::kernel::netns::{all_processes, bridge_tag};
use crate::security::privilege;
use crate::security::rundir::{Area, SafeDir};
use crate::services::names;
use crate::trace::trace;

/// How long a dnsmasq gets to exit after SIGTERM before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The dnsmasq binary on PATH, if any.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("dnsmasq")).find(|candidate| candidate.is_file())
}

/// The dnsmasq of one bridge: the name of its directory under
/// `/run/kvm-net/dnsmasq`, which holds its config, pidfile, leases and log.
#[derive(Clone)]
pub struct Dnsmasq {
    tag: String,
}

impl Dnsmasq {
    /// The dnsmasq serving `bridge` in this network namespace.
    pub fn for_bridge(bridge: &IfName) -> Result<Self> {
        Ok(Self { tag: bridge_tag(bridge)? })
    }

    /// Its directory, as dnsmasq is told it.
    fn dir_path(&self) -> PathBuf {
        Path::new(crate::security::rundir::RUN_DIR).join(Area::Dnsmasq.name()).join(&self.tag)
    }

    /// Its directory, if it exists (verified).
    fn existing_dir(&self) -> Result<Option<SafeDir>> {
        match SafeDir::existing(Area::Dnsmasq)? {
            Some(area) => area.existing_subdir(&self.tag, 0o755),
            None => Ok(None),
        }
    }

    /// The `--conf-file=` argument that marks a dnsmasq as this one.
    fn conf_arg(&self) -> String {
        format!("--conf-file={}", self.dir_path().join("dnsmasq.conf").display())
    }

    /// Whether `pid` is a dnsmasq started with this bridge's config file
    /// (a zombie has no command line, and so is not).
    fn is_ours(&self, pid: u32) -> bool {
        let conf_arg = self.conf_arg();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        comm.trim() == "dnsmasq" && cmdline.split(|b| *b == 0).any(|arg| arg == conf_arg.as_bytes())
    }

    /// The PID of this bridge's dnsmasq: the one its pidfile names if that is
    /// ours, else any dnsmasq started with this bridge's config file, whose
    /// path names this network namespace (the pidfile may have been lost).
    /// Whoever started it: dnsmasq started by root gives its pidfile to its
    /// own user, and a setuid helper may not look into that user's
    /// processes' namespaces. Without its directory there is none: kvm-net
    /// creates it before starting the dnsmasq and removes it only once the
    /// dnsmasq has stopped.
    pub fn running_pid(&self) -> Option<Pid> {
        self.pid_in(&self.existing_dir().ok().flatten()?)
    }

    /// [`Dnsmasq::running_pid`], its directory opened already.
    fn pid_in(&self, dir: &SafeDir) -> Option<Pid> {
        let from_pidfile = dir
            .read_hint("dnsmasq.pid", 32)
            .ok()
            .flatten()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|pid| self.is_ours(*pid));
        let pid = from_pidfile.or_else(|| {
            // dnsmasq's script helper is a child with the same command line: the daemon is its parent.
            let ours: Vec<u32> = all_processes().into_iter().filter(|pid| self.is_ours(*pid)).collect();
            ours.iter().copied().find(|pid| parent_of(*pid).is_none_or(|parent| !ours.contains(&parent)))
        })?;
        i32::try_from(pid).ok().map(Pid::from_raw)
    }

    /// Makes this bridge's dnsmasq run with the config `network` calls for:
    /// starts it if it is not running (or died), restarts it if the config changed.
    pub fn ensure(&self, binary: &Path, network: &Network, hooks: &Hooks<'_>) -> Result<()> {
        let dir = SafeDir::create(Area::Dnsmasq)?.subdir(&self.tag, 0o755)?;
        let text = config_text(network, &self.dir_path(), hooks);
        let unchanged = dir.read("dnsmasq.conf", text.len() as u64 + 1)?.is_some_and(|current| current == text);
        match self.running_pid() {
            Some(_) if unchanged => return Ok(()),
            Some(pid) => {
                trace(format_args!("restarting dnsmasq {pid} for {}: its config changed", network.bridge));
                self.stop_process(pid)?;
            }
            None => {}
        }
        if let Some(dhcp) = network.dhcp.as_ref().filter(|_| hooks.publishes_names(network)) {
            names::prepare(&dir, &names::reserved(dhcp))?;
        }
        dir.replace("dnsmasq.conf", text.as_bytes(), 0o644)?;
        self.start(&dir, binary, &network.bridge)
    }

    /// The guests' domain its config gives it (`domain=`), for the lease
    /// hook, which reads no config of kvm-net's.
    pub fn domain(&self) -> Option<String> {
        let dir = self.existing_dir().ok()??;
        let text = dir.read("dnsmasq.conf", MAX_CONFIG).ok()??;
        text.lines().find_map(|line| line.strip_prefix("domain=")).map(str::to_owned)
    }

    /// Its directory, for the lease hook (which the dnsmasq serving this
    /// bridge runs), if it exists.
    pub fn dir(&self) -> Result<Option<SafeDir>> {
        self.existing_dir()
    }

    fn start(&self, dir: &SafeDir, binary: &Path, bridge: &IfName) -> Result<()> {
        trace(format_args!("starting dnsmasq for {bridge}"));
        let log = dir.create_new("dnsmasq.log", 0o600)?;
        // dnsmasq forks its daemon and exits once the daemon is serving (or
        // failed): the status is the daemon's verdict. stdout/stderr go to a
        // file, never to QEMU's console.
        let status = privilege::command(binary)
            .arg(self.conf_arg())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .with_context(|| format!("running {}", binary.display()))?;
        if !status.success() {
            let said = dir.read("dnsmasq.log", 4096).ok().flatten().unwrap_or_default();
            return Err(anyhow!("dnsmasq for bridge {bridge} failed to start ({status}): {}", said.trim()));
        }
        self.running_pid().map(drop).ok_or_else(|| {
            anyhow!("dnsmasq for bridge {bridge} started but wrote no pidfile in {}", dir.path().display())
        })
    }

    /// The leases this bridge's dnsmasq holds now, from its lease file
    /// (dnsmasq's own: the MACs and names in it are what guests said).
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let Some(dir) = self.existing_dir()? else { return Ok(Vec::new()) };
        let text = dir.read_hint("dnsmasq.leases", MAX_LEASE_FILE)?.unwrap_or_default();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(text.lines().filter_map(Lease::parse).filter(|lease| lease.expires == 0 || lease.expires > now).collect())
    }

    /// Whether anything of this bridge's dnsmasq is left (its directory,
    /// and so maybe a process).
    pub fn leftover(&self) -> bool {
        self.existing_dir().ok().flatten().is_some()
    }

    /// Stops this bridge's dnsmasq, if one of ours runs, and removes its files.
    pub fn stop(&self) -> Result<()> {
        // The common case, a network without DHCP, in one system call: only
        // root can make entries under /run/kvm-net, so "not there" cannot
        // be faked. Whatever is there is opened and verified below.
        let path = self.dir_path();
        if matches!(nix::sys::stat::lstat(&path), Err(nix::errno::Errno::ENOENT)) {
            return Ok(());
        }
        let Some(area) = SafeDir::existing(Area::Dnsmasq)? else { return Ok(()) };
        // Without its directory there is no dnsmasq of ours (see running_pid).
        let Some(dir) = area.existing_subdir(&self.tag, 0o755)? else { return Ok(()) };
        if let Some(pid) = self.pid_in(&dir) {
            trace(format_args!("stopping dnsmasq {pid}"));
            self.stop_process(pid)?;
        }
        drop(dir);
        area.remove_tree(&self.tag)
    }

    fn stop_process(&self, pid: Pid) -> Result<Stopped> {
        stop_process(pid, |pid| self.is_ours(pid))
    }
}

/// The parent of `pid`, from `/proc/PID/stat` (the field after the
/// command name, which may hold spaces and parentheses itself).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The most of a config of kvm-net's it reads back.
const MAX_CONFIG: u64 = 1 << 20;

/// The most of a lease file kvm-net reads: far more than the leases a /16 holds.
const MAX_LEASE_FILE: u64 = 16 << 20;

/// One lease, as dnsmasq's lease file has it (`EXPIRY MAC IP NAME CLIENT-ID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// When it runs out, in seconds since the epoch; 0 for never.
    pub expires: u64,
    /// The guest's MAC, lower case.
    pub mac: String,
    /// The address leased.
    pub ip: std::net::Ipv4Addr,
    /// The host name the guest gave, if any.
    pub name: Option<String>,
}

impl Lease {
    /// One line of the lease file; `None` for anything else (IPv6 leases,
    /// the DUID line, a damaged line).
    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let expires = words.next()?.parse().ok()?;
        let mac = words.next()?.to_ascii_lowercase();
        let ip = words.next()?.parse().ok()?;
        let name =
            words.next().filter(|n| *n != "*" && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        let octets: Vec<&str> = mac.split(':').collect();
        if octets.len() != 6 || !octets.iter().all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit())) {
            return None;
        }
        Some(Self { expires, mac, ip, name: name.map(str::to_owned) })
    }
}

/// How a process went.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited (or had already) after SIGTERM.
    Exited,
    /// It ignored SIGTERM for [`STOP_WAIT`] and was killed.
    Killed,
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_WAIT`]. The
/// process is held by a pidfd, checked with `is_ours` once held, and signalled
/// only through it: a PID that was reused meanwhile is never signalled, and a
/// zombie (exited, not yet reaped by its parent) counts as exited.
pub fn stop_process(pid: Pid, is_ours: impl Fn(u32) -> bool) -> Result<Stopped> {
    let Some(pidfd) = pidfd_open(pid).with_context(|| format!("stopping process {pid}"))? else {
        return Ok(Stopped::Exited);
    };
    if !u32::try_from(pid.as_raw()).is_ok_and(&is_ours) {
        return Ok(Stopped::Exited);
    }
    pidfd_signal(&pidfd, Signal::SIGTERM).with_context(|| format!("stopping process {pid}"))?;
    if exited_within(&pidfd, STOP_WAIT)? {
        return Ok(Stopped::Exited);
    }
    trace(format_args!("process {pid} ignored SIGTERM for {STOP_WAIT:?}; killing it"));
    pidfd_signal(&pidfd, Signal::SIGKILL).with_context(|| format!("killing process {pid}"))?;
    exited_within(&pidfd, STOP_WAIT)?;
    Ok(Stopped::Killed)
}

/// A pidfd for `pid`; `None` if there is no such process.
fn pidfd_open(pid: Pid) -> Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a PID and flags (each passed as a full
    // register: syscall's arguments are variadic) and returns a new
    // descriptor or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::c_long::from(pid.as_raw()), libc::c_long::from(0u8)) };
    match Errno::result(fd) {
        Ok(fd) => {
            let fd = i32::try_from(fd).context("pidfd_open returned an impossible descriptor")?;
            // SAFETY: the kernel just returned this descriptor to us, open and owned by no one else.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        Err(Errno::ESRCH) => Ok(None),
        Err(err) => Err(err).context("pidfd_open"),
    }
}

fn pidfd_signal(pidfd: &OwnedFd, signal: Signal) -> Result<()> {
    // SAFETY: pidfd_send_signal on a descriptor we own, with no siginfo
    // (NULL) and no flags; each argument a full register, as syscall's
    // variadic arguments must be.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            libc::c_long::from(pidfd.as_raw_fd()),
            libc::c_long::from(signal as libc::c_int),
            std::ptr::null::<libc::siginfo_t>(),
            libc::c_long::from(0u8),
        )
    };
    match Errno::result(result) {
        Ok(_) | Err(Errno::ESRCH) => Ok(()),
        Err(err) => Err(err).with_context(|| format!("sending {signal}")),
    }
}

/// Whether the process exits within `wait` (a pidfd polls readable once it has).
fn exited_within(pidfd: &OwnedFd, wait: Duration) -> Result<bool> {
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(pidfd), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(ready) => return Ok(ready > 0),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err).context("waiting for a process to exit"),
        }
    }
}

/// What a network's dnsmasq runs for each lease, and how it keys leases.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hooks<'a> {
    /// kvm-net's lease hook, run for each lease: it binds leases in the
    /// guest filter and publishes guests' names ([`crate::services::names`]).
    pub lease_hook: Option<&'a Path>,
    /// Leases keyed by MAC alone, client ids ignored (`guest_spoofing =
    /// "deny"`: the filter holds each port to its own MAC, so no guest can
    /// reach another's lease under a client id of its choosing).
    pub mac_only: bool,
}

impl Hooks<'_> {
    /// Whether guests' names are published (by the hook, in the DNS).
    fn publishes_names(&self, network: &Network) -> bool {
        self.lease_hook.is_some() && serves_dns(network)
    }
}

/// The whole dnsmasq configuration for a network: hermetic (no system config,
/// no /etc/hosts), bound to the bridge only, taking no host name from a
/// guest (the lease hook publishes those it may have: [`crate::services::names`]).
/// DHCP and DNS where the network has `dhcp`; router advertisements and
/// DHCPv6 as `ipv6_autoconfig` says.
pub fn config_text(network: &Network, dir: &Path, hooks: &Hooks<'_>) -> String {
    let dhcp = network.dhcp.as_ref();
    let mut lines = vec![
        format!(
            "# Generated by kvm-net for network {} on bridge {}; rewritten by kvm-natup, do not edit.",
            network.name, network.bridge
        ),
        "strict-order".to_owned(),
        "no-hosts".to_owned(),
        format!("pid-file={}", dir.join("dnsmasq.pid").display()),
        "except-interface=lo".to_owned(),
        format!("interface={}", network.bridge),
        "bind-dynamic".to_owned(),
    ];
    if let (Some(address), Some(dhcp)) = (network.ipv4, dhcp) {
        let (start, end) = dhcp.range;
        lines.push(format!("dhcp-range={start},{end},{},{}", address.mask(), dhcp.lease_time));
        lines.push(format!("dhcp-lease-max={}", u32::from(end) - u32::from(start) + 1 + dhcp.hosts.len() as u32));
    }
    lines.extend(router_advertisements(network));
    lines.extend([
        "dhcp-no-override".to_owned(),
        "dhcp-authoritative".to_owned(),
        // Before offering an address dnsmasq pings it and waits 3 s, serving
        // no other DHCP client meanwhile: guests booting together timed out.
        // On a bridge it alone serves, its leases say what is taken.
        "no-ping".to_owned(),
        format!("dhcp-leasefile={}", dir.join("dnsmasq.leases").display()),
    ]);
    for host in dhcp.map_or(&[][..], |d| &d.hosts) {
        let ipv6 = host.ipv6.map_or(String::new(), |v6| format!(",[{v6}]"));
        let name = host.name.as_ref().map_or(String::new(), |name| format!(",{name}"));
        lines.push(format!("dhcp-host={},{}{ipv6}{name}", host.mac, host.ip));
    }
    // dnsmasq answers a dhcp-host's name only for the address it leased,
    // and only once leased: each named host is a record of its own, with
    // its IPv6 address (SLAAC leases none), plain and in the domain.
    let domain = dhcp.and_then(|d| d.domain.as_deref());
    for host in dhcp.map_or(&[][..], |d| &d.hosts) {
        let Some(name) = &host.name else { continue };
        let qualified = domain.map_or(String::new(), |domain| format!(",{name}.{domain}"));
        let v6 = host.ipv6.map_or(String::new(), |v6| format!(",{v6}"));
        lines.push(format!("host-record={name}{qualified},{}{v6}", host.ip));
    }
    lines.extend(domain_lines(network));
    for record in dhcp.map_or(&[][..], |d| &d.records) {
        lines.push(format!("host-record={},{}", record.name, record.ip));
    }
    if !serves_dns(network) {
        lines.push("port=0".to_owned());
    }
    lines.push("dhcp-ignore-names".to_owned());
    if hooks.mac_only {
        lines.push("dhcp-ignore-clid".to_owned());
    }
    if hooks.publishes_names(network) {
        lines.push(format!("hostsdir={}", dir.join(names::HOSTS_DIR).display()));
    }
    if let Some(hook) = hooks.lease_hook {
        lines.push(format!("dhcp-script={}", hook.display()));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// The guests' domain: in leases (option 15, and the search list, 119 and
/// DHCPv6's, for a client that asks), guests' names in it (`expand-hosts`
/// for the names the lease hook publishes), answered here alone (`local=`:
/// unknown names in it are NXDOMAIN, never a query upstream); and the
/// resolvers other queries go to instead of the host's resolv.conf.
fn domain_lines(network: &Network) -> Vec<String> {
    let Some(dhcp) = &network.dhcp else { return Vec::new() };
    let mut lines = Vec::new();
    if let Some(domain) = &dhcp.domain {
        lines.extend([
            format!("domain={domain}"),
            format!("local=/{domain}/"),
            "expand-hosts".to_owned(),
            format!("dhcp-option=option:domain-search,{domain}"),
            format!("dhcp-option=option6:domain-search,{domain}"),
        ]);
        // The reverse zones of the network's own subnets, as the domain:
        // answered here (the guests' names), never asked upstream.
        let v4 = network.ipv4.iter().flat_map(|ipv4| reverse_zones4(*ipv4));
        let v6 = network.ipv6.iter().flat_map(|ipv6| reverse_zones6(*ipv6));
        lines.extend(v4.chain(v6).map(|zone| format!("local=/{zone}/")));
    }
    if !dhcp.upstream_dns.is_empty() {
        lines.push("no-resolv".to_owned());
        lines.extend(dhcp.upstream_dns.iter().map(|server| format!("server={server}")));
    }
    lines
}

/// The `in-addr.arpa` zones that cover `subnet` exactly: one per /8, /16
/// or /24 within it (a /20: 16 zones of /24).
fn reverse_zones4(subnet: ipnetwork::Ipv4Network) -> Vec<String> {
    let prefix = u32::from(subnet.prefix());
    let octets = prefix.div_ceil(8).max(1);
    let base = u32::from(subnet.network());
    (0..1u32 << (octets * 8 - prefix))
        .map(|index| {
            let address = (base + (index << (32 - octets * 8))).to_be_bytes();
            let labels: Vec<String> = address[..octets as usize].iter().rev().map(u8::to_string).collect();
            format!("{}.in-addr.arpa", labels.join("."))
        })
        .collect()
}

/// The `ip6.arpa` zones that cover `subnet` exactly, one per nibble
/// boundary within it (a /64: one zone of 16 nibbles).
fn reverse_zones6(subnet: ipnetwork::Ipv6Network) -> Vec<String> {
    let prefix = u32::from(subnet.prefix());
    let nibbles = prefix.div_ceil(4).max(1);
    let base = u128::from(subnet.network());
    (0..1u128 << (nibbles * 4 - prefix))
        .map(|index| {
            let address = base + (index << (128 - nibbles * 4));
            let labels: Vec<String> =
                (0..nibbles).rev().map(|at| format!("{:x}", (address >> (124 - at * 4)) & 0xf)).collect();
            format!("{}.ip6.arpa", labels.join("."))
        })
        .collect()
}

/// Whether the network's dnsmasq answers DNS (`dhcp.dns`).
fn serves_dns(network: &Network) -> bool {
    network.dhcp.as_ref().is_some_and(|dhcp| dhcp.dns)
}

/// Router advertisements (and DHCPv6) for `ipv6_autoconfig`: the prefix for
/// SLAAC with stateless DHCPv6 for DNS, or the managed flag and a leased
/// range; the bridge's own address as DNS server (dnsmasq would say its
/// link-local one); an isolated network's router lifetime 0, so that guests
/// take addresses but no default route.
fn router_advertisements(network: &Network) -> Vec<String> {
    let Some(address) = network.ipv6.filter(|_| network.ipv6_autoconfig.advertises()) else { return Vec::new() };
    let lease_time = network.dhcp.as_ref().map_or("1h", |dhcp| dhcp.lease_time.as_str());
    let prefix = address.prefix();
    let mut lines = vec!["enable-ra".to_owned()];
    match network.ipv6_autoconfig {
        Autoconfig::Slaac => {
            let mode = if serves_dns(network) { "ra-stateless" } else { "ra-only" };
            lines.push(format!("dhcp-range={},{mode},{prefix},{lease_time}", address.network()));
        }
        Autoconfig::Dhcpv6 { range: (first, last) } => {
            lines.push(format!("dhcp-range={first},{last},{prefix},{lease_time}"));
        }
        Autoconfig::Off => {}
    }
    if network.mode == Mode::Isolated {
        lines.push(format!("ra-param={},0,0", network.bridge));
    }
    if serves_dns(network) {
        lines.push(format!("dhcp-option=option6:dns-server,[{}]", address.ip()));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Dhcp, HostRecord, StaticLease};

    #[test]
    fn config_is_hermetic_and_bound_to_the_bridge() {
        let mut network = Network::classic();
        let mut dhcp = Dhcp::defaults_for(network.ipv4.expect("classic has an address"));
        dhcp.hosts.push(StaticLease {
            mac: "52:54:00:00:00:01".into(),
            ip: "192.168.100.50".parse().expect("ip"),
            ipv6: None,
            name: Some("web1".into()),
            tap: None,
        });
        dhcp.records.push(HostRecord { name: "upstream.lab".into(), ip: "203.0.113.2".parse().expect("ip") });
        network.dhcp = Some(dhcp);
        let text = config_text(&network, Path::new("/run/kvm-net/dnsmasq/x"), &Hooks::default());
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "strict-order",
                "no-hosts",
                "pid-file=/run/kvm-net/dnsmasq/x/dnsmasq.pid",
                "except-interface=lo",
                "interface=br0",
                "bind-dynamic",
                "dhcp-range=192.168.100.128,192.168.100.254,255.255.255.0,1h",
                "dhcp-lease-max=128",
                "dhcp-no-override",
                "dhcp-authoritative",
                "no-ping",
                "dhcp-leasefile=/run/kvm-net/dnsmasq/x/dnsmasq.leases",
                "dhcp-host=52:54:00:00:00:01,192.168.100.50,web1",
                "host-record=web1,192.168.100.50",
                "host-record=upstream.lab,203.0.113.2",
                "dhcp-ignore-names",
            ]
        );
        let hook = Path::new("/usr/libexec/kvm-net-lease");
        let named = config_text(&network, Path::new("/x"), &Hooks { lease_hook: Some(hook), mac_only: false });
        assert!(
            named.ends_with("dhcp-ignore-names\nhostsdir=/x/names\ndhcp-script=/usr/libexec/kvm-net-lease\n"),
            "{named}"
        );
        if let Some(dhcp) = network.dhcp.as_mut() {
            dhcp.dns = false;
        }
        assert!(config_text(&network, Path::new("/x"), &Hooks::default()).ends_with("port=0\ndhcp-ignore-names\n"));
        let hooked = config_text(&network, Path::new("/x"), &Hooks { lease_hook: Some(hook), mac_only: true });
        assert!(
            hooked.ends_with("port=0\ndhcp-ignore-names\ndhcp-ignore-clid\ndhcp-script=/usr/libexec/kvm-net-lease\n"),
            "{hooked}"
        );
    }

    fn v6(mode: Mode, autoconfig: Autoconfig, dhcp: bool) -> Network {
        let ipv4 = "192.168.60.1/24".parse().ok();
        Network {
            mode,
            bridge: IfName::parse("v6br0").expect("a name"),
            ipv4,
            ipv6: "fd00:60::1/64".parse().ok(),
            ipv6_autoconfig: autoconfig,
            dhcp: ipv4.filter(|_| dhcp).map(Dhcp::defaults_for),
            ..Network::classic()
        }
    }

    fn v6_lines(network: &Network) -> Vec<String> {
        config_text(network, Path::new("/x"), &Hooks::default())
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("enable-ra") || l.starts_with("ra-") || l.contains("option6") || l.contains("::"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn slaac_advertises_the_prefix_and_the_bridges_address_as_dns_server() {
        assert_eq!(
            v6_lines(&v6(Mode::Nat, Autoconfig::Slaac, true)),
            ["enable-ra", "dhcp-range=fd00:60::,ra-stateless,64,1h", "dhcp-option=option6:dns-server,[fd00:60::1]"]
        );
        // No DNS served: no DNS server said, nothing for DHCPv6 to answer.
        assert_eq!(
            v6_lines(&v6(Mode::Routed, Autoconfig::Slaac, false)),
            ["enable-ra", "dhcp-range=fd00:60::,ra-only,64,1h"]
        );
        assert_eq!(
            v6_lines(&v6(Mode::Isolated, Autoconfig::Slaac, true)),
            [
                "enable-ra",
                "dhcp-range=fd00:60::,ra-stateless,64,1h",
                "ra-param=v6br0,0,0",
                "dhcp-option=option6:dns-server,[fd00:60::1]"
            ]
        );
        assert!(v6_lines(&v6(Mode::Nat, Autoconfig::Off, true)).is_empty());
    }

    #[test]
    fn dhcpv6_leases_the_range_and_a_hosts_address_by_its_mac_with_its_aaaa_record() {
        let range = ("fd00:60::1000".parse().expect("ip"), "fd00:60::1fff".parse().expect("ip"));
        let mut network = v6(Mode::Nat, Autoconfig::Dhcpv6 { range }, true);
        if let Some(dhcp) = network.dhcp.as_mut() {
            dhcp.hosts.push(StaticLease {
                mac: "52:54:00:00:60:10".into(),
                ip: "192.168.60.10".parse().expect("ip"),
                ipv6: "fd00:60::10".parse().ok(),
                name: Some("web1".into()),
                tap: None,
            });
        }
        let text = config_text(&network, Path::new("/x"), &Hooks::default());
        for line in [
            "enable-ra",
            "dhcp-range=fd00:60::1000,fd00:60::1fff,64,1h",
            "dhcp-host=52:54:00:00:60:10,192.168.60.10,[fd00:60::10],web1",
            "host-record=web1,192.168.60.10,fd00:60::10",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_domain_is_answered_here_alone_and_upstream_resolvers_replace_resolv_conf() {
        let mut network = v6(Mode::Nat, Autoconfig::Off, true);
        if let Some(dhcp) = network.dhcp.as_mut() {
            dhcp.hosts.push(StaticLease {
                mac: "52:54:00:00:60:10".into(),
                ip: "192.168.60.10".parse().expect("ip"),
                ipv6: None,
                name: Some("web1".into()),
                tap: None,
            });
            dhcp.domain = Some("vm.internal".into());
            dhcp.upstream_dns = vec!["10.0.0.53".parse().expect("ip"), "2001:db8::53".parse().expect("ip")];
        }
        let text = config_text(&network, Path::new("/x"), &Hooks::default());
        let wanted = [
            "host-record=web1,web1.vm.internal,192.168.60.10",
            "domain=vm.internal",
            "local=/vm.internal/",
            "expand-hosts",
            "dhcp-option=option:domain-search,vm.internal",
            "no-resolv",
            "server=10.0.0.53",
            "server=2001:db8::53",
        ];
        for line in wanted {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(text.lines().any(|l| l == "local=/60.168.192.in-addr.arpa/"), "{text}");
        assert!(text.lines().any(|l| l == "local=/0.0.0.0.0.0.0.0.0.6.0.0.0.0.d.f.ip6.arpa/"), "{text}");
        if let Some(dhcp) = network.dhcp.as_mut() {
            (dhcp.domain, dhcp.upstream_dns) = (None, Vec::new());
        }
        let plain = config_text(&network, Path::new("/x"), &Hooks::default());
        assert!(!plain.contains("domain") && !plain.contains("server=") && !plain.contains("no-resolv"), "{plain}");
    }

    #[test]
    fn reverse_zones_cover_a_subnet_exactly() {
        let zones4 = |text: &str| reverse_zones4(text.parse().expect("a subnet"));
        assert_eq!(zones4("10.88.0.1/24"), ["0.88.10.in-addr.arpa"]);
        assert_eq!(zones4("10.0.0.1/8"), ["10.in-addr.arpa"]);
        let twenty = zones4("172.16.32.1/20");
        assert_eq!(
            (twenty.len(), twenty[0].as_str(), twenty[15].as_str()),
            (16, "32.16.172.in-addr.arpa", "47.16.172.in-addr.arpa")
        );
        let thirty = zones4("192.168.1.5/30");
        assert_eq!(
            thirty,
            [
                "4.1.168.192.in-addr.arpa",
                "5.1.168.192.in-addr.arpa",
                "6.1.168.192.in-addr.arpa",
                "7.1.168.192.in-addr.arpa"
            ]
        );
        let zones6 = |text: &str| reverse_zones6(text.parse().expect("a subnet"));
        assert_eq!(zones6("fd00:60::1/64"), ["0.0.0.0.0.0.0.0.0.6.0.0.0.0.d.f.ip6.arpa"]);
        let odd = zones6("fd00:60::1/62");
        assert_eq!(odd.len(), 4);
        assert_eq!(odd[3], "3.0.0.0.0.0.0.0.0.6.0.0.0.0.d.f.ip6.arpa");
    }

    fn has_cmdline(pid: u32) -> bool {
        fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    }

    /// A `sleep 60` child, once exec has given it its command line (spawn
    /// returns a moment before that).
    fn sleeper() -> (std::process::Child, Pid) {
        let child = std::process::Command::new("sleep").arg("60").spawn().expect("sleep");
        while !has_cmdline(child.id()) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        (child, pid)
    }

    #[test]
    fn lease_lines_are_read_and_a_guests_odd_words_are_not_trusted() {
        let lease =
            Lease::parse("1733400000 52:54:00:AB:00:10 192.168.100.10 web1 01:52:54:00:ab:00:10").expect("a lease");
        assert_eq!(
            (lease.mac.as_str(), lease.ip.to_string(), lease.name.as_deref()),
            ("52:54:00:ab:00:10", "192.168.100.10".to_owned(), Some("web1"))
        );
        assert_eq!(Lease::parse("0 52:54:00:00:00:11 192.168.100.11 * *").and_then(|l| l.name), None);
        assert_eq!(Lease::parse("0 52:54:00:00:00:11 192.168.100.11 \x1b[31mred *").and_then(|l| l.name), None);
        assert!(Lease::parse("duid 00:01:00:01").is_none());
        assert!(Lease::parse("0 not-a-mac 192.168.100.11 x *").is_none());
    }

    #[test]
    fn a_process_stopped_but_not_yet_reaped_counts_as_exited() {
        use std::os::unix::process::ExitStatusExt;
        let (mut child, pid) = sleeper();
        // The test does not reap it until the end: it is a zombie after SIGTERM.
        assert_eq!(stop_process(pid, has_cmdline).expect("stop"), Stopped::Exited);
        assert_eq!(child.wait().expect("reap").signal(), Some(libc::SIGTERM), "never SIGKILL");
    }

    #[test]
    fn a_zombie_is_not_signalled_again() {
        use std::os::unix::process::ExitStatusExt;
        let (mut child, pid) = sleeper();
        nix::sys::signal::kill(pid, Signal::SIGINT).expect("kill");
        while has_cmdline(child.id()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stop_process(pid, has_cmdline).expect("stop"), Stopped::Exited);
        assert_eq!(child.wait().expect("reap").signal(), Some(libc::SIGINT));
    }

    #[test]
    fn a_process_that_is_not_ours_is_left_alone() {
        let (mut child, pid) = sleeper();
        assert_eq!(stop_process(pid, |_| false).expect("stop"), Stopped::Exited);
        assert!(child.try_wait().expect("poll").is_none(), "a process that is not ours was signalled");
        let _ = child.kill();
        let _ = child.wait();
    }
}
