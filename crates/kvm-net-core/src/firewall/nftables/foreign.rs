//! Other tables' chains and rules (iptables-nft's `filter`, an
//! administrator's `inet filter`, firewalld's), read over netlink, never
//! written: enough of each rule to tell whether a packet can be dropped on
//! its way through a chain.

use std::collections::HashSet;

use anyhow::Result;
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, NfTablesMessage, RuleAttribute, RuleMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::NetfilterProtoFamily;

use super::numbers::*;
use super::socket::{with_nft, Owned};
use crate::kernel::wire;

/// Netfilter hooks (`NF_INET_*`) a base chain may be on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `NF_INET_LOCAL_IN`: packets for the host (DHCP and DNS from guests).
    Input,
    /// `NF_INET_FORWARD`: packets the host routes (guests' traffic).
    Forward,
}

impl Hook {
    fn number(self) -> u32 {
        match self {
            Hook::Input => 1,
            Hook::Forward => 2,
        }
    }

    /// As nft names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
        }
    }
}

/// A chain of someone else's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// The hook it is a base chain of, as `NF_INET_*`; `None` for a chain jumped to.
    pub hook: Option<u32>,
    /// Whether it is a `filter` chain (not `nat` or `route`).
    pub filter: bool,
    /// Whether it is a base chain whose policy is drop.
    pub policy_drop: bool,
}

impl Chain {
    fn from_object(chain: &Owned) -> Option<Self> {
        let hook = chain.attribute(NFTA_CHAIN_HOOK).and_then(|h| wire::attribute(h, NFTA_HOOK_HOOKNUM)).map(be32);
        Some(Self {
            name: chain.string(NFTA_CHAIN_NAME)?.to_owned(),
            hook,
            filter: chain.string(NFTA_CHAIN_TYPE).is_none_or(|t| t == "filter"),
            policy_drop: hook.is_some() && chain.u32(NFTA_CHAIN_POLICY) == Some(libc::NF_DROP as u32),
        })
    }

    /// Whether it is a filter base chain on `hook`.
    pub fn filters(&self, hook: Hook) -> bool {
        self.filter && self.hook == Some(hook.number())
    }
}

/// Where a rule sends a packet it matches, as far as drops go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped or rejected (`drop`, `reject`, iptables' `-j DROP`, `-j REJECT`).
    Drop,
    /// On to another chain (`jump`, `goto`, iptables' `-j CHAIN`).
    Chain(String),
    /// Anything else (accept, return, a mark, a counter, NAT).
    Other,
}

/// One rule of someone else's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The chain it is in.
    pub chain: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// The values it compares with (interface names among them).
    pub compares: Vec<Vec<u8>>,
}

fn be32(value: &[u8]) -> u32 {
    u32::from_be_bytes(wire::word(value))
}

impl Rule {
    fn from_object(rule: &Owned) -> Option<Self> {
        let mut verdict = Verdict::Other;
        let mut compares = Vec::new();
        let expressions = rule.attribute(NFTA_RULE_EXPRESSIONS).unwrap_or_default();
        for (_, expression) in wire::attributes(expressions).filter(|(kind, _)| *kind == NFTA_LIST_ELEM) {
            let name = wire::attribute(expression, NFTA_EXPR_NAME).and_then(wire::string).unwrap_or_default();
            let data = wire::attribute(expression, NFTA_EXPR_DATA).unwrap_or_default();
            match name {
                "reject" => verdict = Verdict::Drop,
                "target" => {
                    if matches!(wire::attribute(data, NFTA_TARGET_NAME).and_then(wire::string), Some("DROP" | "REJECT"))
                    {
                        verdict = Verdict::Drop;
                    }
                }
                "immediate"
                    if wire::attribute(data, NFTA_IMMEDIATE_DREG).map(be32) == Some(libc::NFT_REG_VERDICT as u32) =>
                {
                    let Some(code) =
                        wire::attribute(data, NFTA_IMMEDIATE_DATA).and_then(|d| wire::attribute(d, NFTA_DATA_VERDICT))
                    else {
                        continue;
                    };
                    let number = wire::attribute(code, NFTA_VERDICT_CODE).map(|c| be32(c) as i32);
                    let target = wire::attribute(code, NFTA_VERDICT_CHAIN).and_then(wire::string);
                    verdict = match (number, target) {
                        (Some(libc::NF_DROP), _) => Verdict::Drop,
                        (Some(libc::NFT_JUMP | libc::NFT_GOTO), Some(chain)) => Verdict::Chain(chain.to_owned()),
                        _ => Verdict::Other,
                    };
                }
                "cmp" => {
                    if let Some(value) =
                        wire::attribute(data, NFTA_CMP_DATA).and_then(|d| wire::attribute(d, NFTA_DATA_VALUE))
                    {
                        compares.push(value.to_vec());
                    }
                }
                _ => {}
            }
        }
        Some(Self { chain: rule.string(NFTA_RULE_CHAIN)?.to_owned(), verdict, compares })
    }

    /// Whether it compares something with the interface name `name`.
    pub fn names_interface(&self, name: &str) -> bool {
        self.compares.iter().any(|value| {
            value.strip_prefix(name.as_bytes()).is_some_and(|rest| !rest.is_empty() && rest.iter().all(|b| *b == 0))
        })
    }
}

/// The names of the tables of `family`.
pub fn tables(family: impl Into<NetfilterProtoFamily>) -> Result<Vec<String>> {
    let request = NfTablesMessage::GetTable(TableMessage { attributes: Vec::new() });
    let tables = with_nft(|nft| nft.dump(family, request))?;
    Ok(tables.into_iter().filter_map(|t| t.string(NFTA_TABLE_NAME).map(str::to_owned)).collect())
}

/// Whether firewalld runs in this network namespace: its nftables
/// backend keeps `table inet firewalld` for as long as it runs.
pub fn firewalld_runs() -> Result<bool> {
    has_table(NetfilterProtoFamily::Inet, "firewalld")
}

/// Whether `family` has a table called `table`.
pub fn has_table(family: impl Into<NetfilterProtoFamily>, table: &str) -> Result<bool> {
    let request = NfTablesMessage::GetTable(TableMessage { attributes: vec![TableAttribute::Name(table.to_owned())] });
    with_nft(|nft| Ok(nft.get(family, request)?.is_some()))
}

/// Every chain of `table`.
pub fn chains(family: impl Into<NetfilterProtoFamily>, table: &str) -> Result<Vec<Chain>> {
    let request = NfTablesMessage::GetChain(ChainMessage { attributes: vec![ChainAttribute::Table(table.to_owned())] });
    let chains = with_nft(|nft| nft.dump(family, request))?;
    // The kernel lists every table's chains: keep this one's.
    Ok(chains
        .iter()
        .filter(|chain| chain.string(super::NFTA_CHAIN_TABLE) == Some(table))
        .filter_map(Chain::from_object)
        .collect())
}

/// The chain `chain` of `table`, if it exists.
pub fn chain(family: impl Into<NetfilterProtoFamily>, table: &str, chain: &str) -> Result<Option<Chain>> {
    let request = NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![ChainAttribute::Table(table.to_owned()), ChainAttribute::Name(chain.to_owned())],
    });
    let chain = with_nft(|nft| nft.get(family, request))?;
    Ok(chain.as_ref().and_then(Chain::from_object))
}

/// Every rule of `table`, in order, chain by chain.
pub fn rules(family: impl Into<NetfilterProtoFamily>, table: &str) -> Result<Vec<Rule>> {
    let request = NfTablesMessage::GetRule(RuleMessage { attributes: vec![RuleAttribute::Table(table.to_owned())] });
    let rules = with_nft(|nft| nft.dump(family, request))?;
    Ok(rules.iter().filter_map(Rule::from_object).collect())
}

/// Whether a packet can be dropped on its way through `chain`: a rule of
/// it drops, or jumps (or goes) to a chain through which it can be. Chains
/// whose name starts with `own` (kvm-net's, whose drops are meant) are not
/// followed.
pub fn drops_through(rules: &[Rule], chain: &str, own: &str) -> bool {
    let mut seen = HashSet::new();
    let mut pending = vec![chain.to_owned()];
    while let Some(name) = pending.pop() {
        if name.starts_with(own) || !seen.insert(name.clone()) {
            continue;
        }
        for rule in rules.iter().filter(|rule| rule.chain == name) {
            match &rule.verdict {
                Verdict::Drop => return true,
                Verdict::Chain(next) => pending.push(next.clone()),
                Verdict::Other => {}
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(chain: &str, verdict: Verdict) -> Rule {
        Rule { chain: chain.to_owned(), verdict, compares: Vec::new() }
    }

    #[test]
    fn a_drop_counts_wherever_a_jump_leads() {
        let rules = [
            rule("FORWARD", Verdict::Other),
            rule("FORWARD", Verdict::Chain("HOST".to_owned())),
            rule("HOST", Verdict::Chain("FORWARD".to_owned())),
            rule("HOST", Verdict::Chain("LOG".to_owned())),
            rule("LOG", Verdict::Drop),
            rule("INPUT", Verdict::Other),
        ];
        assert!(drops_through(&rules, "FORWARD", "KVMNET-"));
        assert!(drops_through(&rules, "LOG", "KVMNET-"));
        assert!(!drops_through(&rules, "FORWARD", "LOG"), "a chain of kvm-net's own is not followed");
        assert!(!drops_through(&rules, "INPUT", "KVMNET-"));
        assert!(!drops_through(&rules, "MISSING", "KVMNET-"));
    }

    #[test]
    fn interface_names_are_compared_whole() {
        let named = Rule { compares: vec![b"br0\0".to_vec(), b"eth0\0\0\0".to_vec()], ..rule("f", Verdict::Other) };
        assert!(named.names_interface("br0"));
        assert!(named.names_interface("eth0"));
        assert!(!named.names_interface("br"));
        assert!(!named.names_interface("br00"));
    }
}
