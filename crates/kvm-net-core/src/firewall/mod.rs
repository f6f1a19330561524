//! kvm-net's firewall: the rules each network needs, as a plan
//! ([`plan`]), rendered by one of two backends: nftables (kvm-net's own
//! tables, over netlink; the default where the kernel has nf_tables) or
//! iptables (`iptables-restore`). One function picks the backend; removal,
//! state and leftovers look in both, so rules made by either (by an earlier
//! kvm-net, or before the config switched backends) are found and removed.

pub mod firewalld;
mod foreign;
pub mod guests;
mod iptables;
mod iptables_rules;
mod nftables;
pub mod plan;

use anyhow::{Context, Result};

pub use self::foreign::{foreign_drops, ForeignDrop};
pub use self::nftables::foreign::Hook;
pub use self::nftables::TABLE as NFTABLES_TABLE;
pub use self::plan::{plan, Family, Kind, Plan};
pub use crate::config::model::{Backend, Choice};

use self::guests::GuestFilter;
use self::iptables::IptablesFirewall;
use self::nftables::NftablesFirewall;
use crate::ifname::IfName;
use crate::trace::trace;

/// One chain of kvm-net's as the firewall has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainState {
    /// Its family.
    pub family: Family,
    /// What it is for.
    pub kind: Kind,
    /// Its table (`nat`, `filter`, `mangle` in iptables; `kvm_net` in nftables).
    pub table: String,
    /// Its name (`KVMNET-FWD-br0`, `fwd-br0`).
    pub chain: String,
    /// Where it is, for messages (`iptables KVMNET-FWD-br0`, `ip kvm_net fwd-br0`).
    pub shown: String,
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

impl RuleState {
    /// The name kvm-net's output uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleState::Ok => "ok",
            RuleState::Missing => "missing",
            RuleState::Differs => "differs",
            RuleState::NoJump => "no-jump",
        }
    }
}

/// What may stop forwarded traffic in iptables before kvm-net's accepts see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropsBefore {
    /// The chain holding kvm-net's jump (`FORWARD`, or Docker's `DOCKER-USER`).
    pub hook: &'static str,
    /// Whether traffic that no accept takes is dropped (a DROP policy,
    /// Docker, a DROP or REJECT rule).
    pub blocked: bool,
    /// What drops it, in words, where kvm-net's rules live in nf_tables.
    pub why: Option<&'static str>,
    /// Whether kvm-net's jump is there at all.
    pub jump_present: bool,
    /// `-A HOOK ... -j DROP|REJECT` rules ahead of the jump (all of them when there is no jump).
    pub rules: Vec<String>,
}

/// Whether iptables' legacy (x_tables) tables are in use in this network
/// namespace: then iptables is the host's firewall tool, and kvm-net's
/// rules go where it and its users (Docker) see them.
fn legacy_iptables_in_use() -> bool {
    ["/proc/self/net/ip_tables_names", "/proc/self/net/ip6_tables_names"]
        .iter()
        .any(|path| crate::kernel::sysctl::read_small(path).is_ok_and(|names| !names.is_empty()))
}

/// kvm-net's firewall in this network namespace, with its backend chosen.
#[derive(Clone, Copy, Debug)]
pub struct Firewall {
    backend: Backend,
}

impl Firewall {
    /// Picks the backend `choice` asks for.
    pub fn choose(choice: Choice) -> Self {
        let backend = match choice {
            Choice::Only(backend) => backend,
            Choice::Auto if legacy_iptables_in_use() => Backend::Iptables,
            Choice::Auto if NftablesFirewall::available() => Backend::Nftables,
            Choice::Auto => Backend::Iptables,
        };
        trace(format_args!("firewall backend: {backend}"));
        Self { backend }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Makes the network's rules exactly `plan` in this backend, leaving
    /// everything else alone, and removes what the other backend holds of
    /// the bridge (rules of an earlier kvm-net, or of a backend the config
    /// no longer asks for). With `ahead`, iptables jumps that a DROP or
    /// REJECT rule precedes are moved to the top (what `kvm-net repair` does).
    pub fn ensure(&self, plan: &Plan, ahead: bool) -> Result<()> {
        let bridge = &plan.bridge;
        match self.backend {
            Backend::Nftables => {
                NftablesFirewall.ensure(plan)?;
                foreign::ensure(plan, ahead)
            }
            Backend::Iptables => {
                if ahead {
                    IptablesFirewall.ensure_ahead(plan)?;
                } else {
                    IptablesFirewall.ensure(plan)?;
                }
                if NftablesFirewall::available() && NftablesFirewall.leftovers(bridge)? {
                    trace(format_args!("removing nftables rules of {bridge}: the iptables backend is in use"));
                    NftablesFirewall.remove(bridge)?;
                }
                Ok(())
            }
        }
    }
}

/// Whether iptables may hold rules of kvm-net's for `bridge`: iptables-nft's
/// tables are read over netlink (no process); legacy tables only through
/// `iptables-save`.
fn iptables_may_hold(bridge: &IfName) -> Result<bool> {
    if legacy_iptables_in_use() {
        return IptablesFirewall.leftovers(bridge);
    }
    if !NftablesFirewall::available() {
        return Ok(false);
    }
    foreign::iptables_nft_holds(bridge)
}

/// Removes every rule kvm-net made for `bridge`, in whichever backend holds
/// them; nothing else is touched. Keeps going past a failed backend and
/// reports the first failure.
pub fn remove(bridge: &IfName) -> Result<()> {
    let nft = if NftablesFirewall::available() {
        let filter = GuestFilter::of_bridge(bridge);
        let guests = match filter.is_left() {
            Ok(true) => filter.remove(),
            other => other.map(drop),
        };
        NftablesFirewall.remove(bridge).and(guests)
    } else {
        Ok(())
    };
    let iptables = match iptables_may_hold(bridge) {
        Ok(true) => IptablesFirewall.remove(bridge),
        Ok(false) => Ok(()),
        Err(err) => Err(err),
    };
    nft.and(iptables).with_context(|| format!("removing the rules for bridge {bridge}"))
}

/// The state of the plan's chains, in the backend that holds the bridge's
/// rules (the one `choice` picks when neither does).
pub fn state(plan: &Plan, choice: Choice) -> Result<(Backend, Vec<ChainState>)> {
    let nft_holds = NftablesFirewall::available() && NftablesFirewall.leftovers(&plan.bridge)?;
    let backend = if nft_holds {
        Backend::Nftables
    } else if iptables_may_hold(&plan.bridge)? {
        Backend::Iptables
    } else {
        Firewall::choose(choice).backend
    };
    let states = match backend {
        Backend::Nftables => NftablesFirewall.state(plan)?,
        Backend::Iptables => IptablesFirewall.state(plan)?,
    };
    Ok((backend, states))
}

/// Forgets, without closing them, the sockets this process keeps open for
/// the firewall: for a child of `fork` that closes what it inherited itself.
pub fn forget_inherited_sockets() {
    nftables::forget_shared_socket();
}

/// nf_tables' generation in this network namespace, which every change
/// moves; `None` where the kernel has no nf_tables.
pub fn generation() -> Option<u32> {
    nftables::generation()
}

/// Whether any rule of kvm-net's for `bridge` is left, in either backend.
pub fn leftovers(bridge: &IfName) -> Result<bool> {
    let nft = NftablesFirewall::available()
        && (NftablesFirewall.leftovers(bridge)? || GuestFilter::of_bridge(bridge).is_left()?);
    Ok(nft || iptables_may_hold(bridge)?)
}

/// What in iptables' `filter` table may drop what a network's chain of
/// `kind` (forward or input) accepts, ahead of kvm-net's accepts: the
/// iptables backend's jump in `FORWARD` or `INPUT`; for the nftables
/// backend, where iptables drops at all (Docker, a DROP policy, a DROP or
/// REJECT rule), the jump to its accepts. `None` where nothing in iptables
/// can drop it.
pub fn drops_ahead(family: Family, kind: Kind, backend: Backend, bridge: &IfName) -> Result<Option<DropsBefore>> {
    let (hook, chain, why) = match (backend, kind) {
        (Backend::Iptables, Kind::Forward) => ("FORWARD", iptables_rules::forward_chain_name(bridge), None),
        (Backend::Iptables, Kind::Input) => ("INPUT", iptables_rules::input_chain_name(bridge), None),
        (Backend::Iptables, _) => return Ok(None),
        (Backend::Nftables, _) => match foreign::blocks(family)?.into_iter().find(|block| block.kind == kind) {
            Some(block) => (block.hook(), iptables_rules::accept_chain_name(bridge, kind), Some(block.why())),
            None => return Ok(None),
        },
    };
    let (policy_drop, jump_present, rules) = IptablesFirewall.drops_before(family, "filter", hook, &chain)?;
    Ok(Some(DropsBefore { hook, blocked: why.is_some() || policy_drop, why, jump_present, rules }))
}
