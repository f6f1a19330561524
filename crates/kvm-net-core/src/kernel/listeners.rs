//! The sockets local processes listen on, from `/proc/net` (this
//! process's network namespace): what a port forward would take
//! connections away from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ports::Protocol;

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// TCP (listening) or UDP (bound, not connected).
    pub protocol: Protocol,
    /// The address it is bound to (unspecified: every address).
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
}

/// `TCP_LISTEN`, and `TCP_CLOSE`, the state of a bound UDP socket.
const TCP_LISTEN: &str = "0A";
const UDP_BOUND: &str = "07";

/// Every listening TCP socket and bound UDP socket, IPv4 and IPv6.
pub fn listeners() -> Vec<Listener> {
    let tables = [
        ("/proc/self/net/tcp", Protocol::Tcp, TCP_LISTEN),
        ("/proc/self/net/tcp6", Protocol::Tcp, TCP_LISTEN),
        ("/proc/self/net/udp", Protocol::Udp, UDP_BOUND),
        ("/proc/self/net/udp6", Protocol::Udp, UDP_BOUND),
    ];
    let mut found = Vec::new();
    for (path, protocol, listening) in tables {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        found.extend(text.lines().skip(1).filter_map(|line| parse(line, protocol, listening)));
    }
    found
}

/// One line of `/proc/net/tcp` (or its kin): `sl local rem st ...`, with
/// the local address in hex, as the kernel stores it (32-bit words in host order).
fn parse(line: &str, protocol: Protocol, listening: &str) -> Option<Listener> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != listening {
        return None;
    }
    let (address, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..address.len() / 8)
        .map(|i| address.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let address = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(Listener { protocol, address, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_hex() {
        let line = "   0: 00000000:08AE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let listener = parse(line, Protocol::Tcp, TCP_LISTEN).expect("a listener");
        assert_eq!((listener.address, listener.port), (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 2222));
        let local = "   1: 0100007F:1F90 00000000:0000 0A 0 0 0 0 0 1";
        assert_eq!(parse(local, Protocol::Tcp, TCP_LISTEN).map(|l| l.address), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let connected = "   2: 0100007F:1F90 0100007F:D431 01 0 0 0 0 0 1";
        assert_eq!(parse(connected, Protocol::Tcp, TCP_LISTEN), None);
        let v6 = "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1";
        assert_eq!(parse(v6, Protocol::Tcp, TCP_LISTEN).map(|l| l.address), Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }
}
