//! Netlink messages as bytes, for the two netlink protocols kvm-net speaks
//! (rtnetlink for links and addresses, nf_tables for its firewall): building
//! a request (header, family header, attributes) and reading the answers,
//! attribute by attribute, only as far as kvm-net needs. General-purpose
//! netlink crates decode every attribute of every message into types: that
//! cost more than the requests themselves, and most of a helper's size.

use std::io;

use anyhow::{Context, Result};
use netlink_sys::Socket;

/// `struct nlmsghdr`.
const NLMSG_HEADER: usize = std::mem::size_of::<libc::nlmsghdr>();
/// libc's netlink numbers are `c_int`; in a message they are `u16`.
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLA_F_NESTED: u16 = libc::NLA_F_NESTED as u16;
/// The bits of an attribute's type that are not flags.
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

/// Request flags (`NLM_F_*`), as a message's header carries them.
pub const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
/// The kernel answers with an ack (or an error).
pub const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
/// Fail if it exists.
pub const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
/// Create if it does not exist.
pub const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;
/// Add at the end.
pub const NLM_F_APPEND: u16 = libc::NLM_F_APPEND as u16;
/// Every matching object.
pub const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;

fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// A request being built: netlink header, the protocol's family header, then attributes.
pub struct Request {
    bytes: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    /// A request of `kind` with `flags` (`NLM_F_REQUEST` is added) and the
    /// protocol's fixed header.
    pub fn new(kind: u16, flags: u16, header: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(header);
        bytes.resize(align(bytes.len()), 0);
        Self { bytes, nests: Vec::new() }
    }

    /// Adds an attribute.
    pub fn bytes(mut self, kind: u16, value: &[u8]) -> Self {
        let length = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.resize(align(self.bytes.len()), 0);
        self
    }

    /// Adds a string attribute (NUL-terminated).
    pub fn string(self, kind: u16, value: &str) -> Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes)
    }

    /// Adds a 32-bit attribute in host byte order (rtnetlink's).
    pub fn u32(self, kind: u16, value: u32) -> Self {
        self.bytes(kind, &value.to_ne_bytes())
    }

    /// Opens a nested attribute; attributes added until [`Request::end`] go in it.
    pub fn begin(mut self, kind: u16) -> Self {
        self.nests.push(self.bytes.len());
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Closes the nested attribute opened last.
    pub fn end(mut self) -> Self {
        if let Some(start) = self.nests.pop() {
            let length = u16::try_from(self.bytes.len() - start).unwrap_or(u16::MAX);
            self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        }
        self
    }

    /// The message, numbered `sequence`.
    pub fn finish(mut self, sequence: u32) -> Vec<u8> {
        let length = u32::try_from(self.bytes.len()).unwrap_or(u32::MAX);
        self.bytes[0..4].copy_from_slice(&length.to_ne_bytes());
        self.bytes[8..12].copy_from_slice(&sequence.to_ne_bytes());
        self.bytes
    }
}

/// The attributes of a message body, or of a nested attribute: type
/// (without flags) and value.
pub fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > bytes.len() {
            return None;
        }
        let value = &bytes[4..length];
        bytes = &bytes[align(length).min(bytes.len())..];
        Some((kind, value))
    })
}

/// The first attribute of `kind` among `bytes`.
pub fn attribute(bytes: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(bytes).find(|(k, _)| *k == kind).map(|(_, value)| value)
}

/// A string attribute's value, without its NUL.
pub fn string(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value.strip_suffix(&[0]).unwrap_or(value)).ok()
}

/// The first four bytes of `bytes` (zero-padded).
pub fn word(bytes: &[u8]) -> [u8; 4] {
    let mut word = [0; 4];
    let n = bytes.len().min(4);
    word[..n].copy_from_slice(&bytes[..n]);
    word
}

/// A 32-bit value in host byte order at `offset`.
pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(word(bytes.get(offset..).unwrap_or_default()))
}

/// Hands each message of `datagram` to `each`; whether it said the exchange is over.
fn dispatch(mut datagram: &[u8], each: &mut impl FnMut(Received<'_>) -> Result<bool>) -> Result<bool> {
    while datagram.len() >= NLMSG_HEADER {
        let length = usize::try_from(u32_at(datagram, 0)).unwrap_or(usize::MAX).clamp(NLMSG_HEADER, datagram.len());
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        let sequence = u32_at(datagram, 8);
        let body = &datagram[NLMSG_HEADER..length];
        let received = match kind {
            NLMSG_DONE => Received::Done { sequence },
            // The code is an i32 ahead of a copy of the request it answers; 0 is an ack.
            NLMSG_ERROR => Received::Error { sequence, code: i32::from_ne_bytes(word(body)) },
            _ => Received::Object { sequence, kind, body },
        };
        if each(received)? {
            return Ok(true);
        }
        datagram = &datagram[align(length).min(datagram.len())..];
    }
    Ok(false)
}

/// What the kernel sent.
pub enum Received<'a> {
    /// An object answering the request numbered `sequence`: its message
    /// type, and its body (family header, then attributes).
    Object { sequence: u32, kind: u16, body: &'a [u8] },
    /// The end of the dump asked for by the request numbered `sequence`.
    Done { sequence: u32 },
    /// An error (negative errno), or an ack (0), for the request numbered `sequence`.
    Error { sequence: u32, code: i32 },
}

/// An object kept after its datagram is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Its message type.
    pub kind: u16,
    /// Its body: family header, then attributes.
    pub body: Vec<u8>,
}

/// A netlink socket of one protocol, with its receive buffer and sequence numbers.
pub struct Channel {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl Channel {
    /// Opens a socket of `protocol` in this process's network namespace.
    pub fn open(protocol: isize) -> Result<Self> {
        // Neither bound nor connected: the kernel binds it on the first send,
        // and unaddressed messages go to the kernel.
        let socket = Socket::new(protocol).context("opening a netlink socket")?;
        Ok(Self { socket, buffer: Vec::with_capacity(64 * 1024), sequence: 0 })
    }

    /// Asks the kernel to check requests strictly, and so to honour the
    /// filters of dumps (an address dump then answers one link's addresses,
    /// not every one of the namespace).
    pub fn check_strictly(&self) -> Result<()> {
        self.socket.set_netlink_get_strict_chk(true).context("asking netlink for strict checking")
    }

    /// Joins the multicast group `group`: the kernel's notifications of its
    /// kind arrive on this socket from now on.
    pub fn subscribe(&mut self, group: u32) -> Result<()> {
        // Bound first: the kernel skips a socket whose port id is still 0
        // (its own) when it sends a notification.
        self.socket.bind_auto().context("binding a netlink socket")?;
        self.socket.add_membership(group).context("subscribing to netlink notifications")
    }

    /// The next sequence number.
    pub fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Sends `bytes` (one or more finished requests).
    pub fn send(&self, bytes: &[u8]) -> Result<()> {
        self.socket.send(bytes, 0).context("writing to netlink").map(drop)
    }

    /// Reads datagrams, handing each message to `each` until it says the
    /// exchange is over.
    pub fn receive(&mut self, mut each: impl FnMut(Received<'_>) -> Result<bool>) -> Result<()> {
        loop {
            self.read(0)?;
            if dispatch(&self.buffer, &mut each)? {
                return Ok(());
            }
        }
    }

    /// [`Channel::receive`] for the first answer of a dump that is likely to
    /// be decided by its first datagram: on reading a datagram the kernel
    /// prepares the dump's next one (tens of microseconds per link, each time)
    /// unless that datagram is still queued and the receive buffer is small.
    /// So the receive buffer is made as small as the kernel allows, the
    /// first datagram is only peeked at, and read for good only when it did
    /// not decide.
    pub fn receive_dump_head(&mut self, mut each: impl FnMut(Received<'_>) -> Result<bool>) -> Result<()> {
        self.socket.set_rx_buf_sz(1).context("shrinking a netlink socket's receive buffer")?;
        self.read(libc::MSG_PEEK)?;
        if dispatch(&self.buffer, &mut each)? {
            return Ok(());
        }
        self.read(0)?;
        self.receive(each)
    }

    fn read(&mut self, flags: libc::c_int) -> Result<()> {
        self.buffer.clear();
        self.socket.recv(&mut self.buffer, flags).context("reading from netlink").map(drop)
    }

    /// Sends one request and collects what it answers: every object of a
    /// dump, the object of a get, nothing for an acknowledged change. An
    /// error whose code is in `absent` (no such link, table, ...) is an
    /// empty answer; any other is returned.
    pub fn exchange(&mut self, request: Request, dump: bool, absent: &[i32]) -> Result<Vec<Object>, io::Error> {
        let sequence = self.next_sequence();
        self.exchange_message(sequence, &request.finish(sequence), dump, absent)
    }

    /// [`Channel::exchange`] for a message already framed, numbered `sequence`.
    pub fn exchange_message(
        &mut self,
        sequence: u32,
        message: &[u8],
        dump: bool,
        absent: &[i32],
    ) -> Result<Vec<Object>, io::Error> {
        self.socket.send(message, 0)?;
        let mut objects = Vec::new();
        let mut failure = None;
        // Answers to an earlier request (one abandoned by an error) are skipped.
        let receiving = self.receive(|received| match received {
            Received::Object { sequence: answered, .. }
            | Received::Done { sequence: answered }
            | Received::Error { sequence: answered, .. }
                if answered != sequence =>
            {
                Ok(false)
            }
            Received::Object { kind, body, .. } => {
                objects.push(Object { kind, body: body.to_vec() });
                Ok(!dump)
            }
            Received::Done { .. } => Ok(true),
            Received::Error { code: 0, .. } => Ok(true),
            Received::Error { code, .. } => {
                if !absent.contains(&-code) {
                    failure = Some(io::Error::from_raw_os_error(-code));
                }
                objects.clear();
                Ok(true)
            }
        });
        if let Err(err) = receiving {
            return Err(io::Error::other(format!("{err:#}")));
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(objects),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_attribute_by_attribute() {
        let bytes = Request::new(18, NLM_F_ACK, &[0; 16])
            .string(3, "br0")
            .u32(4, 1500)
            .begin(18)
            .string(1, "bridge")
            .end()
            .finish(7);
        assert_eq!(u32_at(&bytes, 0) as usize, bytes.len());
        assert_eq!(u32_at(&bytes, 8), 7);
        let body = &bytes[NLMSG_HEADER + 16..];
        assert_eq!(attribute(body, 3).and_then(string), Some("br0"));
        assert_eq!(attribute(body, 4).map(|v| u32::from_ne_bytes(word(v))), Some(1500));
        let info = attribute(body, 18).expect("nested");
        assert_eq!(attribute(info, 1).and_then(string), Some("bridge"));
        assert_eq!(attributes(body).count(), 3);
    }
}
