//! Which bridge and subnet a helper works on: the classic scripts' values,
//! overridable from the environment QEMU passes on to its scripts.

use std::ffi::OsString;

use ipnetwork::Ipv4Network;

use crate::error::Error;
use crate::ifname::IfName;

/// The bridge name of `/etc/qemu-ifup` and `qemu-natup`.
pub const DEFAULT_BRIDGE: &str = "br0";
/// The bridge address of `qemu-natup`, host part included.
pub const DEFAULT_ADDRESS: &str = "192.168.100.1/24";

/// Environment variable naming the bridge.
pub const ENV_BRIDGE: &str = "KVM_NET_BRIDGE";
/// Environment variable holding the bridge's address as CIDR (`10.0.0.1/24`).
pub const ENV_ADDRESS: &str = "KVM_NET_ADDRESS";

/// One network as the helpers see it; named networks and modes will extend it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The bridge the taps are attached to.
    pub bridge: IfName,
    /// The host's address on the bridge, with the subnet's prefix length.
    pub address: Ipv4Network,
}

impl NetworkConfig {
    /// Reads the process environment, falling back to the classic defaults.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|key| std::env::var_os(key))
    }

    /// As [`NetworkConfig::from_env`], with the environment supplied by the caller so
    /// that parsing can be tested without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, Error> {
        let bridge_value = match lookup(ENV_BRIDGE) {
            None => DEFAULT_BRIDGE.to_owned(),
            Some(raw) => utf8(ENV_BRIDGE, raw)?,
        };
        let bridge = IfName::parse(&bridge_value).map_err(|source| Error::BadSetting {
            key: ENV_BRIDGE,
            value: bridge_value.clone(),
            reason: source.to_string(),
        })?;
        let address = match lookup(ENV_ADDRESS) {
            None => parse_bridge_address(DEFAULT_ADDRESS)?,
            Some(raw) => parse_bridge_address(&utf8(ENV_ADDRESS, raw)?)?,
        };
        Ok(Self { bridge, address })
    }

    /// The subnet the guests live in: what the firewall rules must match.
    pub fn subnet(&self) -> Ipv4Network {
        // Cannot fail: the prefix was validated when `address` was built.
        Ipv4Network::new(self.address.network(), self.address.prefix()).unwrap_or(self.address)
    }
}

fn utf8(key: &'static str, raw: OsString) -> Result<String, Error> {
    raw.into_string().map_err(|raw| Error::BadSetting {
        key,
        value: raw.to_string_lossy().into_owned(),
        reason: "it is not valid UTF-8".to_owned(),
    })
}

fn bad_address(value: String, reason: String) -> Error {
    Error::BadSetting {
        key: ENV_ADDRESS,
        value,
        reason,
    }
}

/// Parses the bridge's address: a host address with a prefix that leaves room for guests.
fn parse_bridge_address(value: &str) -> Result<Ipv4Network, Error> {
    if !value.contains('/') {
        return Err(bad_address(
            value.to_owned(),
            "it has no prefix length (write it as 192.168.100.1/24)".to_owned(),
        ));
    }
    let net: Ipv4Network = value
        .parse()
        .map_err(|e: ipnetwork::IpNetworkError| bad_address(value.to_owned(), e.to_string()))?;
    if net.prefix() > 30 {
        return Err(bad_address(
            value.to_owned(),
            "a prefix longer than /30 leaves no address for a guest".to_owned(),
        ));
    }
    if net.ip() == net.network() || net.ip() == net.broadcast() {
        return Err(bad_address(
            value.to_owned(),
            format!(
                "{} is the subnet's network or broadcast address, not a host address",
                net.ip()
            ),
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<NetworkConfig, Error> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        NetworkConfig::from_lookup(move |key| vars.iter().find(|(k, _)| k == key).map(|(_, v)| OsString::from(v)))
    }

    #[test]
    fn defaults_are_the_classic_scripts_values() {
        let config = with(&[]).expect("defaults are valid");
        assert_eq!(config.bridge.as_str(), "br0");
        assert_eq!(config.address.to_string(), "192.168.100.1/24");
        assert_eq!(config.subnet().to_string(), "192.168.100.0/24");
    }

    #[test]
    fn environment_overrides_bridge_and_address() {
        let config = with(&[(ENV_BRIDGE, "natbr7"), (ENV_ADDRESS, "10.7.0.254/16")]).expect("valid");
        assert_eq!(config.bridge.as_str(), "natbr7");
        assert_eq!(config.address.to_string(), "10.7.0.254/16");
        assert_eq!(config.subnet().to_string(), "10.7.0.0/16");
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (key, value) in [
            (ENV_BRIDGE, ""),
            (ENV_BRIDGE, "a-bridge-name-too-long"),
            (ENV_BRIDGE, "br 0"),
            (ENV_ADDRESS, "192.168.100.1"),
            (ENV_ADDRESS, "192.168.100.300/24"),
            (ENV_ADDRESS, "192.168.100.0/24"),
            (ENV_ADDRESS, "192.168.100.255/24"),
            (ENV_ADDRESS, "192.168.100.1/31"),
            (ENV_ADDRESS, "fd00::1/64"),
        ] {
            let err = with(&[(key, value)]).expect_err(value);
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
