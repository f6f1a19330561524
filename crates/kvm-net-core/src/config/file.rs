//! The config file format (TOML) and its validation, which names the file,
//! the network and the field of every error.

use std::collections::BTreeMap;
use std::path::Path;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Deserialize;

use super::{Config, Mode, Network, Source};
use crate::error::Error;
use crate::ifname::IfName;

/// The file as written: strings, checked field by field afterwards so that
/// each error can say which field is wrong.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    network: BTreeMap<String, RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    mode: String,
    bridge: String,
    ipv4: Option<String>,
    ipv6: Option<String>,
    mtu: Option<u32>,
    #[serde(default)]
    taps: Vec<String>,
}

/// Parses and validates a whole config file.
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    let raw: RawFile = toml::from_str(text).map_err(|err| {
        let line = err.span().map(|span| text[..span.start].lines().count().max(1));
        let network = line.and_then(|line| network_at_line(text, line));
        Error::Config {
            path: match line {
                Some(line) => format!("{} line {line}", path.display()),
                None => path.display().to_string(),
            },
            network,
            field: None,
            reason: err.message().trim().to_owned(),
        }
    })?;
    // Keep the file's order: the first matching tap pattern wins.
    let mut order: Vec<(usize, String)> = raw
        .network
        .keys()
        .map(|name| {
            (
                text.find(&format!("[network.{name}]")).unwrap_or(usize::MAX),
                name.clone(),
            )
        })
        .collect();
    order.sort();
    let mut raw = raw.network;
    let networks = order
        .into_iter()
        .filter_map(|(_, name)| raw.remove(&name).map(|network| (name, network)))
        .map(|(name, network)| network.validate(name, path))
        .collect::<Result<Vec<_>, _>>()?;
    let config = Config {
        source: Source::File(path.to_owned()),
        networks,
    };
    check_unique(&config)?;
    Ok(config)
}

/// The `[network.NAME]` table that a line of the file belongs to.
fn network_at_line(text: &str, line: usize) -> Option<String> {
    text.lines()
        .take(line)
        .filter_map(|l| l.trim().strip_prefix("[network.")?.strip_suffix(']'))
        .last()
        .map(str::to_owned)
}

fn field_error(path: &Path, network: &str, field: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.display().to_string(),
        network: Some(network.to_owned()),
        field: Some(field),
        reason: reason.into(),
    }
}

impl RawNetwork {
    fn validate(self, name: String, path: &Path) -> Result<Network, Error> {
        let bad = |field, reason: String| field_error(path, &name, field, reason);
        if name.is_empty()
            || name.len() > 15
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "name",
                format!("{name:?} must be 1-15 letters, digits, '-' or '_'"),
            ));
        }
        let mode = Mode::parse(&self.mode).ok_or_else(|| {
            bad(
                "mode",
                format!("{:?} is not one of nat, routed, isolated, bridged", self.mode),
            )
        })?;
        let bridge = IfName::parse(&self.bridge).map_err(|e| bad("bridge", e.to_string()))?;
        let ipv4 = self
            .ipv4
            .as_deref()
            .map(parse_ipv4)
            .transpose()
            .map_err(|e| bad("ipv4", e))?;
        let ipv6 = self
            .ipv6
            .as_deref()
            .map(parse_ipv6)
            .transpose()
            .map_err(|e| bad("ipv6", e))?;
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(bad("mtu", format!("{mtu} is outside 68-65535")));
            }
        }
        let taps = self
            .taps
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| bad("taps", format!("{p:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        match mode {
            Mode::Nat if ipv4.is_none() => return Err(bad("ipv4", "a nat network needs an IPv4 address".to_owned())),
            Mode::Routed if ipv4.is_none() && ipv6.is_none() => {
                return Err(bad("ipv4", "a routed network needs an IPv4 or IPv6 address".to_owned()))
            }
            Mode::Bridged => {
                for (field, set) in [
                    ("ipv4", ipv4.is_some()),
                    ("ipv6", ipv6.is_some()),
                    ("mtu", self.mtu.is_some()),
                ] {
                    if set {
                        return Err(bad(
                            field,
                            "kvm-net never changes a bridged network's bridge; set it on the bridge itself".to_owned(),
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(Network {
            name,
            mode,
            bridge,
            ipv4,
            ipv6,
            mtu: self.mtu,
            taps,
        })
    }
}

/// Parses a bridge's IPv4 address: a host address with a prefix that leaves room for guests.
pub(super) fn parse_ipv4(value: &str) -> Result<Ipv4Network, String> {
    if !value.contains('/') {
        return Err(format!("{value:?} has no prefix length (write it as 192.168.100.1/24)"));
    }
    let net: Ipv4Network = value
        .parse()
        .map_err(|e: ipnetwork::IpNetworkError| format!("{value:?}: {e}"))?;
    if net.prefix() > 30 {
        return Err(format!(
            "{value:?}: a prefix longer than /30 leaves no address for a guest"
        ));
    }
    if net.ip() == net.network() || net.ip() == net.broadcast() {
        return Err(format!(
            "{value:?}: {} is the subnet's network or broadcast address, not a host address",
            net.ip()
        ));
    }
    Ok(net)
}

/// Parses a bridge's IPv6 address: a host address with a prefix.
fn parse_ipv6(value: &str) -> Result<Ipv6Network, String> {
    if !value.contains('/') {
        return Err(format!("{value:?} has no prefix length (write it as fd00:6b76::1/64)"));
    }
    let net: Ipv6Network = value
        .parse()
        .map_err(|e: ipnetwork::IpNetworkError| format!("{value:?}: {e}"))?;
    if net.prefix() > 126 {
        return Err(format!(
            "{value:?}: a prefix longer than /126 leaves no address for a guest"
        ));
    }
    if net.ip() == net.network() {
        return Err(format!(
            "{value:?}: {} is the subnet's own address, not a host address",
            net.ip()
        ));
    }
    Ok(net)
}

/// Bridges and subnets may not be shared between networks.
pub(super) fn check_unique(config: &Config) -> Result<(), Error> {
    let path = match &config.source {
        Source::File(path) => path.display().to_string(),
        Source::Builtin => config.source.to_string(),
    };
    let bad = |network: &Network, field, reason: String| Error::Config {
        path: path.clone(),
        network: Some(network.name.clone()),
        field: Some(field),
        reason,
    };
    for (i, a) in config.networks.iter().enumerate() {
        for b in &config.networks[..i] {
            if a.bridge == b.bridge {
                return Err(bad(
                    a,
                    "bridge",
                    format!("{} is already the bridge of network {}", a.bridge, b.name),
                ));
            }
            if let (Some(x), Some(y)) = (a.subnet4(), b.subnet4()) {
                if x.contains(y.network()) || y.contains(x.network()) {
                    return Err(bad(a, "ipv4", format!("{x} overlaps {y} of network {}", b.name)));
                }
            }
            if let (Some(x), Some(y)) = (a.subnet6(), b.subnet6()) {
                if x.contains(y.network()) || y.contains(x.network()) {
                    return Err(bad(a, "ipv6", format!("{x} overlaps {y} of network {}", b.name)));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/kvm-net/kvm-net.toml";

    fn parse_text(text: &str) -> Result<Config, Error> {
        parse(text, Path::new(PATH))
    }

    #[test]
    fn reads_every_mode_in_file_order() {
        let config = parse_text(
            r#"
            [network.lab]
            mode = "isolated"
            bridge = "labbr0"
            taps = ["lab-*"]

            [network.default]
            mode = "nat"
            bridge = "br0"
            ipv4 = "192.168.100.1/24"
            ipv6 = "fd00:6b76::1/64"
            mtu = 9000

            [network.dmz]
            mode = "routed"
            bridge = "dmzbr0"
            ipv4 = "10.77.0.1/24"

            [network.lan]
            mode = "bridged"
            bridge = "br-lan"
            taps = ["srv-*", "web?"]
            "#,
        )
        .expect("valid file");
        let names: Vec<&str> = config.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lab", "default", "dmz", "lan"]);
        let default = config.network("default").expect("default");
        assert_eq!(default.mode, Mode::Nat);
        assert_eq!(
            default.subnet4().map(|s| s.to_string()),
            Some("192.168.100.0/24".to_owned())
        );
        assert_eq!(
            default.subnet6().map(|s| s.to_string()),
            Some("fd00:6b76::/64".to_owned())
        );
        assert_eq!(default.mtu, Some(9000));
        assert_eq!(config.network("lab").map(|n| n.ipv4), Some(None));
        assert!(config.network("lan").is_some_and(|n| n.taps[1].matches("web1")));
    }

    #[track_caller]
    fn assert_error(text: &str, network: Option<&str>, field: Option<&str>, reason: &str) {
        match parse_text(text) {
            Err(Error::Config {
                path,
                network: n,
                field: f,
                reason: r,
            }) => {
                assert!(path.starts_with(PATH), "{path}");
                assert_eq!(n.as_deref(), network, "{r}");
                assert_eq!(f, field, "{r}");
                assert!(r.contains(reason), "{r:?} lacks {reason:?}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn each_error_names_file_network_and_field() {
        let net = |body: &str| format!("[network.n1]\n{body}\n");
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\"\nbridgee = \"x\""),
            Some("n1"),
            None,
            "unknown field `bridgee`",
        );
        assert_error("[networks.x]\nmode = \"nat\"", None, None, "unknown field `networks`");
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.300/24\""),
            Some("n1"),
            Some("ipv4"),
            "10.0.0.300",
        );
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1\""),
            Some("n1"),
            Some("ipv4"),
            "no prefix",
        );
        assert_error(
            &net("mode = \"nat\"\nbridge = \"br0\""),
            Some("n1"),
            Some("ipv4"),
            "needs an IPv4",
        );
        assert_error(
            &net("mode = \"nat\"\nbridge = \"averyveryverylongbr\"\nipv4 = \"10.0.0.1/24\""),
            Some("n1"),
            Some("bridge"),
            "15",
        );
        assert_error(
            &net("mode = \"natt\"\nbridge = \"br0\""),
            Some("n1"),
            Some("mode"),
            "natt",
        );
        assert_error(
            &net("mode = \"bridged\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/24\""),
            Some("n1"),
            Some("ipv4"),
            "never changes",
        );
        assert_error(
            &net("mode = \"isolated\"\nbridge = \"br0\"\nmtu = 20"),
            Some("n1"),
            Some("mtu"),
            "68-65535",
        );
        assert_error(
            &net("mode = \"isolated\"\nbridge = \"br0\"\nipv6 = \"fd00::/64\""),
            Some("n1"),
            Some("ipv6"),
            "subnet's own",
        );
        assert_error(
            "[network.averyveryverylongname]\nmode = \"isolated\"\nbridge = \"br0\"",
            Some("averyveryverylongname"),
            Some("name"),
            "1-15",
        );
        assert_error(
            "[network.a]\nmode = \"isolated\"\nbridge = \"br0\"\n[network.b]\nmode = \"isolated\"\nbridge = \"br0\"",
            Some("b"),
            Some("bridge"),
            "already the bridge of network a",
        );
        assert_error(
            "[network.a]\nmode = \"nat\"\nbridge = \"br0\"\nipv4 = \"10.0.0.1/16\"\n[network.b]\nmode = \"nat\"\nbridge = \"br1\"\nipv4 = \"10.0.5.1/24\"",
            Some("b"),
            Some("ipv4"),
            "overlaps 10.0.0.0/16 of network a",
        );
    }
}
