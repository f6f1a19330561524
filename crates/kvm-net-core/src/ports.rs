//! Transport protocols and port ranges, as the config's forwards and the
//! firewall's rules speak of them.

use std::fmt;

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as the config, iptables and nft write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// Reads `tcp` or `udp`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Its IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port, or a range of them, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (`first` for a single port).
    pub last: u16,
}

impl PortRange {
    /// A single port.
    pub fn single(port: u16) -> Self {
        Self { first: port, last: port }
    }

    /// Reads `2222` or `8000-8010`: ports 1-65535, the first not after the last.
    pub fn parse(text: &str) -> Result<Self, String> {
        let port = |part: &str| -> Result<u16, String> {
            match part.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{part:?} is not a port (1-65535)")),
                Ok(port) => Ok(port),
            }
        };
        let range = match text.split_once('-') {
            Some((first, last)) => Self { first: port(first)?, last: port(last)? },
            None => Self::single(port(text)?),
        };
        if range.first > range.last {
            return Err(format!("{text:?}: {} comes after {}", range.first, range.last));
        }
        Ok(range)
    }

    /// How many ports it holds.
    pub fn count(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether it is one port.
    pub fn is_single(&self) -> bool {
        self.first == self.last
    }

    /// Whether it has a port in common with `other`.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether it holds `port`.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_read_back_as_written() {
        assert_eq!(PortRange::parse("2222"), Ok(PortRange::single(2222)));
        let range = PortRange::parse("8000-8010").expect("range");
        assert_eq!((range.first, range.last, range.count()), (8000, 8010, 11));
        assert_eq!(range.to_string(), "8000-8010");
        for bad in ["0", "65536", "x", "10-9", "1-", "-5", ""] {
            assert!(PortRange::parse(bad).is_err(), "{bad:?}");
        }
        assert!(range.overlaps(&PortRange::single(8010)) && !range.overlaps(&PortRange::single(8011)));
    }
}
