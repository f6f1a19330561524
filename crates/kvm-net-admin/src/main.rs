//! `kvm-net`: the administrator's view of what the tap helpers manage.
//! Parses the command line and prints; everything else is the core's.

mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kvm_net_core::cli::one_line;
use kvm_net_core::config::model::{Config, Mode, Network};
use kvm_net_core::config::Environment;
use kvm_net_core::error::Error;
use kvm_net_core::ifname::IfName;
use kvm_net_core::ops::network::{self, Down};
use kvm_net_core::report::check::{self, Finding};
use kvm_net_core::report::status::{self, Status};
use kvm_net_core::security::privilege::privileged_beyond_caller;

/// Status, diagnosis and clean-up of the networks kvm-net's tap helpers
/// (kvm-natup, kvm-natdown, kvm-ifup, kvm-ifdown) manage.
#[derive(Parser)]
#[command(name = "kvm-net", version, max_term_width = 100)]
struct Args {
    /// Config file [default: $KVM_NET_CONFIG, else /etc/kvm-net/kvm-net.toml]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show each network: bridge, addresses, ports (and the QEMU holding each), rules, dnsmasq
    Status {
        /// Only this network
        network: Option<String>,
        /// Print JSON (shape documented in kvm-net(1))
        #[arg(long)]
        json: bool,
    },
    /// Diagnose: one finding per line with its fix; exit 0 clean, 1 warnings, 2 errors
    Check {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove managed networks with no ports left (bridge, rules, dnsmasq)
    Gc {
        /// Say what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring a managed network up before any VM (bridge, rules, DHCP), or every autostart network
    Up {
        /// Network name from the config
        #[arg(required_unless_present = "autostart", conflicts_with = "autostart")]
        network: Option<String>,
        /// Every network with autostart = true (what kvm-net.service runs at boot)
        #[arg(long)]
        autostart: bool,
    },
    /// Restore a running network's rules, dnsmasq and forwarding, with its firewall jumps ahead of DROP rules
    Repair {
        /// Network name from the config
        network: String,
    },
    /// Take a managed network down; refused while VMs are attached
    Down {
        /// Network name from the config
        #[arg(required_unless_present = "autostart", conflicts_with = "autostart")]
        network: Option<String>,
        /// Also when ports are attached (their VMs lose the network)
        #[arg(long, conflicts_with = "autostart")]
        force: bool,
        /// Every network with autostart = true that no VM uses (busy ones stay up)
        #[arg(long)]
        autostart: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("kvm-net: {}", one_line(&err));
            ExitCode::from(err.chain().find_map(|c| c.downcast_ref::<Error>()).map_or(1, Error::exit_code).max(1))
        }
    }
}

fn load_config(explicit: Option<PathBuf>) -> Result<Result<Config, Error>> {
    let env = Environment::from_process()?;
    let path = explicit.unwrap_or_else(|| env.config_path());
    Ok(Config::load(&path, privileged_beyond_caller()).and_then(|config| config.with_environment(&env)))
}

fn run(args: Args) -> Result<u8> {
    let config = load_config(args.config)?;
    match args.command {
        Command::Status { network, json } => {
            let config = config?;
            if let Some(name) = &network {
                config.network(name).with_context(|| format!("no network named {name} in {}", config.source))?;
            }
            let status = status::collect(&config, network.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(0)
        }
        Command::Check { json } => {
            let findings = check::run(config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                print_findings(&findings);
            }
            Ok(check::exit_code(&findings))
        }
        Command::Gc { dry_run } => {
            let removed = network::gc(config.as_ref().ok(), dry_run)?;
            if removed.is_empty() {
                println!("nothing to remove");
            }
            for line in removed {
                println!("{line}");
            }
            Ok(0)
        }
        Command::Up { autostart: true, .. } => Ok(up_autostart(&config?)),
        Command::Down { autostart: true, .. } => Ok(down_autostart(&config?)),
        Command::Up { network, .. } => {
            let network = network.unwrap_or_default();
            let config = config?;
            let chosen = managed(&config, &network)?;
            network::up(chosen)?;
            println!("network {network} is up on {}", chosen.bridge);
            Ok(0)
        }
        Command::Repair { network } => {
            let config = config?;
            // A bridged network's ports have limits of kvm-net's to repair, if it gives them any.
            let chosen = match config.network(&network) {
                Some(chosen) if chosen.mode == Mode::Bridged && chosen.has_limits() => chosen,
                _ => managed(&config, &network)?,
            };
            if network::repair(chosen)? {
                println!("network {network} on {} is whole again", chosen.bridge);
                Ok(0)
            } else {
                eprintln!("kvm-net: network {network} is down (no bridge {}): nothing to repair; start a VM on it, or run `kvm-net up {network}`", chosen.bridge);
                Ok(1)
            }
        }
        Command::Down { network, force, .. } => {
            let network = network.unwrap_or_default();
            let config = config?;
            let bridge: IfName = managed(&config, &network)?.bridge.clone();
            match network::down(&bridge, force)? {
                Down::InUse { ports } => {
                    eprintln!(
                        "kvm-net: network {network} still has ports ({}); stop those VMs first, or use --force",
                        ports.join(", ")
                    );
                    Ok(1)
                }
                Down::Removed { detached } if detached.is_empty() => {
                    println!("network {network} is down");
                    Ok(0)
                }
                Down::Removed { detached } => {
                    println!("network {network} is down; its VMs lost their network: {}", detached.join(", "));
                    Ok(0)
                }
            }
        }
    }
}

/// `kvm-net up --autostart`: one line per network; 1 if any failed.
fn up_autostart(config: &Config) -> u8 {
    each_autostart(config, network::up_autostart(config), |network, ()| {
        format!("network {} is up on {}", network.name, network.bridge)
    })
}

/// `kvm-net down --autostart`: one line per network; 1 if any failed.
fn down_autostart(config: &Config) -> u8 {
    each_autostart(config, network::down_autostart(config), |network, down| match down {
        Down::Removed { .. } => format!("network {} is down", network.name),
        Down::InUse { ports } => format!("network {} stays up: VMs still use it ({})", network.name, ports.join(", ")),
    })
}

/// Prints each autostart network's outcome, `said` on success and the
/// error on stderr; 1 if any failed. With none, says so (kvm-net.service's
/// journal then tells why nothing came up or went down).
fn each_autostart<T>(
    config: &Config,
    outcomes: Vec<(&Network, Result<T>)>,
    said: impl Fn(&Network, T) -> String,
) -> u8 {
    if outcomes.is_empty() {
        println!("no network in {} has autostart = true", config.source);
    }
    let mut code = 0;
    for (network, outcome) in outcomes {
        match outcome {
            Ok(done) => println!("{}", said(network, done)),
            Err(err) => {
                eprintln!("kvm-net: network {}: {}", network.name, one_line(&err));
                code = 1;
            }
        }
    }
    code
}

fn managed<'a>(config: &'a Config, name: &str) -> Result<&'a Network> {
    let network = config.network(name).with_context(|| format!("no network named {name} in {}", config.source))?;
    if !network.mode.is_managed() {
        anyhow::bail!(
            "network {name} is {}: its bridge is the system's, kvm-net never brings it up or down",
            network.mode
        );
    }
    Ok(network)
}

fn print_status(status: &Status) {
    println!("config: {}", status.config);
    let mut rows = vec![["NETWORK", "MODE", "BRIDGE", "STATE", "ADDRESSES", "PORTS", "FIREWALL", "RULES", "DHCP"]
        .map(String::from)
        .to_vec()];
    for n in &status.networks {
        let ports: Vec<String> = n
            .ports
            .iter()
            .map(|p| match (&p.process, p.pid) {
                (Some(process), Some(pid)) => format!("{} ({process} {pid})", p.name),
                _ => p.name.clone(),
            })
            .collect();
        let rules = if n.needs_root.contains(&"rules") {
            "(needs root)".to_owned()
        } else if n.rules.is_empty() {
            "-".to_owned()
        } else {
            let bad: Vec<String> =
                n.rules.iter().filter(|r| r.state != "ok").map(|r| format!("{} {}", r.chain, r.state)).collect();
            if bad.is_empty() {
                "ok".to_owned()
            } else {
                bad.join(", ")
            }
        };
        let dhcp = match &n.dnsmasq {
            None => "off".to_owned(),
            Some(d) => d.pid.map_or("not running".to_owned(), |pid| format!("dnsmasq {pid}")),
        };
        rows.push(vec![
            n.name.clone(),
            n.mode.clone(),
            n.bridge.clone(),
            n.state.to_owned(),
            dash(n.addresses.join(" ")),
            dash(ports.join(", ")),
            n.firewall.unwrap_or("-").to_owned(),
            rules,
            dhcp,
        ]);
    }
    print!("{}", table::render(&rows));
    for n in &status.networks {
        if let Some(domain) = &n.domain {
            println!("domain of {}: {domain}", n.name);
        }
        if n.autostart {
            println!("{} starts at boot (autostart)", n.name);
        }
        for f in &n.forwards {
            let listens = match &f.host_address {
                Some(address) => format!("{} {address}:{}", f.proto, f.host_ports),
                None => format!("{} {}", f.proto, f.host_ports),
            };
            let guest = match &f.guest {
                Some(name) => format!("{name} ({})", f.guest_address),
                None => f.guest_address.clone(),
            };
            println!("forward of {}: {listens} -> {guest}:{}", n.name, f.guest_ports);
        }
        if let Some(ovs) = &n.ovs {
            if let Some(error) = &ovs.error {
                println!("Open vSwitch of {}: {error}", n.name);
            }
            for port in &n.ports {
                let iface_id = port.iface_id.as_deref().unwrap_or("-");
                let installed =
                    if port.ovn_installed == Some(true) { "installed by OVN" } else { "not installed by OVN" };
                println!("port of {}: {} iface-id {iface_id}, {installed}", n.name, port.name);
            }
        }
        for lease in &n.leases {
            let name = lease.name.as_deref().unwrap_or("-");
            let tap = lease.tap.as_deref().unwrap_or("not seen on a port");
            println!("lease of {}: {} {} {name} on {tap}", n.name, lease.address, lease.mac);
        }
    }
    if !status.unconfigured_bridges.is_empty() {
        println!("bridges made by kvm-net that no network names: {}", status.unconfigured_bridges.join(", "));
    }
    if status.networks.iter().any(|n| !n.needs_root.is_empty()) {
        println!("the firewall answers only root: run kvm-net status as root for rules and guest bindings");
    }
}

fn dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

fn print_findings(findings: &[Finding]) {
    if findings.is_empty() {
        println!("ok: no problems found");
    }
    for finding in findings {
        let severity = match finding.severity {
            check::Severity::Error => "error",
            check::Severity::Warning => "warning",
        };
        println!("{severity} [{}]: {}; fix: {}", finding.code, finding.message, finding.fix);
    }
}
