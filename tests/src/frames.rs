//! Frames a hostile guest crafts: Ethernet with any source MAC, IPv4 and
//! IPv6 with any source address (TCP SYN, ICMP echo, UDP), ARP replies,
//! IPv6 router and neighbour advertisements and solicitations, sent as they are through an
//! `AF_PACKET` socket from inside the guest's namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::Netns;

/// A MAC address.
pub type Mac = [u8; 6];

/// Reads `52:54:00:00:00:10`.
pub fn mac(text: &str) -> Mac {
    let octets: Vec<u8> = text.split(':').map(|o| u8::from_str_radix(o, 16).expect("a MAC octet")).collect();
    octets.try_into().expect("six octets")
}

/// The MAC of `ifname` in `ns`.
pub fn mac_of(ns: &Netns, ifname: &str) -> Mac {
    let line = ns.ok(&["ip", "-o", "link", "show", "dev", ifname]);
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "link/ether").expect("an Ethernet link");
    mac(words[at + 1])
}

/// The MAC `ns` has for `ip` in its neighbour table (ARP or IPv6's).
pub fn neighbour(ns: &Netns, ip: impl Into<IpAddr>) -> Option<Mac> {
    let line = ns.ok(&["ip", "neigh", "show", &ip.into().to_string()]);
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == "lladdr").map(|w| mac(w[1]))
}

/// The broadcast MAC.
pub const BROADCAST: Mac = [0xff; 6];

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame.
pub fn ethernet(destination: Mac, source: Mac, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    [&destination[..], &source[..], &ether_type.to_be_bytes(), payload].concat()
}

/// An IPv4 packet (no options), with its header checksum.
pub fn ipv4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let length = u16::try_from(20 + payload.len()).expect("a small packet");
    let mut header = vec![0x45, 0];
    header.extend(length.to_be_bytes());
    header.extend([0x12, 0x34, 0x40, 0, 64, protocol, 0, 0]);
    header.extend(source.octets());
    header.extend(destination.octets());
    let sum = checksum(&header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    [header, payload.to_vec()].concat()
}

/// The IPv4 packet `packet` (as [`ipv4`] makes it, no options) cut into
/// fragments whose payloads are `first` bytes, then the rest.
pub fn fragments(packet: &[u8], first: usize) -> [Vec<u8>; 2] {
    assert!(first.is_multiple_of(8) && first + 20 < packet.len(), "a fragment boundary");
    let (header, payload) = packet.split_at(20);
    let piece = |data: &[u8], offset: usize, more: bool| {
        let mut head = header.to_vec();
        head[2..4].copy_from_slice(&u16::try_from(20 + data.len()).expect("small").to_be_bytes());
        let field = u16::try_from(offset / 8).expect("small") | if more { 0x2000 } else { 0 };
        head[6..8].copy_from_slice(&field.to_be_bytes());
        head[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&head);
        head[10..12].copy_from_slice(&sum.to_be_bytes());
        [head, data.to_vec()].concat()
    };
    [piece(&payload[..first], 0, true), piece(&payload[first..], first, false)]
}

fn pseudo_header_v4(source: Ipv4Addr, destination: Ipv4Addr, protocol: u8, length: usize) -> Vec<u8> {
    let mut pseudo = [source.octets(), destination.octets()].concat();
    pseudo.extend([0, protocol]);
    pseudo.extend(u16::try_from(length).expect("small").to_be_bytes());
    pseudo
}

/// A TCP SYN, with its checksum.
pub fn tcp_syn(source: Ipv4Addr, destination: Ipv4Addr, source_port: u16, destination_port: u16) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend(source_port.to_be_bytes());
    segment.extend(destination_port.to_be_bytes());
    segment.extend(0x1000_0000u32.to_be_bytes());
    segment.extend(0u32.to_be_bytes());
    segment.extend([0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let sum = checksum(&[pseudo_header_v4(source, destination, 6, segment.len()), segment.clone()].concat());
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv4(source, destination, 6, &segment)
}

/// An ICMP echo request.
pub fn icmp_echo(source: Ipv4Addr, destination: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut message = vec![8, 0, 0, 0];
    message.extend(id.to_be_bytes());
    message.extend(1u16.to_be_bytes());
    message.extend(b"kvm-net spoof test");
    let sum = checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(source, destination, 1, &message)
}

/// An ARP reply: `sender_ip` is at `sender_mac`, told to `target`.
pub fn arp_reply(sender_mac: Mac, sender_ip: Ipv4Addr, target_mac: Mac, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 2];
    arp.extend(sender_mac);
    arp.extend(sender_ip.octets());
    arp.extend(target_mac);
    arp.extend(target_ip.octets());
    arp
}

/// An IPv6 packet (no extension headers) with hop limit `hops`.
pub fn ipv6(source: Ipv6Addr, destination: Ipv6Addr, next_header: u8, hops: u8, payload: &[u8]) -> Vec<u8> {
    let mut header = vec![0x60, 0, 0, 0];
    header.extend(u16::try_from(payload.len()).expect("a small packet").to_be_bytes());
    header.extend([next_header, hops]);
    header.extend(source.octets());
    header.extend(destination.octets());
    [header, payload.to_vec()].concat()
}

/// The checksum of an upper-layer message over IPv6 (its pseudo-header),
/// written into `message` at `at`.
fn checksum6(source: Ipv6Addr, destination: Ipv6Addr, next_header: u8, message: &mut [u8], at: usize) {
    let mut pseudo = [source.octets(), destination.octets()].concat();
    pseudo.extend(u32::try_from(message.len()).expect("small").to_be_bytes());
    pseudo.extend([0, 0, 0, next_header]);
    let sum = checksum(&[pseudo, message.to_vec()].concat());
    message[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// An ICMPv6 message (type, code, then `body`) in an IPv6 packet with hop
/// limit 255 (what neighbour discovery requires), its checksum filled in.
pub fn icmpv6(source: Ipv6Addr, destination: Ipv6Addr, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = [vec![kind, 0, 0, 0], body.to_vec()].concat();
    checksum6(source, destination, 58, &mut message, 2);
    ipv6(source, destination, 58, 255, &message)
}

/// A TCP SYN over IPv6.
pub fn tcp_syn6(source: Ipv6Addr, destination: Ipv6Addr, source_port: u16, destination_port: u16) -> Vec<u8> {
    let mut segment = Vec::new();
    segment.extend(source_port.to_be_bytes());
    segment.extend(destination_port.to_be_bytes());
    segment.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    checksum6(source, destination, 6, &mut segment, 16);
    ipv6(source, destination, 6, 64, &segment)
}

/// An ICMPv6 echo request with identifier `id`.
pub fn echo6(source: Ipv6Addr, destination: Ipv6Addr, id: u16) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend(1u16.to_be_bytes());
    body.extend(b"kvm-net spoof test");
    icmpv6(source, destination, 128, &body)
}

/// An unsolicited neighbour advertisement (override set) from `source` to
/// all nodes: `target` is at `mac`.
pub fn neighbour_advertisement(source_mac: Mac, source: Ipv6Addr, target: Ipv6Addr, mac: Mac) -> Vec<u8> {
    neighbour_advertisement_with(source_mac, source, target, &link_layer_option(2, mac))
}

/// A neighbour discovery link-layer address option: `kind` 1 (source) or 2 (target).
pub fn link_layer_option(kind: u8, mac: Mac) -> Vec<u8> {
    [vec![kind, 1], mac.to_vec()].concat()
}

/// As [`neighbour_advertisement`], with `options` (whole, as bytes) after the target.
pub fn neighbour_advertisement_with(source_mac: Mac, source: Ipv6Addr, target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("an address");
    let body = [&[0x20, 0, 0, 0][..], &target.octets(), options].concat();
    ethernet([0x33, 0x33, 0, 0, 0, 1], source_mac, 0x86dd, &icmpv6(source, all_nodes, 136, &body))
}

/// A neighbour solicitation from `source` for `target`, to `target`'s
/// solicited-node group, with `options` (whole, as bytes).
pub fn neighbour_solicitation(source_mac: Mac, source: Ipv6Addr, target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
    let [.., a, b, c] = target.octets();
    let group = Ipv6Addr::from([0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(a), u16::from_be_bytes([b, c])]);
    let body = [&[0u8; 4][..], &target.octets(), options].concat();
    ethernet([0x33, 0x33, 0xff, a, b, c], source_mac, 0x86dd, &icmpv6(source, group, 135, &body))
}

/// An IPv6 router advertisement from `source` (link-local), offering
/// `prefix`/64 for autoconfiguration and itself as the default router.
pub fn router_advertisement(source_mac: Mac, source: Ipv6Addr, prefix: Ipv6Addr) -> Vec<u8> {
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("an address");
    let mut body = vec![64, 0];
    body.extend(1800u16.to_be_bytes());
    body.extend([0u8; 8]);
    // Source link-layer address option.
    body.extend([1, 1]);
    body.extend(source_mac);
    // Prefix information: on-link and autonomous, valid and preferred for an hour.
    body.extend([3, 4, 64, 0xc0]);
    body.extend(3600u32.to_be_bytes());
    body.extend(3600u32.to_be_bytes());
    body.extend([0u8; 4]);
    body.extend(prefix.octets());
    ethernet([0x33, 0x33, 0, 0, 0, 1], source_mac, 0x86dd, &icmpv6(source, all_nodes, 134, &body))
}

/// Sends `frame`, as it is, out of `ifname` in `ns`.
pub fn send(ns: &Netns, ifname: &str, frame: &[u8]) {
    let name = std::ffi::CString::new(ifname).expect("a name");
    // SAFETY: if_nametoindex reads the NUL-terminated name, alive for the call.
    let index = ns.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) });
    assert!(index > 0, "no interface {ifname}");
    ns.enter(|| {
        // SAFETY: socket takes integers and returns a new descriptor or -1.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(libc::ETH_P_ALL as u16).to_be()) };
        assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        // SAFETY: the kernel just returned this descriptor, owned by no one else.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; zero bytes are a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = i32::try_from(index).expect("an index");
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: sendto reads `frame` and `address`, both alive for the call,
        // with their true lengths.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    });
}

/// A UDP datagram in an IPv4 packet (checksum 0: none, which IPv4 allows).
pub fn udp(
    source: Ipv4Addr,
    destination: Ipv4Addr,
    source_port: u16,
    destination_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut datagram = Vec::new();
    datagram.extend(source_port.to_be_bytes());
    datagram.extend(destination_port.to_be_bytes());
    datagram.extend(u16::try_from(8 + payload.len()).expect("a small datagram").to_be_bytes());
    datagram.extend([0, 0]);
    datagram.extend(payload);
    ipv4(source, destination, 17, &datagram)
}

/// DHCP message types.
pub const DHCPREQUEST: u8 = 3;
/// DHCPDECLINE.
pub const DHCPDECLINE: u8 = 4;
/// DHCPRELEASE.
pub const DHCPRELEASE: u8 = 7;

/// A DHCP client message, as a hostile guest may write it.
#[derive(Clone, Debug)]
pub struct DhcpMessage {
    /// The message type (option 53).
    pub kind: u8,
    /// The client hardware address it claims.
    pub chaddr: Mac,
    /// `ciaddr`: the client's address (releases, renewals).
    pub ciaddr: Ipv4Addr,
    /// Option 61, the client identifier, if any.
    pub client_id: Option<Vec<u8>>,
    /// Option 50, the address asked for, if any.
    pub requested: Option<Ipv4Addr>,
    /// Option 54, the server it is for, if any.
    pub server: Option<Ipv4Addr>,
    /// A transaction id.
    pub xid: u32,
}

impl DhcpMessage {
    /// A message of `kind` about `chaddr`, with nothing else set.
    pub fn new(kind: u8, chaddr: Mac) -> Self {
        Self {
            kind,
            chaddr,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            client_id: None,
            requested: None,
            server: None,
            xid: 0x4b56_4e00,
        }
    }

    /// The BOOTP payload.
    pub fn bytes(&self) -> Vec<u8> {
        let mut message = vec![1, 1, 6, 0];
        message.extend(self.xid.to_be_bytes());
        message.extend([0, 0, 0x80, 0]);
        message.extend(self.ciaddr.octets());
        message.extend([0u8; 12]);
        message.extend(self.chaddr);
        message.extend([0u8; 10 + 64 + 128]);
        message.extend([99, 130, 83, 99]);
        message.extend([53, 1, self.kind]);
        if let Some(id) = &self.client_id {
            message.extend([61, u8::try_from(id.len()).expect("a short id")]);
            message.extend(id);
        }
        if let Some(address) = self.requested {
            message.extend([50, 4]);
            message.extend(address.octets());
        }
        if let Some(address) = self.server {
            message.extend([54, 4]);
            message.extend(address.octets());
        }
        message.push(255);
        message.resize(message.len().max(300), 0);
        message
    }

    /// The whole frame, broadcast from `source_mac` with source address
    /// 0.0.0.0 (as a client without an address sends it).
    pub fn broadcast_from(&self, source_mac: Mac) -> Vec<u8> {
        ethernet(BROADCAST, source_mac, 0x0800, &self.packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST))
    }

    /// The IPv4 packet from `source` to `destination`, port 68 to 67.
    pub fn packet(&self, source: Ipv4Addr, destination: Ipv4Addr) -> Vec<u8> {
        udp(source, destination, 68, 67, &self.bytes())
    }
}

/// A client identifier as DHCP clients make them from a MAC (`01:MAC`).
pub fn client_id_of(mac: Mac) -> Vec<u8> {
    [&[1u8][..], &mac[..]].concat()
}
