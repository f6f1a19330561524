//! An Open vSwitch bridge as a network's switch, spoken to through its
//! database ([`crate::switch::ovsdb`]), as `ovs-vsctl --may-exist add-port BRIDGE TAP
//! -- set Interface TAP external-ids:...` and `--if-exists del-port` would,
//! with no process: one transaction for the change (with the `next_cfg` bump
//! that asks ovs-vswitchd to apply it), then a bounded wait until it has
//! (`cur_cfg`) and opened the tap (`ofport`). A port added while vswitchd
//! does not apply it is taken out again. kvm-net never creates or deletes
//! the bridge.
//!
//! Its ports are marked twice: `external_ids:kvm-net-network=NETWORK` on the
//! Interface row (what `status`, `check` and the watcher list), and the
//! tap's alias in the kernel (what `check` uses to find a tap whose port
//! vanished from the bridge). The row also records which tap it was made
//! for (`external_ids:kvm-net-tap`: boot, network namespace and interface
//! index, [`crate::kernel::netns::link_identity`]): OVSDB keeps rows across
//! reboots and ovs-vswitchd takes any link of the row's name, so a row
//! whose tap is gone, or is another tap of that name, is stale, and goes
//! (the watcher, `kvm-net gc`, and any kvm-net helper about to attach a tap
//! of that name elsewhere).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use super::{made_tap_mac, Departures, Kind, PortReport, Switch, Tap};
use crate::config::model::{Mode, Network, OvsPorts};
use crate::error::{Error, NEEDS_ROOT_OVS};
use crate::ifname::IfName;
use crate::kernel::netlink::{Link, Netlink};
use crate::kernel::netns::link_identity;
use crate::switch::ovsdb::{map, map_pairs, row_uuid, rows, set_members, uuid, Ovsdb, Refusal};
use crate::trace::trace;

/// Open vSwitch's short name, the prefix of its `kvm-net check` codes.
const KIND: &str = "ovs";

/// The kind of an Open vSwitch bridge: ovs networks.
pub struct Ovs;

/// [`Ovs`], as `switch::with_kind` lists it.
pub const OVS: Ovs = Ovs;

impl Kind for Ovs {
    fn name(&self) -> &'static str {
        KIND
    }

    fn serves(&self, mode: Mode) -> bool {
        mode == Mode::Ovs
    }

    fn describe(&self, network: &Network) -> String {
        format!("Open vSwitch bridge {}", network.bridge)
    }

    fn open(&self, network: &Network, _netlink: &mut Netlink, _found: Option<Link>) -> Result<Box<dyn Switch>> {
        let settings = network.ovs.as_ref().ok_or_else(|| anyhow!("network {} has no ovs settings", network.name))?;
        Ok(Box::new(OvsBridge::connect(&network.name, &network.bridge, settings)?))
    }

    fn database(&self, network: &Network) -> Option<String> {
        network.ovs.as_ref().map(|settings| settings.ovsdb.display().to_string())
    }

    fn needs_root(&self) -> Option<&'static str> {
        Some(NEEDS_ROOT_OVS)
    }

    fn release_stale_named(&self, networks: &[&Network], tap: &str) -> Result<()> {
        release_stale_named(networks, tap)
    }
}

/// The external id that marks a port as kvm-net's, with its network's name.
const NETWORK_KEY: &str = "kvm-net-network";
/// The external id that names the tap the port was made for.
const TAP_KEY: &str = "kvm-net-tap";
/// The alias of a tap kvm-net made a port of ovs network `network`.
fn alias_of(network: &str) -> String {
    super::port_alias(KIND, network)
}

/// How long ovs-vswitchd gets to apply a change.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// One port of an OVS bridge that kvm-net added, as the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OvsPort {
    /// The Interface's name (the tap's).
    pub name: String,
    /// `external_ids:iface-id`.
    pub iface_id: Option<String>,
    /// Whether OVN has installed the port's flows (`external_ids:ovn-installed`).
    pub ovn_installed: bool,
    /// The OpenFlow port number vswitchd gave it (-1: it could not open the tap).
    pub ofport: Option<i64>,
    /// What vswitchd said went wrong with it.
    pub error: Option<String>,
    /// The tap it was made for (`external_ids:kvm-net-tap`; none from
    /// kvm-net releases before it was recorded).
    pub tap: Option<String>,
}

impl OvsPort {
    /// Whether `link` is the tap this port was made for: the same one, not
    /// another of that name (made after a reboot, by another user's VM).
    /// A port recorded without its tap is taken for it if the tap carries
    /// kvm-net's alias for the network (set as the port was made).
    fn made_for(&self, link: &Link, network: &str) -> bool {
        match &self.tap {
            Some(recorded) => link_identity(link.index).is_ok_and(|identity| identity == *recorded),
            None => link.alias.as_deref() == Some(alias_of(network).as_str()),
        }
    }
}

/// Ports of kvm-net's whose tap is there, each with its tap.
type PresentPorts = Vec<(OvsPort, Link)>;

/// An Open vSwitch bridge, through a connection to its database.
pub struct OvsBridge {
    db: Ovsdb,
    bridge: IfName,
    network: String,
    settings: OvsPorts,
}

fn equals(column: &str, value: Value) -> Value {
    json!([column, "==", value])
}

fn select(table: &str, condition: Value, columns: &[&str]) -> Value {
    json!({ "op": "select", "table": table, "where": [condition], "columns": columns })
}

/// The two operations that ask vswitchd to apply a transaction and say
/// which configuration number that will be.
fn bump() -> [Value; 2] {
    [
        json!({ "op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]] }),
        json!({ "op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"] }),
    ]
}

/// `cur_cfg` of the Open_vSwitch row a select returned: the configuration
/// vswitchd has applied. A database without it is not one vswitchd
/// serves: an error, not a wait.
fn current_cfg(result: &Value) -> Result<i64> {
    let rows = rows(result);
    let row = rows.first().ok_or_else(|| Refusal::Malformed("no Open_vSwitch row".to_owned()))?;
    row.get("cur_cfg")
        .and_then(Value::as_i64)
        .ok_or_else(|| Refusal::Malformed(format!("cur_cfg {} (not a number)", row["cur_cfg"])).into())
}

fn next_cfg(results: &[Value]) -> Option<i64> {
    results.last().map(rows)?.first()?.get("next_cfg")?.as_i64()
}

impl OvsBridge {
    /// Connects to the network's OVSDB server and finds its bridge.
    pub fn connect(network: &str, bridge: &IfName, settings: &OvsPorts) -> Result<Self> {
        let mut ovs = Self::open(network, bridge, settings)?;
        ovs.bridge_row()?;
        Ok(ovs)
    }

    /// Connects to the network's OVSDB server, whether its bridge exists or not.
    fn open(network: &str, bridge: &IfName, settings: &OvsPorts) -> Result<Self> {
        let db = Ovsdb::connect(&settings.ovsdb)?;
        Ok(Self { db, bridge: bridge.clone(), network: network.to_owned(), settings: settings.clone() })
    }

    /// The bridge's datapath type: "netdev" for the userspace datapath,
    /// "system" or "" for the kernel's.
    fn datapath_type(&mut self) -> Result<String> {
        let results = self.db.transact(vec![select(
            "Bridge",
            equals("name", json!(self.bridge.as_str())),
            &["datapath_type"],
        )])?;
        let row = rows(&results[0]).into_iter().next().ok_or_else(|| Error::OvsNoBridge(self.bridge.to_string()))?;
        Ok(row["datapath_type"].as_str().unwrap_or_default().to_owned())
    }

    /// The bridge's UUID and the UUIDs of its ports.
    fn bridge_row(&mut self) -> Result<(String, Vec<Value>)> {
        let results = self.db.transact(vec![select(
            "Bridge",
            equals("name", json!(self.bridge.as_str())),
            &["_uuid", "ports"],
        )])?;
        let row = rows(&results[0]).into_iter().next().ok_or_else(|| Error::OvsNoBridge(self.bridge.to_string()))?;
        let id = row_uuid(&row).ok_or_else(|| anyhow!("OVSDB sent a Bridge without a UUID"))?;
        Ok((id, set_members(&row["ports"])))
    }

    fn external_ids(&self, tap: &str, identity: &str) -> Value {
        let iface_id = self.settings.iface_id_of(tap);
        map(&[("iface-id", &iface_id), ("iface-status", "active"), (NETWORK_KEY, &self.network), (TAP_KEY, identity)])
    }

    fn tag(&self) -> Value {
        self.settings.vlan.map_or_else(|| json!(["set", []]), |vlan| json!(vlan))
    }

    /// `--may-exist add-port` with kvm-net's external ids; returns the
    /// configuration number to wait for, and whether the port is new. A
    /// stale port of kvm-net's of that name on another bridge (its tap went
    /// without its downscript) is taken away first.
    fn add(&mut self, tap: &Link) -> Result<(i64, bool)> {
        let identity = link_identity(tap.index)?;
        let tap = tap.name.as_str();
        let mut last = None;
        for _ in 0..3 {
            let (bridge, ports) = self.bridge_row()?;
            let found = self.db.transact(vec![select("Port", equals("name", json!(tap)), &["_uuid"])])?;
            let port = rows(&found[0]).first().and_then(row_uuid);
            let mut operations = match &port {
                Some(port) if !ports.contains(&uuid(port)) => {
                    if self.ours_elsewhere(tap)? {
                        trace(format_args!("{tap}: a stale port of kvm-net's on another bridge; taking it away"));
                        if let Some(cfg) = self.remove(tap)? {
                            self.wait_applied(cfg, &format!("the removal of stale port {tap}"))?;
                        }
                        continue;
                    }
                    let other = self.db.transact(vec![select(
                        "Bridge",
                        json!(["ports", "includes", uuid(port)]),
                        &["name"],
                    )])?;
                    let name =
                        rows(&other[0]).first().and_then(|r| r["name"].as_str().map(str::to_owned)).unwrap_or_default();
                    return Err(anyhow!("{tap} is a port of Open vSwitch bridge {name}, not {}", self.bridge));
                }
                Some(port) => vec![
                    json!({ "op": "mutate", "table": "Interface", "where": [equals("name", json!(tap))],
                            "mutations": [["external_ids", "delete", ["set", ["iface-id", "iface-status", NETWORK_KEY, TAP_KEY]]]] }),
                    json!({ "op": "mutate", "table": "Interface", "where": [equals("name", json!(tap))],
                            "mutations": [["external_ids", "insert", self.external_ids(tap, &identity)]] }),
                    json!({ "op": "update", "table": "Port", "where": [equals("_uuid", uuid(port))], "row": { "tag": self.tag() } }),
                ],
                None => vec![
                    json!({ "op": "insert", "table": "Interface", "uuid-name": "iface",
                            "row": { "name": tap, "external_ids": self.external_ids(tap, &identity) } }),
                    json!({ "op": "insert", "table": "Port", "uuid-name": "port",
                            "row": { "name": tap, "interfaces": ["named-uuid", "iface"], "tag": self.tag() } }),
                    json!({ "op": "mutate", "table": "Bridge", "where": [equals("_uuid", uuid(&bridge))],
                            "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]] }),
                ],
            };
            operations.extend(bump());
            match self.db.transact(operations) {
                Ok(results) => {
                    let cfg = next_cfg(&results).ok_or_else(|| anyhow!("OVSDB did not say its next_cfg"))?;
                    return Ok((cfg, port.is_none()));
                }
                // Someone added a port of that name meanwhile: look again.
                Err(err) if err.downcast_ref::<Refusal>().is_some_and(Refusal::is_constraint_violation) => {
                    last = Some(err)
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("adding {tap} to Open vSwitch kept failing")))
    }

    /// Whether the Interface `tap` carries kvm-net's mark (of any network):
    /// a port kvm-net made, which kvm-net may take away once it is stale.
    fn ours_elsewhere(&mut self, tap: &str) -> Result<bool> {
        let results = self.db.transact(vec![select("Interface", equals("name", json!(tap)), &["external_ids"])])?;
        Ok(rows(&results[0])
            .first()
            .is_some_and(|row| map_pairs(&row["external_ids"]).iter().any(|(key, _)| key == NETWORK_KEY)))
    }

    /// `--if-exists del-port`; returns the configuration number to wait
    /// for, if there was a port.
    fn remove(&mut self, tap: &str) -> Result<Option<i64>> {
        let found = self.db.transact(vec![select("Port", equals("name", json!(tap)), &["_uuid"])])?;
        let Some(port) = rows(&found[0]).first().and_then(row_uuid) else { return Ok(None) };
        let mut operations =
            vec![json!({ "op": "mutate", "table": "Bridge", "where": [["ports", "includes", uuid(&port)]],
                                          "mutations": [["ports", "delete", ["set", [uuid(&port)]]]] })];
        operations.extend(bump());
        let results = self.db.transact(operations)?;
        Ok(next_cfg(&results))
    }

    /// Waits (bounded) until vswitchd has applied configuration `cfg`.
    fn wait_applied(&mut self, cfg: i64, what: &str) -> Result<()> {
        let deadline = Instant::now() + APPLY_WAIT;
        loop {
            let results = self.db.transact(vec![
                json!({ "op": "select", "table": "Open_vSwitch", "where": [], "columns": ["cur_cfg"] }),
            ])?;
            if current_cfg(&results[0])? >= cfg {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::OvsNotApplied { what: what.to_owned(), seconds: APPLY_WAIT.as_secs() }.into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The Interface `tap` as vswitchd left it: its OpenFlow port and error.
    fn opened(&mut self, tap: &str) -> Result<(Option<i64>, Option<String>)> {
        let results = self.db.transact(vec![select("Interface", equals("name", json!(tap)), &["ofport", "error"])])?;
        let row = rows(&results[0]).into_iter().next().unwrap_or(Value::Null);
        let ofport = set_members(&row["ofport"]).first().and_then(Value::as_i64);
        let error = set_members(&row["error"]).first().and_then(|e| e.as_str().map(str::to_owned));
        Ok((ofport, error))
    }

    /// Adds `tap` as a port and waits until vswitchd has it; a port this
    /// call added that vswitchd does not take is removed again.
    fn add_applied(&mut self, link: &Link) -> Result<()> {
        let tap = link.name.as_str();
        let (cfg, added) = self.add(link)?;
        trace(format_args!("Open vSwitch bridge {}: port {tap} in the database (next_cfg {cfg})", self.bridge));
        let applied =
            self.wait_applied(cfg, &format!("port {tap} of bridge {}", self.bridge)).and_then(|()| {
                match self.opened(tap)? {
                    (Some(ofport), None) if ofport > 0 => Ok(()),
                    (_, error) => Err(anyhow!(
                        "Open vSwitch could not use {tap}: {}",
                        error.unwrap_or_else(|| "it has no OpenFlow port".to_owned())
                    )),
                }
            });
        if applied.is_err() && added {
            trace(format_args!("taking {tap} out of Open vSwitch again"));
            // Best effort: the first error is the one worth reporting.
            let _ = self.remove(tap);
        }
        applied
    }

    /// The ports kvm-net added for the network, as the database has them.
    fn our_ports(&mut self) -> Result<Vec<OvsPort>> {
        let ours = json!(["external_ids", "includes", map(&[(NETWORK_KEY, &self.network)])]);
        let results =
            self.db.transact(vec![select("Interface", ours, &["name", "external_ids", "ofport", "error"])])?;
        Ok(rows(&results[0])
            .iter()
            .filter_map(|row| {
                let ids = map_pairs(&row["external_ids"]);
                let id = |key: &str| ids.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
                Some(OvsPort {
                    name: row["name"].as_str()?.to_owned(),
                    iface_id: id("iface-id"),
                    ovn_installed: id("ovn-installed").as_deref() == Some("true"),
                    ofport: set_members(&row["ofport"]).first().and_then(Value::as_i64),
                    error: set_members(&row["error"]).first().and_then(|e| e.as_str().map(str::to_owned)),
                    tap: id(TAP_KEY),
                })
            })
            .collect())
    }

    /// The ports kvm-net added for the network, split into those whose tap
    /// is still there (with the tap) and those whose tap is gone (its VM went without its
    /// downscript, or the watcher has not got to it yet) or is another tap
    /// of that name (made after a reboot, or by another VM since).
    fn ports_by_presence(&mut self, netlink: &mut Netlink) -> Result<(PresentPorts, Vec<OvsPort>)> {
        let mut present = Vec::new();
        let mut gone = Vec::new();
        for port in self.our_ports()? {
            match netlink.link_by_name(&port.name)? {
                Some(link) if port.made_for(&link, &self.network) => present.push((port, link)),
                _ => gone.push(port),
            }
        }
        Ok((present, gone))
    }
}

/// Before kvm-net attaches `tap` to a switch that is not Open vSwitch:
/// takes away any port of kvm-net's of that name in the databases of the
/// `ovs` networks given (stale: its tap went, in a crash or at a reboot,
/// with no watcher left), and waits until ovs-vswitchd let go of the tap,
/// so that the tap never also joins a network it was not attached to. A
/// database that cannot be reached is skipped: it has no vswitchd applying it.
fn release_stale_named(ovs_networks: &[&Network], tap: &str) -> Result<()> {
    let mut done: Vec<&Path> = Vec::new();
    for network in ovs_networks {
        let Some(settings) = &network.ovs else { continue };
        if done.contains(&settings.ovsdb.as_path()) {
            continue;
        }
        done.push(&settings.ovsdb);
        let mut ovs = match OvsBridge::open(&network.name, &network.bridge, settings) {
            Ok(ovs) => ovs,
            Err(err) => {
                trace(format_args!("not looking for stale ports named {tap} at {}: {err:#}", settings.ovsdb.display()));
                continue;
            }
        };
        if ovs.ours_elsewhere(tap)? {
            trace(format_args!("{tap}: taking kvm-net's stale Open vSwitch port of that name away"));
            if let Some(cfg) = ovs.remove(tap)? {
                ovs.wait_applied(cfg, &format!("the removal of stale port {tap}"))?;
            }
        }
    }
    Ok(())
}

impl Switch for OvsBridge {
    fn describe(&self) -> String {
        format!("Open vSwitch bridge {}", self.bridge)
    }

    fn attach(&mut self, netlink: &mut Netlink, port: &Link, tap: Tap) -> Result<()> {
        let what = format!("adding {} to Open vSwitch bridge {}", port.name, self.bridge);
        self.add_applied(port).context(what.clone())?;
        let alias = alias_of(&self.network);
        let up = netlink.set_alias(port, &alias).and_then(|()| match tap {
            Tap::Qemu => netlink.set_up(port),
            Tap::Made => netlink.bring_up_with_mac(port, &made_tap_mac(port)),
        });
        if up.is_err() {
            let _ = self.remove(&port.name);
        }
        up.context(what)
    }

    fn detach(&mut self, netlink: &mut Netlink, port: &Link) -> Result<()> {
        let what = format!("port {} of bridge {}", port.name, self.bridge);
        let removed = self.remove(&port.name).with_context(|| format!("removing {what} from Open vSwitch"))?;
        // Set down once vswitchd has let go of it: closing a port, it writes
        // back the tap's flags as it last saw them (up).
        let applied = match removed {
            Some(cfg) => self.wait_applied(cfg, &format!("the removal of {what}")),
            None => Ok(()),
        };
        netlink.clear_alias(port)?;
        netlink.detach_and_down(port)?;
        applied
    }

    fn forwards_unfinished_checksums(&mut self) -> Result<bool> {
        Ok(self.datapath_type()? == "netdev")
    }

    fn ports(&mut self, netlink: &mut Netlink) -> Result<Vec<Link>> {
        Ok(self.ports_by_presence(netlink)?.0.into_iter().map(|(_, link)| link).collect())
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn keeps_departed_ports(&self) -> bool {
        true
    }

    fn stale_ports(&mut self, netlink: &mut Netlink) -> Result<Vec<String>> {
        Ok(self.ports_by_presence(netlink)?.1.into_iter().map(|port| port.name).collect())
    }

    fn forget(&mut self, port: &str) -> Result<()> {
        self.remove(port)
            .map(drop)
            .with_context(|| format!("removing port {port} from Open vSwitch bridge {}", self.bridge))
    }

    fn departures(&mut self, netlink: &mut Netlink) -> Result<Departures> {
        let names = self.ports_by_presence(netlink)?.0.into_iter().map(|(port, _)| port.name).collect();
        Ok(Departures::Taps { names, alias: alias_of(&self.network) })
    }

    fn port_reports(&mut self, _netlink: &mut Netlink) -> Result<Vec<PortReport>> {
        Ok(self
            .our_ports()?
            .into_iter()
            .map(|port| PortReport {
                problem: match (&port.error, port.ofport) {
                    (Some(error), _) => Some(error.clone()),
                    (None, Some(ofport)) if ofport < 1 => Some("it has no OpenFlow port".to_owned()),
                    _ => None,
                },
                iface_id: port.iface_id,
                ovn_installed: Some(port.ovn_installed),
                isolated: false,
                name: port.name,
            })
            .collect())
    }

    fn lost_taps(&mut self, netlink: &mut Netlink, links: &[Link]) -> Result<Vec<String>> {
        let present: Vec<String> = self.ports_by_presence(netlink)?.0.into_iter().map(|(port, _)| port.name).collect();
        let alias = alias_of(&self.network);
        Ok(links
            .iter()
            .filter(|l| l.alias.as_deref() == Some(alias.as_str()) && !present.contains(&l.name))
            .map(|l| l.name.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_cur_cfg_is_an_error_not_a_wait() {
        assert_eq!(current_cfg(&json!({"rows": [{"cur_cfg": 7}]})).ok(), Some(7));
        for bad in [json!({"rows": []}), json!({"rows": [{"cur_cfg": "7"}]}), json!({"rows": [{}]}), json!({})] {
            let err = current_cfg(&bad).expect_err("malformed");
            assert!(err.downcast_ref::<Refusal>().is_some_and(|r| matches!(r, Refusal::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn only_a_constraint_violation_is_tried_again() {
        let violation = Refusal::Operation { error: "constraint violation".to_owned(), details: None };
        let other = Refusal::Operation { error: "referential integrity violation".to_owned(), details: None };
        assert!(violation.is_constraint_violation() && !other.is_constraint_violation());
        let request = Refusal::Request { method: "transact".to_owned(), error: "\"constraint violation\"".to_owned() };
        assert!(!request.is_constraint_violation(), "decided by kind, not by text");
    }
}
