//! The iptables backend: reads a table once with `iptables -S`, then changes
//! only what differs from the plan.

use std::error::Error as StdError;
use std::io;

use anyhow::{anyhow, Context, Result};
use iptables::IPTables;

use super::rules::OwnChain;
use super::Firewall;
use crate::error::Error;
use crate::trace::trace;

/// Drives the `iptables` binary (legacy or nf_tables flavour) found on PATH.
pub struct IptablesFirewall {
    ipt: IPTables,
}

impl Default for IptablesFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl IptablesFirewall {
    /// Builds the driver without the crate's `iptables --version` probe: every
    /// iptables since 1.4.20 has `-C` and `-w`, and a process spawn costs more
    /// than the rest of a warm start.
    pub fn new() -> Self {
        Self {
            ipt: IPTables {
                cmd: "iptables",
                has_check: true,
                has_wait: true,
                is_numeric: false,
            },
        }
    }

    /// One table as `iptables -S` prints it.
    fn list(&self, table: &str) -> Result<Vec<String>> {
        let output = self.ipt.execute(table, "-S").map_err(crate_error)?;
        if !output.status.success() {
            return Err(anyhow!(
                "iptables -t {table} -S failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    fn ensure_chain(&self, chain: &OwnChain) -> Result<()> {
        let listing = self.list(chain.table)?;
        let table = Listing { lines: &listing };
        if !table.has_chain(&chain.name) {
            trace(format_args!("creating chain {} in table {}", chain.name, chain.table));
            self.ipt.new_chain(chain.table, &chain.name).map_err(crate_error)?;
        }
        let current = table.rules_of(&chain.name);
        if current != chain.rules {
            trace(format_args!("writing {} rules of {}", chain.rules.len(), chain.name));
            if !current.is_empty() {
                self.ipt.flush_chain(chain.table, &chain.name).map_err(crate_error)?;
            }
            for rule in &chain.rules {
                self.ipt.append(chain.table, &chain.name, rule).map_err(crate_error)?;
            }
        }
        let jumps = table.jumps_to(chain.hook, &chain.name);
        match jumps.split_first() {
            None => {
                trace(format_args!("inserting jump {} -> {}", chain.hook, chain.name));
                self.ipt
                    .insert(chain.table, chain.hook, &chain.jump, 1)
                    .map_err(crate_error)?;
            }
            Some((_, duplicates)) => {
                for jump in duplicates {
                    self.ipt.delete(chain.table, chain.hook, jump).map_err(crate_error)?;
                }
            }
        }
        Ok(())
    }

    fn remove_chain(&self, chain: &OwnChain) -> Result<()> {
        let listing = self.list(chain.table)?;
        let table = Listing { lines: &listing };
        for jump in table.jumps_to(chain.hook, &chain.name) {
            self.ipt.delete(chain.table, chain.hook, jump).map_err(crate_error)?;
        }
        if table.has_chain(&chain.name) {
            trace(format_args!("deleting chain {} from table {}", chain.name, chain.table));
            self.ipt.flush_chain(chain.table, &chain.name).map_err(crate_error)?;
            self.ipt.delete_chain(chain.table, &chain.name).map_err(crate_error)?;
        }
        Ok(())
    }
}

impl Firewall for IptablesFirewall {
    fn ensure(&self, chains: &[OwnChain]) -> Result<()> {
        for chain in chains {
            self.ensure_chain(chain)
                .with_context(|| format!("installing {} chain {} (table {})", chain.hook, chain.name, chain.table))?;
        }
        Ok(())
    }

    fn remove(&self, chains: &[OwnChain]) -> Result<()> {
        for chain in chains {
            self.remove_chain(chain)
                .with_context(|| format!("removing chain {} (table {})", chain.name, chain.table))?;
        }
        Ok(())
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
        self.lines
            .iter()
            .filter_map(|line| line.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// Rules of the built-in `hook` whose target is `chain`, whoever wrote them.
    fn jumps_to(&self, hook: &str, chain: &str) -> Vec<&'a str> {
        self.rules_of(hook)
            .into_iter()
            .filter(|spec| {
                let words: Vec<&str> = spec.split_whitespace().collect();
                words
                    .windows(2)
                    .any(|pair| (pair[0] == "-j" || pair[0] == "-g") && pair[1] == chain)
            })
            .collect()
    }
}

/// The iptables crate's errors are neither Send nor Sync; keep their text, and
/// turn a missing binary into advice.
fn crate_error(err: Box<dyn StdError>) -> anyhow::Error {
    match err.downcast_ref::<io::Error>() {
        Some(io_err) if io_err.kind() == io::ErrorKind::NotFound => anyhow::Error::new(Error::MissingTool("iptables")),
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
            [
                "-m comment --comment \"kvm-net:br0\" -j KVMNET-NAT-br0",
                "-j KVMNET-NAT-br0"
            ]
        );
    }
}
