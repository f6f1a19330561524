//! Firewall state kvm-net owns: chains of its own, each reached by one jump
//! from a built-in chain, so that its rules can be found and removed exactly.

mod iptables;
mod rules;

use anyhow::Result;

pub use self::iptables::IptablesFirewall;
pub use self::rules::{all_chains, network_chains, Family, OwnChain};

/// A firewall backend; iptables today, nftables may follow.
pub trait Firewall {
    /// Makes each chain exist with exactly its rules and one jump to it,
    /// adding what is missing and leaving everything else alone.
    fn ensure(&self, chains: &[OwnChain]) -> Result<()>;

    /// As [`Firewall::ensure`], and moves each jump that a DROP or REJECT
    /// rule precedes in its built-in chain to the top: what `kvm-net repair`
    /// does when an administrator asks for it, never a VM start.
    fn ensure_ahead(&self, chains: &[OwnChain]) -> Result<()>;

    /// Deletes the jumps to each chain and the chain itself; what is already
    /// gone counts as removed. Nothing outside these chains is touched.
    fn remove(&self, chains: &[OwnChain]) -> Result<()>;

    /// How each chain compares with its plan, without changing anything.
    fn state(&self, chains: &[OwnChain]) -> Result<Vec<ChainState>>;

    /// The rules of a built-in chain that come before kvm-net's jump to
    /// `chain` and drop or reject traffic, plus the chain's policy.
    fn drops_before(&self, family: Family, table: &str, hook: &str, chain: &str) -> Result<DropsBefore>;
}

/// One chain of kvm-net's as the firewall has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    /// iptables or ip6tables.
    pub family: Family,
    /// Its table.
    pub table: &'static str,
    /// Its name.
    pub name: String,
    /// How it compares with the plan.
    pub state: RuleState,
}

/// How a chain compares with its plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleState {
    /// Chain, rules and exactly one jump, as planned.
    Ok,
    /// The chain does not exist.
    Missing,
    /// The chain exists with other rules.
    Differs,
    /// The chain is right, but nothing jumps to it.
    NoJump,
}

/// What may stop traffic in a built-in chain before kvm-net's rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropsBefore {
    /// The chain's policy (`ACCEPT`, `DROP`).
    pub policy: String,
    /// Whether kvm-net's jump is there at all.
    pub jump_present: bool,
    /// `-A HOOK ... -j DROP|REJECT` rules ahead of the jump (all of them when there is no jump).
    pub rules: Vec<String>,
}
