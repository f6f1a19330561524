//! One dnsmasq per managed network with DHCP, started hermetic (its own
//! generated config file and nothing else, bound to the bridge only), and
//! recognised by its command line so that kvm-net never stops a dnsmasq it
//! did not start.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::{Dhcp, Network};
use crate::ifname::IfName;
use crate::runtime::{bridge_tag, run_subdir};
use crate::trace::trace;

/// The Debian package that ships the dnsmasq binary without its system service.
pub const PACKAGE: &str = "dnsmasq-base";

/// The dnsmasq binary on PATH, if any.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("dnsmasq")).find(|candidate| candidate.is_file())
}

/// The dnsmasq of one bridge: its run directory and the files in it.
#[derive(Clone)]
pub struct Dnsmasq {
    dir: PathBuf,
}

impl Dnsmasq {
    /// The dnsmasq serving `bridge` in this network namespace.
    pub fn for_bridge(bridge: &IfName) -> Result<Self> {
        Ok(Self { dir: run_subdir("dnsmasq").join(bridge_tag(bridge)?) })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The `--conf-file=` argument that marks a dnsmasq as this one.
    fn conf_arg(&self) -> String {
        format!("--conf-file={}", self.file("dnsmasq.conf").display())
    }

    /// The PID of this bridge's dnsmasq, if its pidfile names a live dnsmasq
    /// started with this bridge's config file; anything else is not ours.
    pub fn running_pid(&self) -> Option<Pid> {
        let pid: i32 = fs::read_to_string(self.file("dnsmasq.pid")).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = cmdline.split(|b| *b == 0).any(|arg| arg == self.conf_arg().as_bytes());
        ours.then(|| Pid::from_raw(pid))
    }

    /// Makes this bridge's dnsmasq run with the config `network` calls for:
    /// starts it if it is not running (or died), restarts it if the config changed.
    pub fn ensure(&self, binary: &Path, network: &Network, dhcp: &Dhcp) -> Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let text = config_text(network, dhcp, &self.dir);
        let conf = self.file("dnsmasq.conf");
        let unchanged = fs::read_to_string(&conf).is_ok_and(|current| current == text);
        match self.running_pid() {
            Some(_) if unchanged => return Ok(()),
            Some(pid) => {
                trace(format_args!("restarting dnsmasq {pid} for {}: its config changed", network.bridge));
                stop_process(pid)?;
            }
            None => {}
        }
        fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
        self.start(binary, &network.bridge)
    }

    fn start(&self, binary: &Path, bridge: &IfName) -> Result<()> {
        trace(format_args!("starting dnsmasq for {bridge}"));
        let log_path = self.file("dnsmasq.log");
        let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        // dnsmasq forks its daemon and exits once the daemon is serving (or
        // failed): the status is the daemon's verdict. stdout/stderr go to a
        // file, never to QEMU's console.
        let status = Command::new(binary)
            .arg(self.conf_arg())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .with_context(|| format!("running {}", binary.display()))?;
        if !status.success() {
            let said = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(anyhow!("dnsmasq for bridge {bridge} failed to start ({status}): {}", said.trim()));
        }
        self.running_pid().map(drop).ok_or_else(|| {
            anyhow!("dnsmasq for bridge {bridge} started but wrote no pidfile in {}", self.dir.display())
        })
    }

    /// Whether anything of this bridge's dnsmasq is left (files or a process).
    pub fn leftover(&self) -> bool {
        self.dir.exists()
    }

    /// Stops this bridge's dnsmasq, if one of ours runs, and removes its files.
    pub fn stop(&self) -> Result<()> {
        if let Some(pid) = self.running_pid() {
            trace(format_args!("stopping dnsmasq {pid}"));
            stop_process(pid)?;
        }
        match fs::remove_dir_all(&self.dir) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", self.dir.display()))
            }
            _ => Ok(()),
        }
    }
}

/// SIGTERM, then SIGKILL if it has not gone within two seconds.
fn stop_process(pid: Pid) -> Result<()> {
    let gone = || !Path::new(&format!("/proc/{pid}")).exists();
    kill(pid, Signal::SIGTERM)
        .or_else(|e| if e == nix::errno::Errno::ESRCH { Ok(()) } else { Err(e) })
        .with_context(|| format!("stopping dnsmasq {pid}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !gone() {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The whole dnsmasq configuration for a network: hermetic (no system config,
/// no /etc/hosts), bound to the bridge only.
pub fn config_text(network: &Network, dhcp: &Dhcp, dir: &Path) -> String {
    let mut lines = vec![
        format!(
            "# Generated by kvm-net for network {} on bridge {}; rewritten by kvm-natup, do not edit.",
            network.name, network.bridge
        ),
        "strict-order".to_owned(),
        "no-hosts".to_owned(),
        format!("pid-file={}", dir.join("dnsmasq.pid").display()),
        "except-interface=lo".to_owned(),
        format!("interface={}", network.bridge),
        "bind-dynamic".to_owned(),
    ];
    if let Some(address) = network.ipv4 {
        let (start, end) = dhcp.range;
        lines.push(format!("dhcp-range={start},{end},{},{}", address.mask(), dhcp.lease_time));
        lines.push(format!("dhcp-lease-max={}", u32::from(end) - u32::from(start) + 1 + dhcp.hosts.len() as u32));
    }
    lines.extend([
        "dhcp-no-override".to_owned(),
        "dhcp-authoritative".to_owned(),
        format!("dhcp-leasefile={}", dir.join("dnsmasq.leases").display()),
    ]);
    for host in &dhcp.hosts {
        lines.push(match &host.name {
            Some(name) => format!("dhcp-host={},{},{name}", host.mac, host.ip),
            None => format!("dhcp-host={},{}", host.mac, host.ip),
        });
    }
    for record in &dhcp.records {
        lines.push(format!("host-record={},{}", record.name, record.ip));
    }
    if !dhcp.dns {
        lines.push("port=0".to_owned());
    }
    lines.push(String::new());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostRecord, StaticLease};

    #[test]
    fn config_is_hermetic_and_bound_to_the_bridge() {
        let network = Network::classic();
        let mut dhcp = Dhcp::defaults_for(network.ipv4.expect("classic has an address"));
        dhcp.hosts.push(StaticLease {
            mac: "52:54:00:00:00:01".into(),
            ip: "192.168.100.50".parse().expect("ip"),
            name: Some("web1".into()),
        });
        dhcp.records.push(HostRecord { name: "upstream.lab".into(), ip: "203.0.113.2".parse().expect("ip") });
        let text = config_text(&network, &dhcp, Path::new("/run/kvm-net/dnsmasq/x"));
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "strict-order",
                "no-hosts",
                "pid-file=/run/kvm-net/dnsmasq/x/dnsmasq.pid",
                "except-interface=lo",
                "interface=br0",
                "bind-dynamic",
                "dhcp-range=192.168.100.128,192.168.100.254,255.255.255.0,1h",
                "dhcp-lease-max=128",
                "dhcp-no-override",
                "dhcp-authoritative",
                "dhcp-leasefile=/run/kvm-net/dnsmasq/x/dnsmasq.leases",
                "dhcp-host=52:54:00:00:00:01,192.168.100.50,web1",
                "host-record=upstream.lab,203.0.113.2",
            ]
        );
        dhcp.dns = false;
        assert!(config_text(&network, &dhcp, Path::new("/x")).ends_with("port=0\n"));
    }
}
