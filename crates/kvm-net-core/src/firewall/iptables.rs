//! The iptables backend: reads every table of a family with one
//! `iptables-save`, and writes all that differs from the plan with one
//! `iptables-restore --noflush`, which applies each table's changes as one
//! transaction. Under nf_tables every iptables call is a ruleset transaction
//! of 5-25 ms, so one call per rule (the `iptables` crate's way) made a cold
//! start and stop cost 150 ms more than the kernel's own bridge work.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::process::Stdio;

use anyhow::{anyhow, Context, Result};

use super::iptables_rules::{all_chains, command, render, OwnChain};
use super::plan::{Family, Plan};
use super::{ChainState, RuleState};
use crate::error::Error;
use crate::ifname::IfName;
use crate::security::privilege;
use crate::trace::trace;

/// Drives `iptables-save`/`iptables-restore` and their IPv6 twins (legacy
/// or nf_tables flavour) found on PATH.
#[derive(Clone, Copy, Default)]
pub struct IptablesFirewall;

fn commands(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables-save", "iptables-restore"),
        Family::V6 => ("ip6tables-save", "ip6tables-restore"),
    }
}

fn spawn_error(command: &'static str, err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::NotFound {
        anyhow::Error::new(Error::MissingTool(command))
    } else {
        anyhow::Error::new(err).context(format!("running {command}"))
    }
}

/// Every table of one family, as `iptables -S` would print each.
struct Saved {
    tables: BTreeMap<String, Vec<String>>,
}

impl Saved {
    fn read(family: Family) -> Result<Self> {
        let (save, _) = commands(family);
        let output = privilege::command(save).stdin(Stdio::null()).output().map_err(|e| spawn_error(save, e))?;
        if !output.status.success() {
            return Err(anyhow!("{save} failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(Self::parse(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Turns `iptables-save` output into `-S` lines per table: `:CHAIN - [..]`
    /// becomes `-N CHAIN`, `:BUILTIN POLICY [..]` becomes `-P BUILTIN POLICY`.
    fn parse(text: &str) -> Self {
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut current: Option<&mut Vec<String>> = None;
        for line in text.lines() {
            if let Some(table) = line.strip_prefix('*') {
                current = Some(tables.entry(table.trim().to_owned()).or_default());
                continue;
            }
            let Some(lines) = current.as_deref_mut() else { continue };
            if let Some(declaration) = line.strip_prefix(':') {
                let mut words = declaration.split_whitespace();
                if let (Some(chain), Some(policy)) = (words.next(), words.next()) {
                    lines.push(if policy == "-" { format!("-N {chain}") } else { format!("-P {chain} {policy}") });
                }
            } else if line.starts_with("-A ") {
                lines.push(line.to_owned());
            }
        }
        Self { tables }
    }

    fn listing(&self, table: &str) -> Listing<'_> {
        Listing { lines: self.tables.get(table).map_or(&[][..], Vec::as_slice) }
    }
}

/// Applies a restore script (one `*table ... COMMIT` section per table).
fn restore(family: Family, script: &str) -> Result<()> {
    let (_, restore) = commands(family);
    trace(format_args!("{restore} --noflush: {} lines in one transaction per table", script.lines().count()));
    let mut child = privilege::command(restore)
        .args(["--noflush", "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(restore, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).with_context(|| format!("writing to {restore}"))?;
    }
    let output = child.wait_with_output().with_context(|| format!("waiting for {restore}"))?;
    if !output.status.success() {
        return Err(anyhow!("{restore} failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}

/// The families among `chains`, each with its chains, in a stable order.
fn by_family(chains: &[OwnChain]) -> BTreeMap<Family, Vec<&OwnChain>> {
    let mut families: BTreeMap<Family, Vec<&OwnChain>> = BTreeMap::new();
    for chain in chains {
        families.entry(chain.family).or_default().push(chain);
    }
    families
}

/// Builds one restore script from per-chain edits, grouped by table.
fn script(edits: BTreeMap<&str, Vec<String>>) -> String {
    let mut text = String::new();
    for (table, lines) in edits.into_iter().filter(|(_, lines)| !lines.is_empty()) {
        let _ = writeln!(text, "*{table}");
        for line in lines {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text, "COMMIT");
    }
    text
}

/// What a chain's edits do, in words, for KVM_NET_DEBUG.
fn summary(lines: &[String]) -> String {
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    let mut parts = Vec::new();
    if count(":") > 0 {
        parts.push(format!("write {} rules", count("-A ")));
    }
    for (prefix, what) in [("-I ", "insert jump"), ("-D ", "delete jump"), ("-X ", "delete chain")] {
        match count(prefix) {
            0 => {}
            1 => parts.push(what.to_owned()),
            n => parts.push(format!("{what} x{n}")),
        }
    }
    parts.join(", ")
}

/// The lines that make `chain` match its plan in `table` (none when it does).
fn ensure_edits(table: &Listing, chain: &OwnChain) -> Vec<String> {
    let mut lines = Vec::new();
    if !table.has_chain(&chain.name) || table.rules_of(&chain.name) != chain.rules {
        // Declaring a chain in a --noflush restore creates it, or empties it.
        lines.push(format!(":{} - [0:0]", chain.name));
        lines.extend(chain.rules.iter().map(|rule| format!("-A {} {rule}", chain.name)));
    }
    let present = table.jumps_to(chain.hook, &chain.name);
    if !jumps_as_planned(&present, chain) {
        // Jumps of another shape (an older kvm-net's, duplicates): replaced whole.
        lines.extend(present.iter().map(|jump| format!("-D {} {jump}", chain.hook)));
        lines.extend(insert_jumps(chain));
    }
    lines
}

/// Whether the hook's jumps to `chain` are exactly the planned ones.
fn jumps_as_planned(present: &[&str], chain: &OwnChain) -> bool {
    present.len() == chain.jumps.len() && chain.jumps.iter().all(|jump| present.contains(&jump.as_str()))
}

/// The lines that put the chain's jumps at the top of its hook, in order.
fn insert_jumps(chain: &OwnChain) -> impl Iterator<Item = String> + '_ {
    chain.jumps.iter().rev().map(|jump| format!("-I {} 1 {jump}", chain.hook))
}

/// As [`ensure_edits`], moving the jump to the top of its hook if a DROP or
/// REJECT rule comes before it.
fn ensure_ahead_edits(table: &Listing, chain: &OwnChain) -> Vec<String> {
    let jumps = table.jumps_to(chain.hook, &chain.name);
    if jumps.is_empty() || table.drops_ahead_of(chain.hook, &chain.name).is_empty() {
        return ensure_edits(table, chain);
    }
    let mut lines: Vec<String> =
        ensure_edits(table, chain).into_iter().filter(|l| !l.starts_with("-D ") && !l.starts_with("-I ")).collect();
    lines.extend(jumps.iter().map(|jump| format!("-D {} {jump}", chain.hook)));
    lines.extend(insert_jumps(chain));
    lines
}

/// The lines that remove `chain` and every jump of kvm-net's to it (from
/// its hook, or carrying its comment elsewhere); none when it is gone. A
/// chain that a rule of someone else's still jumps to cannot be deleted: it
/// is only emptied (a jump to an empty chain changes nothing), so that the
/// rest of the table's edits still apply.
fn remove_edits(table: &Listing, chain: &OwnChain) -> Vec<String> {
    let (ours, foreign): (Vec<_>, Vec<_>) =
        table.jumps_into(&chain.name).into_iter().partition(|(owner, spec)| chain.is_own_jump(owner, spec));
    let mut lines: Vec<String> = ours.iter().map(|(owner, spec)| format!("-D {owner} {spec}")).collect();
    if table.has_chain(&chain.name) {
        lines.push(format!("-F {}", chain.name));
        if foreign.is_empty() {
            lines.push(format!("-X {}", chain.name));
        }
    }
    lines
}

/// Whether reading a family failed because its commands are not installed
/// (ip6tables on an IPv4-only host): then it holds nothing of kvm-net's.
fn tool_missing(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<Error>(), Some(Error::MissingTool(_)))
}

impl IptablesFirewall {
    /// Reads each family once, collects the edits `edit` asks for per chain,
    /// and applies them with at most one restore per family. Returns the
    /// rules of others that jump into the chains, in the tables as they were.
    /// With `skip_missing`, a family whose commands are not installed is
    /// skipped: it cannot hold anything kvm-net made.
    fn apply(
        &self,
        chains: &[OwnChain],
        edit: fn(&Listing, &OwnChain) -> Vec<String>,
        skip_missing: bool,
    ) -> Result<Vec<String>> {
        let mut foreign = Vec::new();
        for (family, chains) in by_family(chains) {
            let saved = match Saved::read(family) {
                Ok(saved) => saved,
                Err(err) if skip_missing && tool_missing(&err) => {
                    trace(format_args!("{}: not installed, so it holds no rules of kvm-net's", command(family)));
                    continue;
                }
                Err(err) => return Err(err),
            };
            let mut edits: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for chain in chains {
                let listing = saved.listing(chain.table);
                foreign.extend(
                    listing
                        .jumps_into(&chain.name)
                        .into_iter()
                        .filter(|(owner, spec)| !chain.is_own_jump(owner, spec))
                        .map(|(owner, spec)| format!("{} -t {} -A {owner} {spec}", command(family), chain.table)),
                );
                let lines = edit(&listing, chain);
                if !lines.is_empty() {
                    trace(format_args!(
                        "{} ({} table {}): {}",
                        chain.name,
                        command(family),
                        chain.table,
                        summary(&lines)
                    ));
                }
                edits.entry(chain.table).or_default().extend(lines);
            }
            let text = script(edits);
            if !text.is_empty() {
                restore(family, &text)?;
            }
        }
        Ok(foreign)
    }
}

impl IptablesFirewall {
    /// Makes the plan's chains exist with exactly their rules and one jump
    /// each, adding what is missing and leaving everything else alone.
    pub fn ensure(&self, plan: &Plan) -> Result<()> {
        self.ensure_chains(&render(plan))
    }

    /// As [`IptablesFirewall::ensure`], for chains already in iptables' form.
    pub fn ensure_chains(&self, chains: &[OwnChain]) -> Result<()> {
        self.apply(chains, ensure_edits, false).context("installing kvm-net's chains").map(drop)
    }

    /// As [`IptablesFirewall::ensure`], and moves each jump that a DROP or
    /// REJECT rule precedes in its built-in chain to the top.
    pub fn ensure_ahead(&self, plan: &Plan) -> Result<()> {
        self.ensure_chains_ahead(&render(plan))
    }

    /// As [`IptablesFirewall::ensure_chains`], moving jumps ahead as
    /// [`IptablesFirewall::ensure_ahead`] does.
    pub fn ensure_chains_ahead(&self, chains: &[OwnChain]) -> Result<()> {
        self.apply(chains, ensure_ahead_edits, false).context("installing kvm-net's chains").map(drop)
    }

    /// Deletes every chain kvm-net may have made for `bridge` and the jumps
    /// to them; what is already gone counts as removed. Nothing outside
    /// these chains is touched.
    pub fn remove(&self, bridge: &IfName) -> Result<()> {
        self.remove_chains(&all_chains(bridge))
    }

    /// As [`IptablesFirewall::remove`], for some chains only.
    pub fn remove_chains(&self, chains: &[OwnChain]) -> Result<()> {
        let foreign = self.apply(chains, remove_edits, true).context("removing kvm-net's chains")?;
        if foreign.is_empty() {
            Ok(())
        } else {
            Err(Error::ChainInUse(format!("other rules jump to them: {}", foreign.join("; "))).into())
        }
    }

    /// How each of the plan's chains compares with it, without changing anything.
    pub fn state(&self, plan: &Plan) -> Result<Vec<ChainState>> {
        self.state_of(&render(plan))
    }

    fn state_of(&self, chains: &[OwnChain]) -> Result<Vec<ChainState>> {
        let mut states = Vec::with_capacity(chains.len());
        for (family, chains) in by_family(chains) {
            let saved = match Saved::read(family) {
                Ok(saved) => saved,
                Err(err) if tool_missing(&err) => Saved { tables: BTreeMap::new() },
                Err(err) => return Err(err),
            };
            for chain in chains {
                let table = saved.listing(chain.table);
                let state = if !table.has_chain(&chain.name) {
                    RuleState::Missing
                } else if table.rules_of(&chain.name) != chain.rules {
                    RuleState::Differs
                } else if table.jumps_to(chain.hook, &chain.name).is_empty() {
                    RuleState::NoJump
                } else if !jumps_as_planned(&table.jumps_to(chain.hook, &chain.name), chain) {
                    RuleState::Differs
                } else {
                    RuleState::Ok
                };
                states.push(ChainState {
                    family,
                    kind: chain.kind,
                    table: chain.table.to_owned(),
                    chain: chain.name.clone(),
                    shown: format!("{} {}", command(family), chain.name),
                    state,
                });
            }
        }
        Ok(states)
    }

    /// Whether any chain kvm-net may have made for `bridge` exists.
    pub fn leftovers(&self, bridge: &IfName) -> Result<bool> {
        Ok(self.state_of(&all_chains(bridge))?.iter().any(|c| c.state != RuleState::Missing))
    }

    /// Whether `hook`'s policy is DROP, whether it jumps to `chain`, and
    /// its DROP and REJECT rules ahead of that jump (all of them without one).
    pub fn drops_before(
        &self,
        family: Family,
        table: &str,
        hook: &str,
        chain: &str,
    ) -> Result<(bool, bool, Vec<String>)> {
        let saved = Saved::read(family)?;
        let listing = saved.listing(table);
        let policy_drop = listing.lines.iter().any(|l| l.strip_prefix(&format!("-P {hook} ")) == Some("DROP"));
        let rules = listing.drops_ahead_of(hook, chain).into_iter().map(|spec| format!("-A {hook} {spec}")).collect();
        Ok((policy_drop, !listing.jumps_to(hook, chain).is_empty(), rules))
    }
}

/// One table in `iptables -S` form.
struct Listing<'a> {
    lines: &'a [String],
}

impl<'a> Listing<'a> {
    fn has_chain(&self, name: &str) -> bool {
        self.lines.iter().any(|line| line.strip_prefix("-N ") == Some(name))
    }

    /// The rule specs of `chain`, in order, without their `-A CHAIN ` prefix.
    fn rules_of(&self, chain: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain} ");
        self.lines.iter().filter_map(|line| line.strip_prefix(prefix.as_str())).collect()
    }

    /// Rules of the built-in `hook` whose target is `chain`, whoever wrote them.
    fn jumps_to(&self, hook: &str, chain: &str) -> Vec<&'a str> {
        self.rules_of(hook).into_iter().filter(|spec| targets(spec, chain)).collect()
    }

    /// The rules of `hook` ahead of its first jump to `chain` (all of
    /// them when there is no jump) that drop: DROP and REJECT rules, and
    /// jumps to chains through which a packet can be dropped.
    fn drops_ahead_of(&self, hook: &str, chain: &str) -> Vec<&'a str> {
        self.rules_of(hook)
            .into_iter()
            .take_while(|spec| !targets(spec, chain))
            .filter(|spec| self.leads_to_drop(spec, &mut vec![hook.to_owned()]))
            .collect()
    }

    /// Whether the rule `spec` drops, or leads to a chain (not among
    /// `visited`) in which a rule does.
    fn leads_to_drop(&self, spec: &str, visited: &mut Vec<String>) -> bool {
        let Some(target) = target_of(spec) else { return false };
        if target == "DROP" || target == "REJECT" {
            return true;
        }
        if visited.iter().any(|seen| seen == target) || !self.has_chain(target) {
            return false;
        }
        visited.push(target.to_owned());
        self.rules_of(target).into_iter().any(|rule| self.leads_to_drop(rule, visited))
    }

    /// Every rule outside `chain` itself that jumps or goes to it, with
    /// the chain it is in.
    fn jumps_into(&self, chain: &str) -> Vec<(&'a str, &'a str)> {
        self.lines
            .iter()
            .filter_map(|line| {
                let (owner, spec) = line.strip_prefix("-A ")?.split_once(' ')?;
                (owner != chain && targets(spec, chain)).then_some((owner, spec))
            })
            .collect()
    }
}

/// Whether a rule spec jumps (`-j`) or goes (`-g`) to `chain`.
fn targets(spec: &str, chain: &str) -> bool {
    target_of(spec) == Some(chain)
}

/// The target a rule spec jumps (`-j`) or goes (`-g`) to.
fn target_of(spec: &str) -> Option<&str> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words.windows(2).find(|pair| pair[0] == "-j" || pair[0] == "-g").map(|pair| pair[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Network;
    use crate::firewall::plan::plan;

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KVMNET-NAT-br0 - [0:0]
:KVMNET-NAT-br00 - [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0
-A POSTROUTING -m comment --comment \"kvm-net:br00\" -j KVMNET-NAT-br00
-A POSTROUTING -j KVMNET-NAT-br0
-A KVMNET-NAT-br0 -s 10.0.0.0/8 -j RETURN
-A KVMNET-NAT-br00 -s 10.0.0.0/8 -j MASQUERADE
COMMIT
*filter
:FORWARD DROP [0:0]
COMMIT
";

    #[test]
    fn saved_tables_read_as_listings() {
        let saved = Saved::parse(SAVED);
        let nat = saved.listing("nat");
        assert!(nat.has_chain("KVMNET-NAT-br0"));
        assert!(!nat.has_chain("KVMNET-NAT-br"));
        assert_eq!(nat.rules_of("KVMNET-NAT-br0"), ["-s 10.0.0.0/8 -j RETURN"]);
        assert_eq!(
            nat.jumps_to("POSTROUTING", "KVMNET-NAT-br0"),
            ["-m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0", "-j KVMNET-NAT-br0"]
        );
        assert_eq!(saved.listing("filter").lines, ["-P FORWARD DROP"]);
        assert!(saved.listing("mangle").lines.is_empty());
    }

    #[test]
    fn edits_rewrite_a_damaged_chain_and_drop_duplicate_jumps() {
        let saved = Saved::parse(SAVED);
        let chains = render(&plan(&Network { ipv4: "10.0.0.1/8".parse().ok(), ..Network::classic() }));
        let nat = chains.iter().find(|c| c.table == "nat").expect("nat chain");
        let edits = ensure_edits(&saved.listing("nat"), nat);
        assert_eq!(edits[0], ":KVMNET-NAT-br0 - [0:0]");
        // An older kvm-net's unconditional jump and a duplicate: replaced by the planned one.
        assert_eq!(
            edits[1 + nat.rules.len()..],
            [
                "-D POSTROUTING -m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0",
                "-D POSTROUTING -j KVMNET-NAT-br0",
                "-I POSTROUTING 1 -s 10.0.0.0/8 -m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0",
            ]
        );
        let forward = chains.iter().find(|c| c.table == "filter").expect("filter chain");
        let edits = ensure_edits(&saved.listing("filter"), forward);
        assert_eq!(
            edits[edits.len() - 2..],
            [
                "-I FORWARD 1 -o br0 -m comment --comment \"kvm-net:br0\" -j KVMNET-FWD-br0",
                "-I FORWARD 1 -i br0 -m comment --comment \"kvm-net:br0\" -j KVMNET-FWD-br0",
            ],
            "one jump per direction, in order at the top"
        );
        assert_eq!(
            remove_edits(&saved.listing("nat"), nat),
            [
                "-D POSTROUTING -m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0",
                "-D POSTROUTING -j KVMNET-NAT-br0",
                "-F KVMNET-NAT-br0",
                "-X KVMNET-NAT-br0",
            ]
        );
        assert!(remove_edits(&saved.listing("filter"), forward).is_empty());
        let script = script(BTreeMap::from([("nat", vec!["-F X".to_owned()]), ("filter", Vec::new())]));
        assert_eq!(script, "*nat\n-F X\nCOMMIT\n");
    }
}
