//! The iptables backend: reads a table once with `iptables -S`, then changes
//! only what differs from the plan.

use std::error::Error as StdError;
use std::io;

use anyhow::{anyhow, Context, Result};
use iptables::IPTables;

use super::rules::{Family, OwnChain};
use super::{ChainState, DropsBefore, Firewall, RuleState};
use crate::error::Error;
use crate::trace::trace;

/// Drives the `iptables` and `ip6tables` binaries (legacy or nf_tables
/// flavour) found on PATH.
pub struct IptablesFirewall {
    v4: IPTables,
    v6: IPTables,
}

impl Default for IptablesFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl IptablesFirewall {
    /// Builds the drivers without the crate's `iptables --version` probe: every
    /// iptables since 1.4.20 has `-C` and `-w`, and a process spawn costs more
    /// than the rest of a warm start.
    pub fn new() -> Self {
        let driver = |cmd| IPTables { cmd, has_check: true, has_wait: true, is_numeric: false };
        Self { v4: driver("iptables"), v6: driver("ip6tables") }
    }

    fn driver(&self, family: Family) -> &IPTables {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// One table as `iptables -S` prints it.
    fn list(&self, family: Family, table: &str) -> Result<Vec<String>> {
        let driver = self.driver(family);
        let output = driver.execute(table, "-S").map_err(|e| crate_error(driver.cmd, e))?;
        if !output.status.success() {
            return Err(anyhow!(
                "{} -t {table} -S failed: {}",
                driver.cmd,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
    }

    /// Runs `apply` on each chain with a listing of its table, reading each
    /// table once however many of its chains there are.
    fn with_listings<T>(
        &self,
        chains: &[OwnChain],
        apply: impl Fn(&IPTables, &Listing, &OwnChain) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut tables: Vec<(Family, &str)> = chains.iter().map(|c| (c.family, c.table)).collect();
        tables.sort_unstable();
        tables.dedup();
        let mut results = Vec::with_capacity(chains.len());
        for (family, table) in tables {
            let lines = self.list(family, table)?;
            let listing = Listing { lines: &lines };
            for chain in chains.iter().filter(|c| c.family == family && c.table == table) {
                results.push(apply(self.driver(family), &listing, chain)?);
            }
        }
        Ok(results)
    }
}

fn ensure_chain(ipt: &IPTables, table: &Listing, chain: &OwnChain) -> Result<()> {
    let fail = |e| crate_error(ipt.cmd, e);
    if !table.has_chain(&chain.name) {
        trace(format_args!("creating chain {} in {} table {}", chain.name, ipt.cmd, chain.table));
        ipt.new_chain(chain.table, &chain.name).map_err(fail)?;
    }
    let current = table.rules_of(&chain.name);
    if current != chain.rules {
        trace(format_args!("writing {} rules of {} ({})", chain.rules.len(), chain.name, ipt.cmd));
        if !current.is_empty() {
            ipt.flush_chain(chain.table, &chain.name).map_err(fail)?;
        }
        for rule in &chain.rules {
            ipt.append(chain.table, &chain.name, rule).map_err(fail)?;
        }
    }
    let jumps = table.jumps_to(chain.hook, &chain.name);
    match jumps.split_first() {
        None => {
            trace(format_args!("inserting jump {} -> {} ({})", chain.hook, chain.name, ipt.cmd));
            ipt.insert(chain.table, chain.hook, &chain.jump, 1).map_err(fail)?;
        }
        Some((_, duplicates)) => {
            for jump in duplicates {
                ipt.delete(chain.table, chain.hook, jump).map_err(fail)?;
            }
        }
    }
    Ok(())
}

fn remove_chain(ipt: &IPTables, table: &Listing, chain: &OwnChain) -> Result<()> {
    let fail = |e| crate_error(ipt.cmd, e);
    for jump in table.jumps_to(chain.hook, &chain.name) {
        ipt.delete(chain.table, chain.hook, jump).map_err(fail)?;
    }
    if table.has_chain(&chain.name) {
        trace(format_args!("deleting chain {} from {} table {}", chain.name, ipt.cmd, chain.table));
        ipt.flush_chain(chain.table, &chain.name).map_err(fail)?;
        ipt.delete_chain(chain.table, &chain.name).map_err(fail)?;
    }
    Ok(())
}

impl Firewall for IptablesFirewall {
    fn ensure(&self, chains: &[OwnChain]) -> Result<()> {
        self.with_listings(chains, |ipt, table, chain| {
            ensure_chain(ipt, table, chain).with_context(|| {
                format!("installing {} chain {} ({} table {})", chain.hook, chain.name, ipt.cmd, chain.table)
            })
        })
        .map(drop)
    }

    fn remove(&self, chains: &[OwnChain]) -> Result<()> {
        self.with_listings(chains, |ipt, table, chain| {
            remove_chain(ipt, table, chain)
                .with_context(|| format!("removing chain {} ({} table {})", chain.name, ipt.cmd, chain.table))
        })
        .map(drop)
    }

    fn state(&self, chains: &[OwnChain]) -> Result<Vec<ChainState>> {
        self.with_listings(chains, |_, table, chain| {
            let state = if !table.has_chain(&chain.name) {
                RuleState::Missing
            } else if table.rules_of(&chain.name) != chain.rules {
                RuleState::Differs
            } else if table.jumps_to(chain.hook, &chain.name).len() != 1 {
                RuleState::NoJump
            } else {
                RuleState::Ok
            };
            Ok(ChainState { family: chain.family, table: chain.table, name: chain.name.clone(), state })
        })
    }

    fn drops_before(&self, family: Family, table: &str, hook: &str, chain: &str) -> Result<DropsBefore> {
        let lines = self.list(family, table)?;
        let listing = Listing { lines: &lines };
        let policy = lines.iter().find_map(|l| l.strip_prefix(&format!("-P {hook} "))).unwrap_or("ACCEPT").to_owned();
        let mut rules = Vec::new();
        let mut jump_present = false;
        for spec in listing.rules_of(hook) {
            let words: Vec<&str> = spec.split_whitespace().collect();
            let target = words.windows(2).find(|w| w[0] == "-j").map(|w| w[1]);
            if target == Some(chain) {
                jump_present = true;
                break;
            }
            if matches!(target, Some("DROP" | "REJECT")) {
                rules.push(format!("-A {hook} {spec}"));
            }
        }
        Ok(DropsBefore { policy, jump_present, rules })
    }
}

/// The lines of `iptables -t TABLE -S`.
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
        self.rules_of(hook)
            .into_iter()
            .filter(|spec| {
                let words: Vec<&str> = spec.split_whitespace().collect();
                words.windows(2).any(|pair| (pair[0] == "-j" || pair[0] == "-g") && pair[1] == chain)
            })
            .collect()
    }
}

/// The iptables crate's errors are neither Send nor Sync; keep their text, and
/// turn a missing binary into advice.
fn crate_error(cmd: &'static str, err: Box<dyn StdError>) -> anyhow::Error {
    match err.downcast_ref::<io::Error>() {
        Some(io_err) if io_err.kind() == io::ErrorKind::NotFound => anyhow::Error::new(Error::MissingTool(cmd)),
        _ => anyhow!("{}", err.to_string().replace('\n', " ").trim().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_finds_chain_rules_and_jumps_by_target() {
        let lines: Vec<String> = [
            "-P POSTROUTING ACCEPT",
            "-N KVMNET-NAT-br0",
            "-N KVMNET-NAT-br00",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
            "-A POSTROUTING -m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0",
            "-A POSTROUTING -m comment --comment \"kvm-net:br00\" -j KVMNET-NAT-br00",
            "-A POSTROUTING -j KVMNET-NAT-br0",
            "-A KVMNET-NAT-br0 -s 10.0.0.0/8 -j RETURN",
            "-A KVMNET-NAT-br00 -s 10.0.0.0/8 -j MASQUERADE",
        ]
        .map(String::from)
        .to_vec();
        let table = Listing { lines: &lines };
        assert!(table.has_chain("KVMNET-NAT-br0"));
        assert!(!table.has_chain("KVMNET-NAT-br"));
        assert_eq!(table.rules_of("KVMNET-NAT-br0"), ["-s 10.0.0.0/8 -j RETURN"]);
        assert_eq!(
            table.jumps_to("POSTROUTING", "KVMNET-NAT-br0"),
            ["-m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0", "-j KVMNET-NAT-br0"]
        );
    }
}
