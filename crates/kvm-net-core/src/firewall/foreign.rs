//! Other firewalls beside kvm-net's own nf_tables tables. A packet must be
//! accepted by every base chain on its hook, so an accept in kvm-net's table
//! cannot undo a drop in another table. iptables (its nf_tables flavour) is
//! the one other firewall kvm-net writes to, and only where its `filter`
//! table would drop what a network needs: Docker's FORWARD, a DROP policy,
//! or a DROP or REJECT rule reachable from FORWARD or INPUT (the
//! iptables-services default of RHEL and CentOS ends both in `-j REJECT`).
//! There kvm-net adds the narrowest accepts ahead of everything else (in
//! Docker's `DOCKER-USER` chain where Docker documents them), through
//! iptables, and removes them with the network. iptables-nft's tables are
//! read over netlink, never written that way; other tables are only read,
//! by `kvm-net check` ([`foreign_drops`]).

use anyhow::Result;
use netlink_packet_netfilter::NetfilterProtoFamily;

use super::iptables::IptablesFirewall;
use super::iptables_rules::{accept_chain, all_chains, CHAIN_PREFIX};
use super::nftables::foreign::{self, drops_through, Hook};
use super::nftables::TABLE;
use super::plan::{Family, Kind, Plan};
use crate::ifname::IfName;
use crate::trace::trace;

/// Why iptables' `filter` table would drop what one of a network's chains
/// (forward or input) accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IptablesBlock {
    /// The family.
    pub family: Family,
    /// [`Kind::Forward`] or [`Kind::Input`].
    pub kind: Kind,
    /// Docker's `DOCKER-USER` chain exists (forward only): the accepts go there.
    pub docker: bool,
    /// The built-in chain's policy is DROP.
    pub policy_drop: bool,
    /// A DROP or REJECT rule can be reached from the built-in chain.
    pub drop_rule: bool,
}

impl IptablesBlock {
    /// Where the accepts are jumped to from.
    pub fn hook(&self) -> &'static str {
        match (self.kind, self.docker) {
            (Kind::Input, _) => "INPUT",
            (_, true) => "DOCKER-USER",
            _ => "FORWARD",
        }
    }

    /// What drops, in words.
    pub fn why(&self) -> &'static str {
        if self.docker {
            "Docker's rules"
        } else if self.policy_drop {
            "a DROP policy"
        } else {
            "a DROP or REJECT rule"
        }
    }
}

/// The built-in chain of iptables' `filter` table that `kind` matters in.
fn builtin(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Forward => Some("FORWARD"),
        Kind::Input => Some("INPUT"),
        _ => None,
    }
}

/// What iptables (nf_tables flavour) of `family` would drop of a
/// network's forwarded traffic, and of its DHCP and DNS: one chain dump and
/// one rule dump of the `filter` table, if it has one.
pub fn blocks(family: Family) -> Result<Vec<IptablesBlock>> {
    if !foreign::has_table(family, "filter")? {
        return Ok(Vec::new());
    }
    let chains = foreign::chains(family, "filter")?;
    let rules = foreign::rules(family, "filter")?;
    let docker = chains.iter().any(|chain| chain.name == "DOCKER-USER");
    let mut found = Vec::new();
    for kind in [Kind::Forward, Kind::Input] {
        let Some(name) = builtin(kind) else { continue };
        let Some(base) = chains.iter().find(|chain| chain.name == name) else { continue };
        let block = IptablesBlock {
            family,
            kind,
            docker: docker && kind == Kind::Forward,
            policy_drop: base.policy_drop,
            drop_rule: drops_through(&rules, name, CHAIN_PREFIX),
        };
        if block.docker || block.policy_drop || block.drop_rule {
            found.push(block);
        }
    }
    Ok(found)
}

/// Whether iptables-nft's tables hold any chain kvm-net's iptables backend
/// makes for `bridge` (read over netlink: no process).
pub fn iptables_nft_holds(bridge: &IfName) -> Result<bool> {
    for family in [Family::V4, Family::V6] {
        let present = foreign::tables(family)?;
        for chain in all_chains(bridge).into_iter().filter(|c| c.family == family) {
            if present.iter().any(|t| t == chain.table) && foreign::chain(family, chain.table, &chain.name)?.is_some() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Beside the nftables backend: the accepts iptables needs on this host for
/// the plan's forward and input chains (none where nothing drops), and
/// nothing else of kvm-net's in iptables for the bridge (an upgrade from an
/// iptables-only kvm-net with VMs running, or a backend switched). With
/// `ahead`, their jumps move ahead of any DROP or REJECT rule that precedes them.
pub fn ensure(plan: &Plan, ahead: bool) -> Result<()> {
    let bridge = &plan.bridge;
    let mut wanted = Vec::new();
    let mut stale = false;
    for family in [Family::V4, Family::V6] {
        let present = foreign::tables(family)?;
        if !present.iter().any(|t| t == "filter" || t == "nat" || t == "mangle") {
            continue;
        }
        let blocks = if present.iter().any(|t| t == "filter") { blocks(family)? } else { Vec::new() };
        for block in blocks {
            if let Some(chain) = plan.chain(family, block.kind) {
                wanted.push(accept_chain(bridge, chain, block.hook()));
            }
        }
        for chain in all_chains(bridge).into_iter().filter(|c| c.family == family) {
            let keep = wanted.iter().any(|w| w.family == family && w.name == chain.name);
            if !keep
                && present.iter().any(|t| t == chain.table)
                && foreign::chain(family, chain.table, &chain.name)?.is_some()
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
        trace(format_args!("iptables' filter table drops what {bridge} needs here: accepting it there"));
        if ahead {
            IptablesFirewall.ensure_chains_ahead(&wanted)?;
        } else {
            IptablesFirewall.ensure_chains(&wanted)?;
        }
    }
    Ok(())
}

/// A base chain of a table that kvm-net neither owns nor can write to,
/// whose drops can stop what a network needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignDrop {
    /// `ip`, `ip6` or `inet`.
    pub family: &'static str,
    /// The table.
    pub table: String,
    /// The base chain.
    pub chain: String,
    /// The hook it is on.
    pub hook: Hook,
    /// Its policy is drop (not only some of its rules).
    pub policy_drop: bool,
}

/// The base chains on `hook` of tables other than kvm-net's, iptables'
/// built-in ones (passed with accepts, see [`ensure`]) and firewalld's
/// (handled by its zones), that can drop packets, of the families that
/// carry `family`'s traffic, unless a rule of theirs names `bridge` (the
/// administrator let its traffic through). Read only.
pub fn foreign_drops(family: Family, hook: Hook, bridge: &IfName) -> Result<Vec<ForeignDrop>> {
    let families = match family {
        Family::V4 => [("ip", NetfilterProtoFamily::IPv4), ("inet", NetfilterProtoFamily::Inet)],
        Family::V6 => [("ip6", NetfilterProtoFamily::IPv6), ("inet", NetfilterProtoFamily::Inet)],
    };
    let mut found = Vec::new();
    for (name, proto) in families {
        for table in foreign::tables(proto)? {
            if table == TABLE || (name == "inet" && table == "firewalld") {
                continue;
            }
            let chains = foreign::chains(proto, &table)?;
            if !chains.iter().any(|c| c.filters(hook)) {
                continue;
            }
            let rules = foreign::rules(proto, &table)?;
            for chain in chains.iter().filter(|c| c.filters(hook)) {
                let iptables_builtin =
                    name != "inet" && table == "filter" && Some(chain.name.as_str()) == builtin_of(hook);
                if iptables_builtin || !(chain.policy_drop || drops_through(&rules, &chain.name, CHAIN_PREFIX)) {
                    continue;
                }
                if rules.iter().any(|rule| rule.chain == chain.name && rule.names_interface(bridge.as_str())) {
                    continue;
                }
                found.push(ForeignDrop {
                    family: name,
                    table: table.clone(),
                    chain: chain.name.clone(),
                    hook,
                    policy_drop: chain.policy_drop,
                });
            }
        }
    }
    Ok(found)
}

/// iptables' built-in chain on `hook`.
fn builtin_of(hook: Hook) -> Option<&'static str> {
    match hook {
        Hook::Forward => builtin(Kind::Forward),
        Hook::Input => builtin(Kind::Input),
    }
}
