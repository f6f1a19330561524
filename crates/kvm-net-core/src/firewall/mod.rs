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

    /// Deletes the jumps to each chain and the chain itself; what is already
    /// gone counts as removed. Nothing outside these chains is touched.
    fn remove(&self, chains: &[OwnChain]) -> Result<()>;
}
