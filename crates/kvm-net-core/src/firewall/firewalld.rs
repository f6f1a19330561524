//! firewalld beside kvm-net. firewalld's own table rejects forwarded
//! traffic, DHCP and DNS from interfaces in no zone, and an accept in
//! kvm-net's table cannot override that. So, where firewalld runs, each
//! managed bridge goes into firewalld's `trusted` zone (guests get what they
//! get on a plain host; the host's other interfaces and their zones are
//! untouched), at runtime and in the permanent configuration: a reload
//! (`firewall-cmd --reload`) drops runtime bindings but applies the
//! permanent ones again, so guests keep working without a VM start. What
//! kvm-net added is recorded under /run/kvm-net/firewalld and is all that
//! teardown removes. A bridge already in a zone (the administrator's) is
//! left there. Hosts without firewalld pay one netlink request.

use std::process::Stdio;

use anyhow::{anyhow, Context, Result};

use super::nftables;
use crate::error::Error;
use crate::ifname::IfName;
use crate::kernel::netns::bridge_tag;
use crate::security::privilege;
use crate::security::rundir::{Area, SafeDir};
use crate::trace::trace;

/// The zone kvm-net puts its bridges in.
pub const ZONE: &str = "trusted";

/// firewall-cmd's exit status when the interface is bound to another zone.
const ZONE_CONFLICT: i32 = 26;

/// What kvm-net added to firewalld for one bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Added {
    runtime: bool,
    permanent: bool,
}

impl Added {
    fn text(self) -> String {
        format!("runtime={} permanent={}\n", self.runtime, self.permanent)
    }

    fn parse(text: &str) -> Self {
        Added { runtime: text.contains("runtime=true"), permanent: text.contains("permanent=true") }
    }
}

/// Whether firewalld runs in this network namespace.
pub fn running() -> Result<bool> {
    nftables::foreign::firewalld_runs()
}

/// Runs `program args`; its status and output.
fn run(program: &'static str, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let output = privilege::command(program).args(args).stdin(Stdio::null()).output().map_err(|err| {
        if err.kind() == std::io::ErrorKind::NotFound {
            anyhow::Error::new(Error::MissingTool(program))
        } else {
            anyhow::Error::new(err).context(format!("running {program}"))
        }
    })?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    Ok((output.status.code(), text(&output.stdout), text(&output.stderr)))
}

/// `firewall-cmd [--permanent] --zone=trusted --ACTION-interface=BRIDGE`:
/// whether it changed anything (false: it was so already, or the interface
/// is in another zone).
fn zone_binding(action: &str, permanent: bool, bridge: &IfName) -> Result<bool> {
    let interface = format!("--{action}-interface={bridge}");
    let zone = format!("--zone={ZONE}");
    let mut args = vec![zone.as_str(), interface.as_str()];
    if permanent {
        args.insert(0, "--permanent");
    }
    let (status, _, stderr) = run("firewall-cmd", &args)?;
    match status {
        Some(0) => Ok(!stderr.contains("ALREADY_ENABLED") && !stderr.contains("NOT_ENABLED")),
        Some(ZONE_CONFLICT) => Ok(false),
        _ => Err(anyhow!("firewall-cmd {} failed: {stderr}", args.join(" "))),
    }
}

fn records(create: bool) -> Result<Option<SafeDir>> {
    if create {
        SafeDir::create(Area::Firewalld).map(Some)
    } else {
        SafeDir::existing(Area::Firewalld)
    }
}

fn record(bridge: &IfName) -> Result<Option<Added>> {
    let Some(dir) = records(false)? else { return Ok(None) };
    Ok(dir.read(&bridge_tag(bridge)?, 256)?.map(|text| Added::parse(&text)))
}

/// The zone firewalld has the bridge in at runtime, if any.
pub fn zone_of(bridge: &IfName) -> Result<Option<String>> {
    let (status, stdout, _) = run("firewall-cmd", &[&format!("--get-zone-of-interface={bridge}")])?;
    Ok((status == Some(0) && !stdout.is_empty()).then_some(stdout))
}

/// Puts the bridge in the `trusted` zone where firewalld runs, unless it is
/// in a zone already; records what it added. Once recorded, a VM start asks
/// firewalld nothing; `again` (`kvm-net repair`) asks anyway.
pub fn ensure(bridge: &IfName, again: bool) -> Result<()> {
    if !running()? {
        return Ok(());
    }
    let known = record(bridge)?;
    if known.is_some() && !again {
        return Ok(());
    }
    let mut added = known.unwrap_or_default();
    added.runtime |= zone_binding("add", false, bridge)?;
    added.permanent |= zone_binding("add", true, bridge)?;
    trace(format_args!("firewalld: {bridge} in zone {ZONE} ({})", added.text().trim()));
    let dir = records(true)?.context("creating /run/kvm-net/firewalld")?;
    dir.replace(&bridge_tag(bridge)?, added.text().as_bytes(), 0o644)
}

/// Takes back what kvm-net added to firewalld for the bridge, if anything.
/// Where firewalld has stopped meanwhile, the permanent binding is removed
/// with `firewall-offline-cmd`.
pub fn release(bridge: &IfName) -> Result<()> {
    let Some(added) = record(bridge)? else { return Ok(()) };
    if running()? {
        if added.runtime {
            zone_binding("remove", false, bridge)?;
        }
        if added.permanent {
            zone_binding("remove", true, bridge)?;
        }
    } else if added.permanent {
        let interface = format!("--remove-interface={bridge}");
        let (status, _, stderr) = run("firewall-offline-cmd", &[&format!("--zone={ZONE}"), &interface])?;
        if status != Some(0) {
            return Err(anyhow!("firewall-offline-cmd --zone={ZONE} {interface} failed: {stderr}"));
        }
    }
    trace(format_args!("firewalld: {bridge} out of zone {ZONE}"));
    match records(false)? {
        Some(dir) => dir.remove(&bridge_tag(bridge)?),
        None => Ok(()),
    }
}

/// Whether kvm-net holds something of firewalld's for the bridge.
pub fn leftover(bridge: &IfName) -> Result<bool> {
    Ok(record(bridge)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_say_what_was_added() {
        for added in
            [Added::default(), Added { runtime: true, permanent: false }, Added { runtime: true, permanent: true }]
        {
            assert_eq!(Added::parse(&added.text()), added);
        }
    }
}
