//! What a warm start may take for granted. Every change to nf_tables in a
//! network namespace moves its generation, so when the generation is the
//! one recorded after a check that found kvm-net's rules whole (and changed
//! nothing), for the same bridge and the same plan, nothing in nf_tables
//! has changed since: not kvm-net's tables, not iptables-nft's (Docker's,
//! the accepts beside a host's drops), not firewalld's. The record lives in
//! the bridge's lock file, root's alone and read under the lock: one read
//! and one request stand for a dozen dumps. Anything else (a generation
//! moved by anyone, another plan, another bridge) means the full check.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::firewall::{Backend, Plan};

/// A check that found a network's rules whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// nf_tables' generation before and after the check.
    pub generation: u32,
    /// The bridge's interface index (a bridge made again is another).
    pub bridge: u32,
    /// What the rules were checked against ([`fingerprint`]).
    pub fingerprint: u64,
}

/// The plan and backend a record was made for, reduced to a number. Not
/// stable across kvm-net releases, which only costs one full check.
pub fn fingerprint(plan: &Plan, backend: Backend) -> u64 {
    let mut hasher = DefaultHasher::new();
    plan.hash(&mut hasher);
    backend.hash(&mut hasher);
    hasher.finish()
}

/// The first word of a record, so that a lock file holding anything else is
/// never taken for one.
const MAGIC: &str = "kvm-net-rules-whole";

impl Record {
    /// The record as kept: one line.
    pub fn text(&self) -> String {
        format!("{MAGIC} {} {} {:016x}\n", self.generation, self.bridge, self.fingerprint)
    }

    /// A record read back; `None` for anything that is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.strip_suffix('\n')?.split(' ');
        if words.next()? != MAGIC {
            return None;
        }
        let record = Self {
            generation: words.next()?.parse().ok()?,
            bridge: words.next()?.parse().ok()?,
            fingerprint: u64::from_str_radix(words.next()?, 16).ok()?,
        };
        words.next().is_none().then_some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_nothing_else_passes_for_one() {
        let record = Record { generation: 42, bridge: 7, fingerprint: 0xdead_beef };
        assert_eq!(Record::parse(&record.text()), Some(record));
        for text in ["", "\n", "kvm-net-rules-whole 42 7\n", "kvm-net-rules-whole 42 7 beef 1\n", "other 42 7 beef\n"] {
            assert_eq!(Record::parse(text), None, "{text:?}");
        }
        assert_eq!(Record::parse("kvm-net-rules-whole 42 7 beef"), None, "a record cut short");
    }
}
