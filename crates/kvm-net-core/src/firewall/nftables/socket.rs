//! nf_tables over netlink: single requests and dumps for reading, and one
//! batch (`NFNL_MSG_BATCH_BEGIN ... END`) per change, which the kernel
//! applies all or nothing. The batch carries the generation the changes were
//! computed from: if anyone changed the ruleset since, the kernel refuses it
//! (ERESTART) and the caller reads again, instead of overwriting their change.

use std::io;

use anyhow::{anyhow, Context, Result};
use netlink_packet_netfilter::nftables::{GenAttribute, GenMessage, NfTablesMessage};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use rtnetlink::packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use rtnetlink::sys::{Socket, SocketAddr};

use crate::firewall::plan::Family;

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: isize = 12;
/// `NFNL_SUBSYS_NFTABLES`, the resource id of a batch.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`.
const NFNL_MSG_BATCH_BEGIN: u8 = 16;
/// `NFNL_BATCH_GENID`: the generation a batch expects.
const NFNL_BATCH_GENID: u16 = 1;

impl From<Family> for NetfilterProtoFamily {
    fn from(family: Family) -> Self {
        match family {
            Family::V4 => NetfilterProtoFamily::IPv4,
            Family::V6 => NetfilterProtoFamily::IPv6,
        }
    }
}

/// One change in a batch: its family, message and extra netlink flags
/// (`NLM_F_CREATE`, `NLM_F_APPEND`).
pub struct Change {
    /// Address family of the table it is in.
    pub family: Family,
    /// The message.
    pub message: NfTablesMessage,
    /// Flags beside `NLM_F_REQUEST | NLM_F_ACK`.
    pub flags: u16,
    /// What it does, for the message if the kernel refuses it.
    pub what: String,
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Applied.
    Done,
    /// Refused whole: the ruleset changed since the generation it was computed from.
    Stale,
}

/// A netlink socket for nf_tables.
pub struct Nft {
    socket: Socket,
    sequence: u32,
}

impl Nft {
    /// Opens a socket in this process's network namespace.
    pub fn open() -> Result<Self> {
        let context = "opening a netlink socket for nf_tables";
        let mut socket = Socket::new(NETLINK_NETFILTER).context(context)?;
        socket.bind_auto().context(context)?;
        socket.connect(&SocketAddr::new(0, 0)).context(context)?;
        Ok(Self { socket, sequence: 0 })
    }

    fn frame(
        &mut self,
        family: impl Into<NetfilterProtoFamily>,
        inner: NetfilterMessageInner,
        flags: u16,
        res_id: u16,
    ) -> Vec<u8> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let message = NetfilterMessage::new(NetfilterHeader::new(family.into(), 0, res_id), inner);
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    /// Reads datagrams until `done` says the exchange is over; each message
    /// is handed to `each`. Errors the kernel reports are returned as such.
    fn receive(&self, mut each: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Result<bool>) -> Result<()> {
        let mut datagram: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            datagram.clear();
            self.socket.recv(&mut datagram, 0).context("reading from nf_tables")?;
            let mut offset = 0;
            while offset < datagram.len() {
                let message = NetlinkMessage::<NetfilterMessage>::deserialize(&datagram[offset..])
                    .context("decoding a message from nf_tables")?;
                let length = message.header.length as usize;
                if each(message)? {
                    return Ok(());
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }

    /// Sends one request and collects what it answers: the object for a
    /// get, every object for a dump. `ENOENT` (no such table, chain, set or
    /// element) is an empty answer.
    fn exchange(
        &mut self,
        family: impl Into<NetfilterProtoFamily>,
        message: NfTablesMessage,
        dump: bool,
    ) -> Result<Vec<NfTablesMessage>> {
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        let bytes = self.frame(family, NetfilterMessageInner::NfTables(message), flags, 0);
        self.socket.send(&bytes, 0).context("writing to nf_tables")?;
        let mut answers = Vec::new();
        let mut missing = false;
        self.receive(|reply| match reply.payload {
            NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::NfTables(object), ..
            }) => {
                answers.push(object);
                Ok(!dump)
            }
            NetlinkPayload::Done(_) => Ok(true),
            NetlinkPayload::Error(error) if error.code.is_none() => Ok(true),
            NetlinkPayload::Error(error) if error.to_io().raw_os_error() == Some(libc::ENOENT) => {
                missing = true;
                Ok(true)
            }
            NetlinkPayload::Error(error) => Err(error.to_io()).context("asking nf_tables"),
            _ => Ok(false),
        })?;
        if missing {
            answers.clear();
        }
        Ok(answers)
    }

    /// The object a get request names, if it exists.
    pub fn get(
        &mut self,
        family: impl Into<NetfilterProtoFamily>,
        message: NfTablesMessage,
    ) -> Result<Option<NfTablesMessage>> {
        Ok(self.exchange(family, message, false)?.into_iter().next())
    }

    /// Every object a dump request selects (none if its table is missing).
    pub fn dump(
        &mut self,
        family: impl Into<NetfilterProtoFamily>,
        message: NfTablesMessage,
    ) -> Result<Vec<NfTablesMessage>> {
        self.exchange(family, message, true)
    }

    /// The ruleset's current generation.
    pub fn generation(&mut self) -> Result<u32> {
        let answer = self.get(Family::V4, NfTablesMessage::GetGen(GenMessage { attributes: Vec::new() }))?;
        let generation = match answer {
            Some(NfTablesMessage::NewGen(message)) => message.attributes.into_iter().find_map(|a| match a {
                GenAttribute::Id(id) => Some(id),
                _ => None,
            }),
            _ => None,
        };
        generation.ok_or_else(|| anyhow!("nf_tables did not say its generation"))
    }

    /// Applies `changes` as one batch, if the ruleset is still at `generation`.
    pub fn commit(&mut self, generation: u32, changes: Vec<Change>) -> Result<Committed> {
        if changes.is_empty() {
            return Ok(Committed::Done);
        }
        let genid = DefaultNla::new(NFNL_BATCH_GENID, generation.to_be_bytes().to_vec());
        let begin = ControlMessage::Other { message_type: NFNL_MSG_BATCH_BEGIN, attributes: vec![genid] };
        let mut bytes = self.frame(Family::V4, NetfilterMessageInner::None(begin), NLM_F_REQUEST, NFNL_SUBSYS_NFTABLES);
        let begin_sequence = self.sequence;
        let expected = changes.len();
        let mut purposes = Vec::with_capacity(expected);
        for change in changes {
            let flags = NLM_F_REQUEST | NLM_F_ACK | change.flags;
            let message = NetfilterMessageInner::NfTables(change.message);
            bytes.extend(self.frame(change.family, message, flags, 0));
            purposes.push((self.sequence, change.what));
        }
        bytes.extend(self.frame(
            Family::V4,
            NetfilterMessageInner::None(ControlMessage::BatchEnd),
            NLM_F_REQUEST,
            NFNL_SUBSYS_NFTABLES,
        ));
        self.socket.send(&bytes, 0).context("writing a batch to nf_tables")?;
        // The kernel answers every change it was asked to acknowledge, or
        // the batch's beginning alone if the generation is stale.
        let mut answered = 0;
        let mut stale = false;
        let mut failure: Option<(u32, io::Error)> = None;
        self.receive(|reply| {
            if let NetlinkPayload::Error(error) = reply.payload {
                answered += 1;
                match error.code {
                    None => {}
                    Some(_) if reply.header.sequence_number == begin_sequence => stale = true,
                    Some(_) => {
                        failure.get_or_insert((reply.header.sequence_number, error.to_io()));
                    }
                }
            }
            Ok(stale || answered >= expected)
        })?;
        match (stale, failure) {
            (true, _) => Ok(Committed::Stale),
            (false, Some((sequence, err))) => {
                let what = purposes.into_iter().find(|(s, _)| *s == sequence).map_or_else(String::new, |(_, w)| w);
                Err(err).with_context(|| format!("applying a batch to nf_tables: {what}"))
            }
            (false, None) => Ok(Committed::Done),
        }
    }
}
