//! A "host" namespace wired to an "upstream" namespace that stands in for the
//! internet, and a TCP server there that reports who connected. Upstream has
//! no route back to guest subnets: only NAT (or a route the test adds) can
//! bring replies home.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::Netns;

/// The host's address on its uplink (what upstream sees from a NATed guest).
pub const HOST_UPLINK: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The upstream host's address.
pub const UPSTREAM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The host's IPv6 address on its uplink.
pub const HOST_UPLINK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The upstream host's IPv6 address.
pub const UPSTREAM6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

/// Host and upstream namespaces joined by a veth pair (`up0` on the host).
pub struct Lab {
    /// Where QEMU and the helpers run.
    pub host: Netns,
    /// The outside world, reachable from the host over `up0`.
    pub upstream: Netns,
}

impl Lab {
    /// Builds both namespaces and the link between them.
    pub fn new() -> Self {
        let (host, upstream) = (Netns::new(), Netns::new());
        host.ok(&["ip", "link", "add", "up0", "type", "veth", "peer", "name", "wan0"]);
        host.move_link("wan0", &upstream);
        host.sh(&format!(
            "ip addr add {HOST_UPLINK}/24 dev up0; ip addr add {HOST_UPLINK6}/64 dev up0 nodad; ip link set up0 up"
        ));
        upstream.sh(&format!(
            "ip addr add {UPSTREAM}/24 dev wan0; ip addr add {UPSTREAM6}/64 dev wan0 nodad; ip link set wan0 up"
        ));
        Self { host, upstream }
    }

    /// A "guest" namespace plugged in through a veth pair whose host end,
    /// `host_end`, plays the VM's tap; `address` (CIDR) and an optional
    /// default gateway are set on the guest's `eth0`.
    pub fn guest(&self, host_end: &str, address: &str, gateway: Option<&str>) -> Netns {
        let guest = Netns::new();
        self.host.ok(&["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0"]);
        self.host.move_link("eth0", &guest);
        guest.sh(&format!("ip addr add {address} dev eth0 nodad; ip link set eth0 up"));
        if let Some(gateway) = gateway {
            guest.ok(&["ip", "route", "add", "default", "via", gateway]);
        }
        guest
    }
}

impl Lab {
    /// A guest namespace on `host_end` that configures IPv6 itself, as a
    /// VM does: it takes router advertisements (`accept_ra=2`, whatever its
    /// forwarding), probes each address before it uses it (duplicate
    /// address detection), and has MAC `mac` if given. No IPv4 address.
    pub fn autoconf_guest(&self, host_end: &str, mac: Option<&str>) -> Netns {
        let guest = Netns::new();
        self.host.ok(&["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0"]);
        self.host.move_link("eth0", &guest);
        let mac = mac.map_or(String::new(), |mac| format!("ip link set eth0 address {mac}; "));
        guest.sh(&format!("{mac}echo 2 > /proc/sys/net/ipv6/conf/eth0/accept_ra; ip link set eth0 up"));
        guest
    }
}

/// The global IPv6 addresses on `guest`'s eth0 (not tentative).
pub fn global6(guest: &Netns) -> Vec<Ipv6Addr> {
    let listing = guest.ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global", "-tentative"]);
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().skip_while(|w| *w != "inet6").nth(1))
        .filter_map(|address| address.split('/').next()?.parse().ok())
        .collect()
}

/// Waits (up to 10 s: router advertisements come at once on a solicitation)
/// for `guest` to hold a global IPv6 address and, if `routed`, a default
/// route; the first address.
pub fn autoconfigured(guest: &Netns, routed: bool) -> Option<Ipv6Addr> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let route = guest.ok(&["ip", "-6", "route", "show", "default"]);
        if let Some(address) = global6(guest).first().copied().filter(|_| !routed || !route.trim().is_empty()) {
            return Some(address);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `guest`'s eth0 has a link-local address past duplicate address
/// detection, waiting up to 5 s for it.
fn link_local_ready(guest: &Netns) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while guest.ok(&["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link", "-tentative"]).trim().is_empty()
    {
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
    true
}

/// What a router advertisement `guest` solicits on eth0 says, as rdisc6
/// prints it (empty: none came in 3 s).
pub fn solicit(guest: &Netns) -> String {
    // A solicitation goes from the link-local address, once it is no longer tentative.
    if !link_local_ready(guest) {
        return String::new();
    }
    let out = guest.output(&["rdisc6", "-1", "-r", "3", "-w", "1000", "eth0"]);
    match out.status.success() {
        true => String::from_utf8_lossy(&out.stdout).into_owned(),
        false => String::new(),
    }
}

/// Asks for a DHCPv6 lease from inside `guest` (ISC dhclient, its files in
/// the scratch directory, a script that only adds the address); the
/// address leased. The client stops then (the address stays, leased).
pub fn dhcpv6_lease(guest: &Netns, name: &str) -> Option<Ipv6Addr> {
    // dhclient gives up on an interface whose link-local address is still tentative.
    if !link_local_ready(guest) {
        return None;
    }
    let dir = crate::run::ConfigFile::scratch_dir().join(format!("dhclient-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dhclient's directory");
    let script = dir.join("script");
    let said = dir.join("said");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6|REBOOT6)\n  ip -6 addr replace \"$new_ip6_address/$new_ip6_prefixlen\" dev \"$interface\" nodad\n  echo \"$new_ip6_address\" >> {}\nesac\nexit 0\n",
            said.display()
        ),
    )
    .expect("dhclient script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let path = |file: &str| dir.join(file).to_str().expect("UTF-8 path").to_owned();
    let (leases, pid, script) = (path("leases"), path("pid"), path("script"));
    let mut client = guest
        .cmd("dhclient")
        .args(["-6", "-d", "-1", "-lf", &leases, "-pf", &pid, "-sf", &script, "eth0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).expect("dhclient's log"))
        .spawn()
        .expect("dhclient (apt-get install isc-dhcp-client)");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut leased = None;
    while leased.is_none() && std::time::Instant::now() < deadline {
        leased = std::fs::read_to_string(&said).ok().and_then(|t| t.lines().last()?.trim().parse().ok());
        thread::sleep(Duration::from_millis(100));
    }
    let _ = client.kill();
    let _ = client.wait();
    let _ = std::fs::remove_dir_all(&dir);
    leased
}

/// The IPv6 address the DNS server at `server` answers for `name` (AAAA),
/// asked from inside `ns`.
pub fn resolve6(ns: &Netns, name: &str, server: IpAddr) -> Option<Ipv6Addr> {
    let out = ns.output(&["busybox", "nslookup", "-type=aaaa", name, &server.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answer = text.split_once(&format!("Name:\t{name}"))?.1;
    answer.lines().find_map(|l| l.strip_prefix("Address: ")).and_then(|a| a.trim().parse().ok())
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// One connection the upstream server accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Source address of the connection, after any NAT.
    pub peer: IpAddr,
    /// First line the client sent.
    pub message: String,
}

/// A TCP server in the upstream namespace: for each connection it reads one
/// line, answers `seen PEER`, and records both. Stops when dropped.
pub struct UpstreamServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UpstreamServer {
    /// Listens on `ip` (an address of `ns`) on a free port.
    pub fn start(ns: &Netns, ip: impl Into<IpAddr>) -> Self {
        Self::start_on(ns, ip, 0)
    }

    /// Listens on `ip` (an address of `ns`) on `port` (0: a free one).
    pub fn start_on(ns: &Netns, ip: impl Into<IpAddr>, port: u16) -> Self {
        let ip = ip.into();
        let listener = ns.enter(|| TcpListener::bind((ip, port))).expect("binding the upstream server");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let port = listener.local_addr().expect("local address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            // Recorded before the answer goes out: a client that got one finds it in `seen`.
                            serve(stream, peer.ip(), |message| {
                                seen.lock().expect("seen list").push(Seen { peer: peer.ip(), message })
                            });
                        }
                        // WouldBlock, or a connection reset before accept: poll again.
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Self { port, seen, stop, thread: Some(thread) }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen list").clone()
    }
}

fn serve(stream: TcpStream, peer: IpAddr, record: impl FnOnce(String)) -> Option<()> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).ok()?;
    record(line.trim().to_owned());
    (&stream).write_all(format!("seen {peer}\n").as_bytes()).ok()
}

impl Drop for UpstreamServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP server in a namespace: answers each datagram with `seen PEER`.
/// Stops when dropped.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    /// Listens on `ip` (an address of `ns`) on `port`.
    pub fn start_on(ns: &Netns, ip: impl Into<IpAddr>, port: u16) -> Self {
        let ip = ip.into();
        let socket = ns.enter(|| UdpSocket::bind((ip, port))).expect("binding the UDP server");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut buffer = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                        let _ = socket.send_to(format!("seen {}", peer.ip()).as_bytes(), peer);
                    }
                }
            })
        };
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends one datagram from inside `ns` to `ip`:`port` and returns the
/// answer, waiting at most `timeout` for it.
pub fn udp_exchange(ns: &Netns, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> std::io::Result<String> {
    let ip = ip.into();
    ns.enter(|| {
        let unspecified: IpAddr =
            if ip.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let socket = UdpSocket::bind((unspecified, 0))?;
        socket.set_read_timeout(Some(timeout))?;
        socket.send_to(b"hello", (ip, port))?;
        let mut buffer = [0u8; 512];
        let (len, _) = socket.recv_from(&mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer[..len]).into_owned())
    })
}

/// Connects from inside `ns` to `server` on `ip`, sends `message`, and returns
/// the server's answer (`seen PEER`).
pub fn connect_from(
    ns: &Netns,
    ip: impl Into<IpAddr>,
    server: &UpstreamServer,
    message: &str,
) -> std::io::Result<String> {
    connect_within(ns, ip, server, message, Duration::from_secs(3))
}

/// As [`connect_from`], giving up on the connection after `timeout` (a
/// dropped SYN is never answered; between namespaces an answer takes well
/// under a millisecond).
pub fn connect_within(
    ns: &Netns,
    ip: impl Into<IpAddr>,
    server: &UpstreamServer,
    message: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    connect_to(ns, ip, server.port(), message, timeout)
}

/// As [`connect_within`], to any `ip`:`port`.
pub fn connect_to(
    ns: &Netns,
    ip: impl Into<IpAddr>,
    port: u16,
    message: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let ip = ip.into();
    ns.enter(|| {
        let mut stream = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout)?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(format!("{message}\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply)?;
        Ok(reply.trim().to_owned())
    })
}

/// Asks for a lease from inside `guest`; returns the address offered.
pub fn lease(guest: &Netns) -> Option<String> {
    let said = udhcpc(
        guest,
        "udhcpc-print.sh",
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $ip router $router dns $dns\"\nexit 0\n",
    );
    said.lines()
        .find_map(|l| l.strip_prefix("lease "))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
}

/// Runs busybox's DHCP client once (5 tries, 1 s apart) inside `guest` on
/// eth0, with the udhcpc script `script` (kept in the scratch directory as
/// `name`); what the script printed.
pub fn udhcpc(guest: &Netns, name: &str, script: &str) -> String {
    udhcpc_with(guest, name, script, &[])
}

/// As [`udhcpc`], with more of udhcpc's options (`-x hostname:NAME`, ...).
pub fn udhcpc_with(guest: &Netns, name: &str, script: &str, options: &[&str]) -> String {
    let path = crate::run::ConfigFile::scratch_dir().join(name);
    if !path.exists() {
        std::fs::write(&path, script).expect("script");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    let path = path.to_str().expect("UTF-8 path");
    let mut args = vec!["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", path];
    args.extend(options);
    let out = guest.output(&args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asks for a lease from inside `guest` with the host name `hostname`;
/// returns the address offered.
pub fn lease_named(guest: &Netns, hostname: &str) -> Option<String> {
    let option = format!("hostname:{hostname}");
    let said = udhcpc_with(
        guest,
        "udhcpc-print.sh",
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $ip router $router dns $dns\"\nexit 0\n",
        &["-x", &option],
    );
    said.lines()
        .find_map(|l| l.strip_prefix("lease "))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
}

/// The IPv4 address the DNS server at `server` answers for `name`, asked
/// from inside `ns` (busybox nslookup; `None`: no such name).
pub fn resolve(ns: &Netns, name: &str, server: Ipv4Addr) -> Option<Ipv4Addr> {
    let out = ns.output(&["busybox", "nslookup", "-type=a", name, &server.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let answer = text.split_once(&format!("Name:\t{name}"))?.1;
    answer.lines().find_map(|l| l.strip_prefix("Address: ")).and_then(|a| a.trim().parse().ok())
}
