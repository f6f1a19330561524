//! nf_tables over netlink: single requests and dumps for reading, and one
//! batch (`NFNL_MSG_BATCH_BEGIN ... END`) per change, which the kernel
//! applies all or nothing. The batch carries the generation the changes were
//! computed from: if anyone changed the ruleset since, the kernel refuses it
//! (ERESTART) and the caller reads again, instead of overwriting their change.

use std::io;
use std::sync::{Mutex, PoisonError};

use anyhow::{anyhow, Context, Result};
use netlink_packet_core::{DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nftables::{GenMessage, NfTablesMessage};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};

use super::numbers::{NFGENMSG, NFTA_GEN_ID};
use crate::firewall::plan::Family;
use crate::kernel::wire::{self, Channel, Object, Received, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

/// `NFNL_SUBSYS_NFTABLES`, the resource id of a batch.
const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
/// `NFNL_MSG_BATCH_BEGIN`.
const NFNL_MSG_BATCH_BEGIN: u8 = libc::NFNL_MSG_BATCH_BEGIN as u8;
/// `NFNL_BATCH_GENID`: the generation a batch expects.
const NFNL_BATCH_GENID: u16 = libc::NFNL_BATCH_GENID as u16;

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
    pub family: NetfilterProtoFamily,
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
    channel: Channel,
}

/// The process's one nf_tables socket, opened on first use and closed only
/// at exit. Closing a socket after a batch that deleted something waits for
/// the kernel to free it (an RCU grace period, 10-20 ms) while holding
/// nf_tables' commit lock, which deleting a bridge takes too: a socket
/// closed right after the rules went made kvm-natdown wait for both in turn.
/// Kept open, the kernel frees them while the bridge goes.
static SHARED: Mutex<Option<Nft>> = Mutex::new(None);

/// Forgets the process's nf_tables socket without closing it: for a child
/// of `fork` that closes its inherited descriptors itself (the watcher).
pub fn forget_shared() {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::forget(shared.take());
}

/// Runs `work` with the process's nf_tables socket.
pub fn with_nft<T>(work: impl FnOnce(&mut Nft) -> Result<T>) -> Result<T> {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    let nft = match &mut *shared {
        Some(nft) => nft,
        None => shared.insert(Nft::open()?),
    };
    work(nft)
}

impl Nft {
    /// Opens a socket in this process's network namespace.
    fn open() -> Result<Self> {
        Ok(Self { channel: Channel::open(libc::NETLINK_NETFILTER as isize).context("talking to nf_tables")? })
    }

    /// `inner` framed as one message, numbered with the next sequence number.
    fn frame(
        &mut self,
        family: impl Into<NetfilterProtoFamily>,
        inner: NetfilterMessageInner,
        flags: u16,
        res_id: u16,
    ) -> (u32, Vec<u8>) {
        let sequence = self.channel.next_sequence();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let message = NetfilterMessage::new(NetfilterHeader::new(family.into(), 0, res_id), inner);
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        (sequence, bytes)
    }

    /// Sends one request and collects what it answers: the object for a
    /// get, every object for a dump. `ENOENT` (no such table, chain, set or
    /// element) is an empty answer.
    fn exchange(
        &mut self,
        family: impl Into<NetfilterProtoFamily>,
        message: NfTablesMessage,
        dump: bool,
    ) -> Result<Vec<Owned>> {
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        let (sequence, bytes) = self.frame(family, NetfilterMessageInner::NfTables(message), flags, 0);
        let objects =
            self.channel.exchange_message(sequence, &bytes, dump, &[libc::ENOENT]).context("asking nf_tables")?;
        Ok(objects.into_iter().map(Owned::from).collect())
    }

    /// The object a get request names, if it exists.
    pub fn get(&mut self, family: impl Into<NetfilterProtoFamily>, message: NfTablesMessage) -> Result<Option<Owned>> {
        Ok(self.exchange(family, message, false)?.into_iter().next())
    }

    /// Every object a dump request selects (none if its table is missing).
    pub fn dump(&mut self, family: impl Into<NetfilterProtoFamily>, message: NfTablesMessage) -> Result<Vec<Owned>> {
        self.exchange(family, message, true)
    }

    /// The ruleset's current generation.
    pub fn generation(&mut self) -> Result<u32> {
        let answer = self.get(Family::V4, NfTablesMessage::GetGen(GenMessage { attributes: Vec::new() }))?;
        answer.and_then(|gen| gen.u32(NFTA_GEN_ID)).ok_or_else(|| anyhow!("nf_tables did not say its generation"))
    }

    /// Applies `changes` as one batch, if the ruleset is still at `generation`.
    pub fn commit(&mut self, generation: u32, changes: Vec<Change>) -> Result<Committed> {
        if changes.is_empty() {
            return Ok(Committed::Done);
        }
        let genid = DefaultNla::new(NFNL_BATCH_GENID, generation.to_be_bytes().to_vec());
        let begin = ControlMessage::Other { message_type: NFNL_MSG_BATCH_BEGIN, attributes: vec![genid] };
        let (begin_sequence, mut bytes) =
            self.frame(Family::V4, NetfilterMessageInner::None(begin), NLM_F_REQUEST, NFNL_SUBSYS_NFTABLES);
        let expected = changes.len();
        let mut purposes = Vec::with_capacity(expected);
        for change in changes {
            let flags = NLM_F_REQUEST | NLM_F_ACK | change.flags;
            let message = NetfilterMessageInner::NfTables(change.message);
            let (sequence, framed) = self.frame(change.family, message, flags, 0);
            bytes.extend(framed);
            purposes.push((sequence, change.what));
        }
        let (_, end) = self.frame(
            Family::V4,
            NetfilterMessageInner::None(ControlMessage::BatchEnd),
            NLM_F_REQUEST,
            NFNL_SUBSYS_NFTABLES,
        );
        bytes.extend(end);
        self.channel.send(&bytes).context("writing a batch to nf_tables")?;
        // The kernel answers every change it was asked to acknowledge, or
        // the batch's beginning alone if the generation is stale.
        let mut answered = 0;
        let mut stale = false;
        let mut failure: Option<(u32, io::Error)> = None;
        self.channel.receive(|received| {
            // Answers to an earlier request (one abandoned by an error) are skipped.
            if let Received::Error { sequence, code } = received {
                if sequence < begin_sequence {
                    return Ok(false);
                }
                answered += 1;
                match code {
                    0 => {}
                    _ if sequence == begin_sequence => stale = true,
                    _ => {
                        failure.get_or_insert((sequence, io::Error::from_raw_os_error(-code)));
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

/// An nf_tables object kept after its datagram is gone, read attribute by attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// `NFT_MSG_NEW*` of the object's kind.
    pub kind: u8,
    attributes: Vec<u8>,
}

impl From<Object> for Owned {
    fn from(object: Object) -> Self {
        let attributes = object.body.get(NFGENMSG..).unwrap_or_default().to_vec();
        Self { kind: (object.kind & 0xff) as u8, attributes }
    }
}

impl Owned {
    /// Its attribute of `kind`.
    pub fn attribute(&self, kind: u16) -> Option<&[u8]> {
        wire::attribute(&self.attributes, kind)
    }

    /// Its string attribute of `kind`.
    pub fn string(&self, kind: u16) -> Option<&str> {
        self.attribute(kind).and_then(wire::string)
    }

    /// Its 32-bit (big-endian, as nf_tables sends them) attribute of `kind`.
    pub fn u32(&self, kind: u16) -> Option<u32> {
        self.attribute(kind).filter(|v| v.len() == 4).map(|v| u32::from_be_bytes(wire::word(v)))
    }
}
