//! iptables beside kvm-net's own nf_tables tables. A packet must be accepted
//! by every base chain on its hook, so an accept in kvm-net's table cannot
//! override iptables' `filter FORWARD` when its policy is DROP (Docker sets
//! it). Where that is so, kvm-net adds the narrowest accepts where Docker
//! documents them (the `DOCKER-USER` chain, else `FORWARD` itself), through
//! iptables, and only then; they go with the network. iptables-nft's tables
//! are read over netlink, never written that way.

use anyhow::Result;

use super::iptables::IptablesFirewall;
use super::iptables_rules::{accept_chain, all_chains};
use super::nftables::{foreign_chain, tables};
use super::plan::{Family, Kind, Plan};
use crate::ifname::IfName;
use crate::trace::trace;

/// Why iptables' FORWARD would drop a network's forwarded traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardBlock {
    /// The family.
    pub family: Family,
    /// Docker's `DOCKER-USER` chain exists: the accepts go there.
    pub docker: bool,
    /// `filter FORWARD`'s policy is DROP.
    pub policy_drop: bool,
}

impl ForwardBlock {
    /// Where the accepts are jumped to from.
    pub fn hook(&self) -> &'static str {
        if self.docker {
            "DOCKER-USER"
        } else {
            "FORWARD"
        }
    }
}

/// Whether iptables (nf_tables flavour) of `family` would drop forwarded
/// traffic by policy, or belongs to Docker.
fn blocked(family: Family) -> Result<Option<ForwardBlock>> {
    if !tables(family)?.iter().any(|t| t == "filter") {
        return Ok(None);
    }
    let policy_drop = foreign_chain(family, "filter", "FORWARD")?.is_some_and(|chain| chain.drops);
    let docker = foreign_chain(family, "filter", "DOCKER-USER")?.is_some();
    Ok((policy_drop || docker).then_some(ForwardBlock { family, docker, policy_drop }))
}

/// Why iptables' FORWARD of `family` would drop guests' traffic, if it would.
pub fn forward_blocked(family: Family) -> Result<Option<ForwardBlock>> {
    blocked(family)
}

/// Whether iptables-nft's tables hold any chain kvm-net's iptables backend
/// makes for `bridge` (read over netlink: no process).
pub fn iptables_nft_holds(bridge: &IfName) -> Result<bool> {
    for family in [Family::V4, Family::V6] {
        let present = tables(family)?;
        for chain in all_chains(bridge).into_iter().filter(|c| c.family == family) {
            if present.iter().any(|t| t == chain.table) && foreign_chain(family, chain.table, &chain.name)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Beside the nftables backend: the accepts iptables needs on this host for
/// the plan's forward chains (none where nothing drops), and nothing else
/// of kvm-net's in iptables for the bridge (an upgrade from an iptables-only
/// kvm-net with VMs running, or a backend switched).
pub fn ensure(plan: &Plan, ahead: bool) -> Result<()> {
    let bridge = &plan.bridge;
    let mut wanted = Vec::new();
    let mut stale = false;
    for family in [Family::V4, Family::V6] {
        let present = tables(family)?;
        if !present.iter().any(|t| t == "filter" || t == "nat" || t == "mangle") {
            continue;
        }
        if let (Some(block), Some(chain)) = (blocked(family)?, plan.chain(family, Kind::Forward)) {
            wanted.push(accept_chain(bridge, chain, block.hook()));
        }
        for chain in all_chains(bridge).into_iter().filter(|c| c.family == family) {
            let keep = wanted.iter().any(|w| w.family == family && w.name == chain.name);
            if !keep
                && present.iter().any(|t| t == chain.table)
                && foreign_chain(family, chain.table, &chain.name)?.is_some()
            {
                stale = true;
            }
        }
    }
    if stale {
        trace(format_args!("iptables holds rules of {bridge} that the nftables backend does not use; removing them"));
        let unwanted: Vec<_> = all_chains(bridge)
            .into_iter()
            .filter(|chain| !wanted.iter().any(|w| w.family == chain.family && w.name == chain.name))
            .collect();
        IptablesFirewall.remove_chains(&unwanted)?;
    }
    if !wanted.is_empty() {
        trace(format_args!("iptables FORWARD drops forwarded traffic here: accepting {bridge}'s in it"));
        if ahead {
            IptablesFirewall.ensure_chains_ahead(&wanted)?;
        } else {
            IptablesFirewall.ensure_chains(&wanted)?;
        }
    }
    Ok(())
}
