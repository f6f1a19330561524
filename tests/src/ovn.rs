//! Two hosts and one OVN logical switch, all in the test's namespaces: a
//! central namespace (OVN's northbound and southbound databases and
//! `ovn-northd`, and the underlay: a Linux bridge the hosts' uplinks are
//! ports of), and two host namespaces, each with its own Open vSwitch
//! (`br-phy` holding the uplink, whose internal port carries the tunnel
//! address: userspace Geneve, no kernel module) and `ovn-controller`, which
//! makes `br-int`. Checksum offload is off on every veth whose frames enter
//! OVS (the userspace datapath forwards partial checksums as they are).

use std::time::{Duration, Instant};

use crate::ovs::Ovs;
use crate::Netns;

/// The underlay's subnet: central .1, host A .2, host B .3.
const UNDERLAY: &str = "172.31.0";

/// One chassis: a namespace with its OVS and ovn-controller.
pub struct OvnHost {
    /// Its Open vSwitch (and ovn-controller, in the same mount namespace).
    pub ovs: Ovs,
    /// The host's network namespace.
    pub ns: Netns,
    /// Its chassis name (`system-id`).
    pub chassis: String,
}

/// The central databases, the underlay, and two chassis.
pub struct OvnLab {
    /// Host A and host B.
    pub hosts: [OvnHost; 2],
    central_ovn: Ovs,
    central: Netns,
}

/// Turns TX checksum offload off on `dev` in `ns` (see the module's note).
pub fn checksum_offload_off(ns: &Netns, dev: &str) {
    ns.ok(&["ethtool", "-K", dev, "tx", "off"]);
}

impl OvnLab {
    /// Starts it all and waits until both chassis are registered and have
    /// their tunnels (about a second and a half here).
    pub fn start() -> Self {
        let central = Netns::new();
        central.sh("ip link add underlay type bridge; ip link set underlay up");
        central.ok(&["ip", "addr", "add", &format!("{UNDERLAY}.1/24"), "dev", "underlay"]);
        let script = format!(
            "ovsdb-tool create /var/lib/ovn/ovnnb_db.db /usr/share/ovn/ovn-nb.ovsschema
            ovsdb-tool create /var/lib/ovn/ovnsb_db.db /usr/share/ovn/ovn-sb.ovsschema
            ovsdb-server --remote=punix:/run/ovn/ovnnb_db.sock --pidfile=/run/ovn/ovnnb_db.pid --detach -vconsole:off \
                --log-file=/var/log/ovn/ovsdb-server-nb.log /var/lib/ovn/ovnnb_db.db
            ovsdb-server --remote=punix:/run/ovn/ovnsb_db.sock --remote=ptcp:6642:{UNDERLAY}.1 --pidfile=/run/ovn/ovnsb_db.pid \
                --detach -vconsole:off --log-file=/var/log/ovn/ovsdb-server-sb.log /var/lib/ovn/ovnsb_db.db
            ovn-nbctl --no-wait init
            ovn-northd --pidfile --detach -vconsole:off --log-file \
                --ovnnb-db=unix:/run/ovn/ovnnb_db.sock --ovnsb-db=unix:/run/ovn/ovnsb_db.sock"
        );
        let central_ovn = Ovs::hold(central.cmd("unshare"), &script);
        let hosts = [Self::chassis(&central, "a", 2), Self::chassis(&central, "b", 3)];
        let lab = Self { hosts, central_ovn, central };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let chassis = lab.sbctl(&["--columns=name", "--format=csv", "--no-headings", "list", "Chassis"]);
            let tunnels = lab.hosts.iter().all(|host| {
                host.ovs.vsctl(&host.ns, &["list-ports", "br-int"]).lines().any(|port| port.starts_with("ovn-"))
            });
            if chassis.lines().count() == 2 && tunnels {
                return lab;
            }
            assert!(Instant::now() < deadline, "the chassis did not register: {chassis}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn chassis(central: &Netns, name: &str, host: u8) -> OvnHost {
        let ns = Netns::new();
        let uplink = format!("ul-{name}");
        ns.ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", &uplink]);
        ns.move_link(&uplink, central);
        central.sh(&format!("ip link set {uplink} master underlay; ip link set {uplink} up"));
        checksum_offload_off(central, &uplink);
        checksum_offload_off(&ns, "eth0");
        ns.sh("ip link set lo up; ip link set eth0 up");
        let ovs = Ovs::start(&ns, &["br-phy"]);
        let chassis = format!("chassis-{name}");
        let address = format!("{UNDERLAY}.{host}");
        ovs.vsctl(&ns, &["add-port", "br-phy", "eth0"]);
        ns.sh(&format!("ip addr add {address}/24 dev br-phy; ip link set br-phy up"));
        ovs.vsctl(
            &ns,
            &[
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:system-id={chassis}"),
                &format!("external_ids:ovn-remote=tcp:{UNDERLAY}.1:6642"),
                "external_ids:ovn-encap-type=geneve",
                &format!("external_ids:ovn-encap-ip={address}"),
                "external_ids:ovn-bridge-datapath-type=netdev",
            ],
        );
        let out = ovs.run(
            &ns,
            "ovn-controller",
            &["--pidfile", "--detach", "-vconsole:off", "--log-file", "unix:/run/openvswitch/db.sock"],
            &[],
        );
        assert!(out.status.success(), "ovn-controller: {}", String::from_utf8_lossy(&out.stderr));
        OvnHost { ovs, ns, chassis }
    }

    /// `ovn-nbctl ARGS` on the central northbound database; its stdout.
    pub fn nbctl(&self, args: &[&str]) -> String {
        self.central_ctl("ovn-nbctl", args)
    }

    /// `ovn-sbctl ARGS` on the central southbound database; its stdout.
    pub fn sbctl(&self, args: &[&str]) -> String {
        self.central_ctl("ovn-sbctl", args)
    }

    fn central_ctl(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["--timeout=10"];
        all.extend_from_slice(args);
        let out = self.central_ovn.run(&self.central, program, &all, &[]);
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A logical switch port on switch `switch` for a guest with `mac` and `ip`.
    pub fn logical_port(&self, switch: &str, port: &str, mac: &str, ip: &str) {
        self.nbctl(&["--may-exist", "ls-add", switch]);
        self.nbctl(&["lsp-add", switch, port]);
        self.nbctl(&["lsp-set-addresses", port, &format!("{mac} {ip}")]);
    }
}

/// A namespace guest behind a veth whose host end `port` is in `host`'s
/// namespace (what kvm-ifup attaches), with `address` (CIDR) and `mac`.
pub fn veth_guest(host: &OvnHost, port: &str, mac: &str, address: &str) -> Netns {
    let guest = Netns::new();
    let peer = format!("g-{port}");
    host.ns.ok(&["ip", "link", "add", port, "type", "veth", "peer", "name", &peer]);
    host.ns.move_link(&peer, &guest);
    guest.ok(&["ip", "link", "set", &peer, "name", "eth0", "address", mac]);
    checksum_offload_off(&guest, "eth0");
    checksum_offload_off(&host.ns, port);
    guest.sh(&format!("ip link set lo up; ip addr add {address} dev eth0; ip link set eth0 up"));
    guest
}
