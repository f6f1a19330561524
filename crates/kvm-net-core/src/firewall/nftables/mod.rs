//! The nftables backend: kvm-net's own tables, `ip kvm_net` and `ip6
//! kvm_net`, spoken to over netlink (no `nft` process). Per family, one base
//! chain per hook kvm-net needs, each dispatching through a verdict map keyed
//! by interface name (`iifname vmap @forward`) to one chain per bridge
//! (`fwd-br0`). Finding a network's part is then a few small requests
//! whatever the number of networks, and every change is one batch.
//!
//! ```text
//! table ip kvm_net {
//!     map forward { type ifname : verdict; elements = { "br0" : jump fwd-br0 } }
//!     chain forward { type filter hook forward priority filter; policy accept;
//!         iifname vmap @forward comment "kvm-net 1a2b3c4d"
//!         oifname vmap @forward comment "kvm-net 5e6f7a8b" }
//!     chain fwd-br0 { ... comment "kvm-net:br0 9c0d1e2f" }
//! }
//! ```

pub mod antispoof;
mod antispoof6;
mod bindings;
pub mod foreign;
mod numbers;
mod render;
mod socket;

use anyhow::{anyhow, Context, Result};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, DataAttribute, Hook, InetHookNumber, ListAttribute, MetaKey, NfTablesMessage,
    RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList, SetElementMessage, SetFlags,
    SetMessage, TableAttribute, TableMessage, Verdict,
};

use self::render::{comment, dispatch_expressions, ifname_key, rule_expressions, verdict, AnonymousMap, ANONYMOUS_MAP};
pub use self::socket::forget_shared as forget_shared_socket;
use self::socket::{with_nft, Change, Committed, Nft};
use netlink_packet_netfilter::NetfilterProtoFamily;

use self::numbers::*;
use super::plan::{Family, Kind, Plan, Rule};
use super::{ChainState, RuleState};
use crate::error::Error;
use crate::ifname::IfName;
use crate::kernel::wire::{self, NLM_F_APPEND, NLM_F_CREATE};
use crate::trace::trace;

/// The name of kvm-net's tables, one per family.
pub const TABLE: &str = "kvm_net";

/// How often a batch is computed again after the ruleset changed under it.
const ATTEMPTS: usize = 20;

/// The maps' user data, for `nft` to print their keys: the key is in host
/// byte order (`NFTNL_UDATA_SET_KEYBYTEORDER`, 4 bytes, `BYTEORDER_HOST_ENDIAN`).
pub(super) fn key_in_host_order() -> Vec<u8> {
    let mut data = vec![0, 4];
    data.extend(1u32.to_ne_bytes());
    data
}

/// How a hook reaches a bridge's chain of one kind.
#[derive(Clone, Copy)]
enum Reach {
    /// Through a base chain every network shares, which looks the
    /// interface names up in a verdict map of the same name.
    Dispatch { base: &'static str, keys: &'static [MetaKey] },
    /// The bridge's chain is a base chain of its own: port forwards, whose
    /// connections arrive on any interface. NAT chains see only the first
    /// packet of a connection, so one per network with forwards costs no
    /// packet of the others anything.
    Own,
}

/// Where one kind of chain is hooked.
struct Hooked {
    kind: Kind,
    reach: Reach,
    /// `filter` or `nat`.
    chain_type: &'static str,
    hook: InetHookNumber,
    priority: i32,
    /// Prefix of the per-bridge chain.
    prefix: &'static str,
}

impl Hooked {
    /// The shared base chain (and its map), if the kind has one.
    fn base(&self) -> Option<&'static str> {
        match self.reach {
            Reach::Dispatch { base, .. } => Some(base),
            Reach::Own => None,
        }
    }
}

fn hooked(kind: Kind) -> Option<Hooked> {
    const IN: &[MetaKey] = &[MetaKey::Iifname];
    const BOTH: &[MetaKey] = &[MetaKey::Iifname, MetaKey::Oifname];
    let dispatch = |base, keys| Reach::Dispatch { base, keys };
    let (reach, chain_type, hook, priority, prefix) = match kind {
        // Out of the bridge too: a forward's hairpin connection that the
        // kernel bridges straight to the guest (br_netfilter) has no input
        // interface by postrouting.
        Kind::Masquerade => (dispatch("postrouting", BOTH), "nat", InetHookNumber::PostRouting, 100, "nat"),
        Kind::Forward => (dispatch("forward", BOTH), "filter", InetHookNumber::Forward, 0, "fwd"),
        // Priority mangle: ahead of filter, though a drop is final at any priority.
        Kind::Guard => (dispatch("guard", BOTH), "filter", InetHookNumber::Forward, -150, "grd"),
        Kind::Input => (dispatch("input", IN), "filter", InetHookNumber::LocalIn, 0, "in"),
        // Priority dstnat.
        Kind::DnatIn => (Reach::Own, "nat", InetHookNumber::PreRouting, -100, "dnat"),
        Kind::DnatLocal => (Reach::Own, "nat", InetHookNumber::LocalOut, -100, "dnatl"),
        Kind::Checksum => return None,
    };
    Some(Hooked { kind, reach, chain_type, hook, priority, prefix })
}

fn chain_name(hooked: &Hooked, bridge: &IfName) -> String {
    format!("{}-{bridge}", hooked.prefix)
}

fn table_of(family: Family) -> String {
    let prefix = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    format!("{prefix} {TABLE}")
}

/// What a rule of kvm-net's is, rendered only when it is written.
enum Wanted<'a> {
    /// A rule of the plan, in a bridge's chain.
    Rule(&'a Rule),
    /// `iifname vmap @MAP` (or `oifname`) in a base chain.
    Dispatch(MetaKey, &'static str),
}

/// A rule kvm-net wants in a chain, and the comment that recognises it.
struct NewRule<'a> {
    wanted: Wanted<'a>,
    userdata: Vec<u8>,
}

impl NewRule<'_> {
    fn expressions(&self, maps: &mut Vec<AnonymousMap>) -> Vec<render::Expression> {
        match self.wanted {
            Wanted::Rule(rule) => rule_expressions(rule, maps),
            Wanted::Dispatch(key, map) => dispatch_expressions(key, map),
        }
    }
}

/// The comments of rules, in order: how kvm-net recognises its own.
fn userdata_of(rules: &[NewRule]) -> Vec<Vec<u8>> {
    rules.iter().map(|r| r.userdata.clone()).collect()
}

/// The dispatch rules a shared base chain holds (none for a kind without one).
fn dispatch_rules(hooked: &Hooked) -> Vec<NewRule<'static>> {
    let Reach::Dispatch { base, keys } = hooked.reach else { return Vec::new() };
    keys.iter()
        .map(|key| NewRule {
            wanted: Wanted::Dispatch(*key, base),
            userdata: comment("kvm-net", &(u32::from(*key), base)),
        })
        .collect()
}

/// A bridge's chain of one kind, as planned.
fn planned_rules(plan: &Plan, family: Family, kind: Kind) -> Vec<NewRule<'_>> {
    let tag = format!("kvm-net:{}", plan.bridge);
    plan.chain(family, kind)
        .map(|chain| {
            chain
                .rules
                .iter()
                .map(|rule| NewRule { wanted: Wanted::Rule(rule), userdata: comment(&tag, rule) })
                .collect()
        })
        .unwrap_or_default()
}

/// What one family and kind of a network looks like in the kernel.
struct Seen {
    /// The comments of the base chain's rules (empty: missing or empty).
    base: Vec<Vec<u8>>,
    /// The comments of the bridge's chain's rules.
    chain: Vec<Vec<u8>>,
    /// The chain the bridge's map element jumps to.
    element: Option<String>,
}

fn table_message(name: &str) -> NfTablesMessage {
    NfTablesMessage::NewTable(TableMessage { attributes: vec![TableAttribute::Name(name.to_owned())] })
}

/// The rules of one chain of kvm-net's table: what a dump lists, a flush deletes.
fn chain_rules(chain: &str) -> RuleMessage {
    RuleMessage { attributes: vec![RuleAttribute::Table(TABLE.to_owned()), RuleAttribute::Chain(chain.to_owned())] }
}

fn element_list(map: &str, bridge: &IfName, jump_to: Option<&str>) -> SetElementMessage {
    let mut element = vec![SetElementAttribute::Key(DataAttribute::Value(ifname_key(bridge)))];
    if let Some(chain) = jump_to {
        element.push(SetElementAttribute::Data(verdict(Verdict::Jump, Some(chain))));
    }
    SetElementMessage {
        attributes: vec![
            SetElementList::Table(TABLE.to_owned()),
            SetElementList::Set(map.to_owned()),
            SetElementList::Elements(vec![ListAttribute::Element(element)]),
        ],
    }
}

/// The comments of the rules of `chain` (in kvm-net's table of `family`), in order.
fn rule_comments(nft: &mut Nft, family: Family, chain: &str) -> Result<Vec<Vec<u8>>> {
    let rules = nft.dump(family, NfTablesMessage::GetRule(chain_rules(chain)))?;
    Ok(rules.iter().map(|rule| rule.attribute(NFTA_RULE_USERDATA).unwrap_or_default().to_vec()).collect())
}

/// How many rules `chain` holds.
fn rule_count(nft: &mut Nft, family: Family, chain: &str) -> Result<u32> {
    Ok(u32::try_from(rule_comments(nft, family, chain)?.len()).unwrap_or(u32::MAX))
}

/// The chain the element for `bridge` in `map` jumps to, if there is one.
fn element_target(nft: &mut Nft, family: Family, map: &str, bridge: &IfName) -> Result<Option<String>> {
    let answer = nft.get(family, NfTablesMessage::GetSetElement(element_list(map, bridge, None)))?;
    let target = answer.and_then(|elements| {
        let list = elements.attribute(NFTA_SET_ELEM_LIST_ELEMENTS)?;
        let element = wire::attribute(list, NFTA_LIST_ELEM)?;
        let data = wire::attribute(element, NFTA_SET_ELEM_DATA)?;
        let verdict = wire::attribute(data, NFTA_DATA_VERDICT)?;
        wire::attribute(verdict, NFTA_VERDICT_CHAIN).and_then(wire::string).map(str::to_owned)
    });
    Ok(target)
}

/// The kernel's use count of a chain (its rules, and the jumps and map
/// elements that lead to it), if it exists.
fn chain_use(nft: &mut Nft, family: Family, chain: &str) -> Result<Option<u32>> {
    let request = NfTablesMessage::GetChain(ChainMessage {
        attributes: vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(chain.to_owned())],
    });
    Ok(nft.get(family, request)?.map(|chain| chain.u32(NFTA_CHAIN_USE).unwrap_or(0)))
}

/// The names of every chain and set in kvm-net's table of `family`.
fn table_contents(nft: &mut Nft, family: Family) -> Result<(Vec<String>, Vec<String>)> {
    // The kernel lists every table's chains: keep kvm-net's.
    let chains = nft
        .dump(
            family,
            NfTablesMessage::GetChain(ChainMessage { attributes: vec![ChainAttribute::Table(TABLE.to_owned())] }),
        )?
        .into_iter()
        .filter(|chain| chain.string(NFTA_CHAIN_TABLE) == Some(TABLE))
        .filter_map(|chain| chain.string(NFTA_CHAIN_NAME).map(str::to_owned))
        .collect();
    let sets = nft
        .dump(family, NfTablesMessage::GetSet(SetMessage { attributes: vec![SetAttribute::Table(TABLE.to_owned())] }))?
        .into_iter()
        .filter_map(|set| set.string(NFTA_SET_NAME).map(str::to_owned))
        .collect();
    Ok((chains, sets))
}

fn seen(nft: &mut Nft, family: Family, hooked: &Hooked, bridge: &IfName) -> Result<Seen> {
    let chain = rule_comments(nft, family, &chain_name(hooked, bridge))?;
    let Some(base) = hooked.base() else { return Ok(Seen { base: Vec::new(), chain, element: None }) };
    Ok(Seen { base: rule_comments(nft, family, base)?, chain, element: element_target(nft, family, base, bridge)? })
}

fn change(
    family: impl Into<NetfilterProtoFamily>,
    message: NfTablesMessage,
    flags: u16,
    what: impl Into<String>,
) -> Change {
    Change { family: family.into(), message, flags, what: what.into() }
}

/// How many elements go in one message: a nested attribute's length is 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 1024;

/// The anonymous map `map`, made with its elements, for a rule of the same batch.
fn add_anonymous_map(changes: &mut Vec<Change>, family: Family, map: AnonymousMap) {
    let attributes = vec![
        SetAttribute::Table(TABLE.to_owned()),
        SetAttribute::Name(ANONYMOUS_MAP.to_owned()),
        SetAttribute::Flags(SetFlags::Anonymous | SetFlags::Constant | SetFlags::Map),
        SetAttribute::KeyType(map.data_type),
        SetAttribute::KeyLen(map.len),
        SetAttribute::DataType(map.data_type),
        SetAttribute::DataLen(map.len),
        SetAttribute::Id(map.id),
    ];
    let what = format!("creating an anonymous map in {}", table_of(family));
    changes.push(change(family, NfTablesMessage::NewSet(SetMessage { attributes }), NLM_F_CREATE, what));
    for chunk in map.elements.chunks(ELEMENTS_PER_MESSAGE) {
        let elements = chunk
            .iter()
            .map(|(key, value)| {
                ListAttribute::Element(vec![
                    SetElementAttribute::Key(DataAttribute::Value(key.clone())),
                    SetElementAttribute::Data(DataAttribute::Value(value.clone())),
                ])
            })
            .collect();
        let message = NfTablesMessage::NewSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(TABLE.to_owned()),
                SetElementList::Set(ANONYMOUS_MAP.to_owned()),
                SetElementList::SetId(map.id),
                SetElementList::Elements(elements),
            ],
        });
        let what = format!("filling an anonymous map in {}", table_of(family));
        changes.push(change(family, message, NLM_F_CREATE, what));
    }
}

fn add_rules(changes: &mut Vec<Change>, family: Family, chain: &str, rules: Vec<NewRule>) {
    for rule in rules {
        let mut maps = Vec::new();
        let expressions = rule.expressions(&mut maps);
        for map in maps {
            add_anonymous_map(changes, family, map);
        }
        let message = NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table(TABLE.to_owned()),
                RuleAttribute::Chain(chain.to_owned()),
                RuleAttribute::Expressions(expressions),
                RuleAttribute::UserData(rule.userdata),
            ],
        });
        changes.push(change(
            family,
            message,
            NLM_F_CREATE | NLM_F_APPEND,
            format!("adding a rule to {} {chain}", table_of(family)),
        ));
    }
}

fn flush_chain(family: Family, chain: &str) -> Change {
    change(family, NfTablesMessage::DeleteRule(chain_rules(chain)), 0, format!("flushing {} {chain}", table_of(family)))
}

fn new_chain(family: Family, name: &str, hooked: Option<&Hooked>) -> Change {
    let mut attributes = vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(name.to_owned())];
    if let Some(hooked) = hooked {
        attributes.push(ChainAttribute::Hook(vec![
            Hook::Number(hooked.hook.into()),
            // The kernel reads the priority as a signed 32-bit number.
            Hook::Priority(u32::from_ne_bytes(hooked.priority.to_ne_bytes())),
        ]));
        attributes.push(ChainAttribute::Type(hooked.chain_type.to_owned()));
        attributes.push(ChainAttribute::Policy(1));
    }
    let what = match hooked {
        Some(_) => format!("creating base chain {} {name}", table_of(family)),
        None => format!("creating chain {} {name}", table_of(family)),
    };
    change(family, NfTablesMessage::NewChain(ChainMessage { attributes }), NLM_F_CREATE, what)
}

fn new_map(family: Family, name: &str) -> Change {
    let attributes = vec![
        SetAttribute::Table(TABLE.to_owned()),
        SetAttribute::Name(name.to_owned()),
        SetAttribute::Flags(SetFlags::Map),
        SetAttribute::KeyType(TYPE_IFNAME),
        SetAttribute::KeyLen(16),
        SetAttribute::DataType(libc::NFT_DATA_VERDICT),
        SetAttribute::Id(1),
        SetAttribute::UserData(key_in_host_order()),
    ];
    change(
        family,
        NfTablesMessage::NewSet(SetMessage { attributes }),
        NLM_F_CREATE,
        format!("creating map {} {name}", table_of(family)),
    )
}

/// The changes that make one family and kind of `plan` as planned, given
/// what is there; none when it already is.
fn ensure_changes(plan: &Plan, family: Family, hooked: &Hooked, seen: &Seen) -> Vec<Change> {
    let bridge = &plan.bridge;
    let chain = chain_name(hooked, bridge);
    let mut changes = Vec::new();
    let dispatch = dispatch_rules(hooked);
    if let Some(base) = hooked.base() {
        if seen.base != userdata_of(&dispatch) {
            trace(format_args!("{} {base}: base chain {base} and map made anew", table_of(family)));
            changes.push(new_map(family, base));
            changes.push(new_chain(family, base, Some(hooked)));
            if !seen.base.is_empty() {
                changes.push(flush_chain(family, base));
            }
            add_rules(&mut changes, family, base, dispatch);
        }
    }
    let rules = planned_rules(plan, family, hooked.kind);
    if seen.chain != userdata_of(&rules) {
        trace(format_args!("{} {chain}: write {} rules", table_of(family), rules.len()));
        let own = match hooked.reach {
            Reach::Own => Some(hooked),
            Reach::Dispatch { .. } => None,
        };
        changes.push(new_chain(family, &chain, own));
        if !seen.chain.is_empty() {
            changes.push(flush_chain(family, &chain));
        }
        add_rules(&mut changes, family, &chain, rules);
    }
    let Some(base) = hooked.base() else { return changes };
    if seen.element.as_deref() != Some(chain.as_str()) {
        trace(format_args!("{} map {base}: {bridge} jumps to {chain}", table_of(family)));
        if seen.element.is_some() {
            let stale = NfTablesMessage::DeleteSetElement(element_list(base, bridge, None));
            changes.push(change(family, stale, 0, format!("deleting {bridge} from map {} {base}", table_of(family))));
        }
        let element = NfTablesMessage::NewSetElement(element_list(base, bridge, Some(&chain)));
        changes.push(change(
            family,
            element,
            NLM_F_CREATE,
            format!("adding {bridge} to map {} {base}", table_of(family)),
        ));
    }
    changes
}

/// The family and kind of each chain the plan has in nf_tables.
fn planned(plan: &Plan) -> impl Iterator<Item = (Family, Hooked)> + '_ {
    plan.chains.iter().filter_map(|chain| hooked(chain.kind).map(|hooked| (chain.family, hooked)))
}

/// The ruleset's generation; `None` where the kernel has no nf_tables.
pub fn generation() -> Option<u32> {
    with_nft(Nft::generation).ok()
}

/// Runs `attempt` (read, then commit computed changes) until the ruleset
/// did not change under it.
pub(super) fn with_retries(what: &str, mut attempt: impl FnMut(&mut Nft) -> Result<Committed>) -> Result<()> {
    with_nft(|nft| {
        for _ in 0..ATTEMPTS {
            if attempt(nft)? == Committed::Done {
                return Ok(());
            }
            trace(format_args!("{what}: the ruleset changed meanwhile; reading it again"));
        }
        Err(anyhow!("{what}: the ruleset kept changing under kvm-net ({ATTEMPTS} attempts)"))
    })
}

/// The nftables backend; it holds no state between calls (the kernel does).
#[derive(Clone, Copy, Debug, Default)]
pub struct NftablesFirewall;

impl NftablesFirewall {
    /// Whether nf_tables answers in this network namespace.
    pub fn available() -> bool {
        generation().is_some()
    }

    /// Makes the bridge's chains exactly the plan, with one map element
    /// each, creating tables, maps and base chains as needed, in one batch.
    /// Writes nothing when all is as planned.
    pub fn ensure(&self, plan: &Plan) -> Result<()> {
        with_retries("installing kvm-net's nftables rules", |nft| {
            let generation = nft.generation()?;
            let mut changes = Vec::new();
            let mut tables: Vec<Family> = Vec::new();
            for (family, hooked) in planned(plan) {
                let found = seen(nft, family, &hooked, &plan.bridge)?;
                let needed = ensure_changes(plan, family, &hooked, &found);
                if !needed.is_empty() && !tables.contains(&family) {
                    tables.push(family);
                    changes.push(change(
                        family,
                        table_message(TABLE),
                        NLM_F_CREATE,
                        format!("creating table {}", table_of(family)),
                    ));
                }
                changes.extend(needed);
            }
            nft.commit(generation, changes)
        })
        .context("installing kvm-net's nftables rules")
    }

    /// Removes the bridge's chains and map elements; the tables go with the
    /// last network. A chain that a rule of someone else's still jumps to is
    /// only emptied, and named in the error.
    pub fn remove(&self, bridge: &IfName) -> Result<()> {
        let mut foreign = Vec::new();
        with_retries("removing kvm-net's nftables rules", |nft| {
            foreign.clear();
            let generation = nft.generation()?;
            let mut changes = Vec::new();
            for family in [Family::V4, Family::V6] {
                let (chains, sets) = table_contents(nft, family)?;
                if chains.is_empty() && sets.is_empty() {
                    continue;
                }
                let mut ours = Vec::new();
                let mut bases = Vec::new();
                for hooked in Kind::ALL.into_iter().filter_map(hooked) {
                    let element = match hooked.base() {
                        Some(base) => {
                            // A base chain is kvm-net's only with exactly its dispatch rules.
                            if chains.iter().any(|c| c == base)
                                && rule_comments(nft, family, base)? == userdata_of(&dispatch_rules(&hooked))
                            {
                                bases.push(base.to_owned());
                            }
                            element_target(nft, family, base, bridge)?
                        }
                        None => None,
                    };
                    let chain = chain_name(&hooked, bridge);
                    // Jumps to the chain: its use count less its own rules.
                    let jumps = match chain_use(nft, family, &chain)? {
                        Some(uses) => Some(uses.saturating_sub(rule_count(nft, family, &chain)?)),
                        None => None,
                    };
                    ours.push((hooked, chain, element, jumps));
                }
                let maps: Vec<&str> = Kind::ALL.into_iter().filter_map(hooked).filter_map(|h| h.base()).collect();
                // Anonymous sets (`__map0`) belong to the rules that use them, which are in these chains.
                let last = chains.iter().all(|c| bases.contains(c) || ours.iter().any(|(_, chain, ..)| chain == c))
                    && sets.iter().all(|s| maps.contains(&s.as_str()) || s.starts_with("__"));
                if last {
                    trace(format_args!("{}: the last network is gone; deleting the table", table_of(family)));
                    let message = NfTablesMessage::DeleteTable(TableMessage {
                        attributes: vec![TableAttribute::Name(TABLE.to_owned())],
                    });
                    changes.push(change(family, message, 0, format!("deleting table {}", table_of(family))));
                    continue;
                }
                for (hooked, chain, element, jumps) in ours {
                    if let (Some(base), Some(_)) = (hooked.base(), &element) {
                        let message = NfTablesMessage::DeleteSetElement(element_list(base, bridge, None));
                        let what = format!("deleting {bridge} from map {} {base}", table_of(family));
                        changes.push(change(family, message, 0, what));
                    }
                    let Some(jumps) = jumps else { continue };
                    changes.push(flush_chain(family, &chain));
                    if jumps > u32::from(element.as_deref() == Some(chain.as_str())) {
                        foreign.push(format!("{} chain {chain}", table_of(family)));
                    } else {
                        let what = format!("deleting chain {} {chain}", table_of(family));
                        let message = NfTablesMessage::DeleteChain(ChainMessage {
                            attributes: vec![ChainAttribute::Table(TABLE.to_owned()), ChainAttribute::Name(chain)],
                        });
                        changes.push(change(family, message, 0, what));
                    }
                }
            }
            nft.commit(generation, changes)
        })
        .context("removing kvm-net's nftables rules")?;
        if foreign.is_empty() {
            Ok(())
        } else {
            Err(Error::ChainInUse(format!("other rules jump to {}", foreign.join(", "))).into())
        }
    }

    /// How each of the plan's chains compares with it.
    pub fn state(&self, plan: &Plan) -> Result<Vec<ChainState>> {
        with_nft(|nft| Self::state_with(nft, plan))
    }

    fn state_with(nft: &mut Nft, plan: &Plan) -> Result<Vec<ChainState>> {
        let mut states = Vec::new();
        for (family, hooked) in planned(plan) {
            let found = seen(nft, family, &hooked, &plan.bridge)?;
            let chain = chain_name(&hooked, &plan.bridge);
            let rules = planned_rules(plan, family, hooked.kind);
            let dispatch = dispatch_rules(&hooked);
            let state = if found.chain.is_empty() {
                match chain_use(nft, family, &chain)? {
                    Some(_) => RuleState::Differs,
                    None => RuleState::Missing,
                }
            } else if found.chain != userdata_of(&rules) {
                RuleState::Differs
            } else if hooked.base().is_some()
                && (found.element.as_deref() != Some(chain.as_str()) || found.base != userdata_of(&dispatch))
            {
                RuleState::NoJump
            } else {
                RuleState::Ok
            };
            states.push(ChainState {
                family,
                kind: hooked.kind,
                table: TABLE.to_owned(),
                shown: format!("{} {chain}", table_of(family)),
                chain,
                state,
            });
        }
        Ok(states)
    }

    /// Whether anything of the bridge's is in kvm-net's tables.
    pub fn leftovers(&self, bridge: &IfName) -> Result<bool> {
        with_nft(|nft| {
            for family in [Family::V4, Family::V6] {
                for hooked in Kind::ALL.into_iter().filter_map(hooked) {
                    let element = match hooked.base() {
                        Some(base) => element_target(nft, family, base, bridge)?,
                        None => None,
                    };
                    if chain_use(nft, family, &chain_name(&hooked, bridge))?.is_some() || element.is_some() {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })
    }
}
