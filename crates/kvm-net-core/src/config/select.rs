//! Which network a tap goes on. QEMU passes only the tap's name, so the
//! choice comes from what a QEMU command line can say, most specific first:
//!
//! 1. the helper's invoked name, `kvm-natup@NETWORK` (a symlink; per netdev),
//! 2. the first network whose `taps` pattern matches the tap's name (per netdev),
//! 3. `KVM_NET_NETWORK` in QEMU's environment (per QEMU process),
//! 4. the network called `default`.
//!
//! `KVM_NET_BRIDGE` and `KVM_NET_ADDRESS` then override the chosen network's
//! bridge and IPv4 address, and the result is validated again as a whole.

use super::file::{check_unique, parse_ipv4};
use super::model::{Config, Network, DEFAULT_NETWORK};
use super::{Environment, ENV_ADDRESS, ENV_BRIDGE, ENV_NETWORK};
use crate::error::Error;
use crate::ifname::IfName;

/// A network picked for a tap, and what picked it (for messages).
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    /// The network, with the environment's overrides applied.
    pub network: Network,
    /// How it was chosen: `the helper's name ends in @lab`, ...
    pub how: String,
}

/// Picks the network for `tap` and applies the environment's overrides.
pub fn choose(config: &Config, invoked_as: Option<&str>, tap: &IfName, env: &Environment) -> Result<Chosen, Error> {
    let named = |name: &str, how: String| match config.network(name) {
        Some(network) => Ok((network.clone(), how)),
        None => Err(Error::UnknownNetwork { name: name.to_owned(), how, origin: config.source.to_string() }),
    };
    let (network, how) = if let Some(name) = invoked_as {
        named(name, format!("the helper's name ends in @{name}"))?
    } else if let Some((network, pattern)) =
        config.networks.iter().find_map(|n| n.taps.iter().find(|p| p.matches(tap.as_str())).map(|p| (n, p)))
    {
        (network.clone(), format!("tap {tap} matches {}", pattern.as_str()))
    } else if let Some(name) = &env.network {
        named(name, format!("{ENV_NETWORK}={name}"))?
    } else {
        named(DEFAULT_NETWORK, format!("no tap pattern matches {tap} and {ENV_NETWORK} is unset"))?
    };
    with_environment(config, network, how, env)
}

/// Picks the network the bridge helper's `--br=NAME` names: the network
/// called `NAME`, else the one whose bridge is `NAME` (QEMU passes `br0`
/// when `-netdev bridge` names none); then applies the environment's overrides.
pub fn choose_by_bridge_argument(config: &Config, name: &str, env: &Environment) -> Result<Chosen, Error> {
    let found = config.network(name).map(|network| (network, format!("--br={name} names it"))).or_else(|| {
        let network = config.networks.iter().find(|n| n.bridge.as_str() == name)?;
        Some((network, format!("--br={name} is its bridge")))
    });
    let Some((network, how)) = found else {
        return Err(Error::UnknownNetwork {
            name: name.to_owned(),
            how: format!("--br={name} names no network and no network's bridge"),
            origin: config.source.to_string(),
        });
    };
    with_environment(config, network.clone(), how, env)
}

/// Applies the environment's overrides to the chosen network, validated
/// with the whole config.
fn with_environment(config: &Config, mut network: Network, how: String, env: &Environment) -> Result<Chosen, Error> {
    if let Some(choice) = env.firewall_choice()? {
        network.firewall = choice;
    }
    if env.bridge.is_none() && env.address.is_none() {
        return Ok(Chosen { network, how });
    }
    if let Some(value) = &env.bridge {
        network.bridge = IfName::parse_bridge(value).map_err(|e| Error::BadSetting {
            key: ENV_BRIDGE,
            value: value.clone(),
            reason: e.to_string(),
        })?;
    }
    if let Some(value) = &env.address {
        network.ipv4 = Some(parse_ipv4(value).map_err(|reason| Error::BadSetting {
            key: ENV_ADDRESS,
            value: value.clone(),
            reason,
        })?);
    }
    let mut overridden = config.clone();
    if let Some(slot) = overridden.networks.iter_mut().find(|n| n.name == network.name) {
        *slot = network.clone();
    }
    check_unique(&overridden)?;
    Ok(Chosen { network, how })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::file;
    use crate::config::model::Mode;

    fn config() -> Config {
        file::parse(
            r#"
            [network.default]
            mode = "nat"
            bridge = "br0"
            ipv4 = "192.168.100.1/24"
            [network.lab]
            mode = "isolated"
            bridge = "labbr0"
            taps = ["lab-*"]
            [network.lan]
            mode = "bridged"
            bridge = "br-lan"
            taps = ["srv-*"]
            "#,
            Path::new("/etc/kvm-net/kvm-net.toml"),
        )
        .expect("valid")
    }

    fn pick(invoked: Option<&str>, tap: &str, env: Environment) -> Result<String, Error> {
        choose(&config(), invoked, &IfName::parse(tap).expect("valid"), &env).map(|c| c.network.name)
    }

    fn env_network(name: &str) -> Environment {
        Environment { network: Some(name.to_owned()), ..Environment::default() }
    }

    #[test]
    fn most_specific_choice_wins() {
        assert_eq!(pick(None, "tap0", Environment::default()).ok().as_deref(), Some("default"));
        assert_eq!(pick(None, "lab-web1", Environment::default()).ok().as_deref(), Some("lab"));
        assert_eq!(pick(None, "tap0", env_network("lan")).ok().as_deref(), Some("lan"));
        assert_eq!(
            pick(None, "lab-web1", env_network("lan")).ok().as_deref(),
            Some("lab"),
            "pattern beats environment"
        );
        assert_eq!(
            pick(Some("lan"), "lab-web1", env_network("default")).ok().as_deref(),
            Some("lan"),
            "name beats all"
        );
    }

    #[test]
    fn unknown_names_are_errors_that_say_where_the_name_came_from() {
        let err = pick(Some("nope"), "tap0", Environment::default()).expect_err("unknown");
        assert!(err.to_string().contains("no network named nope"), "{err}");
        assert!(err.to_string().contains("@nope"), "{err}");
        let err = pick(None, "tap0", env_network("nope")).expect_err("unknown");
        assert!(err.to_string().contains("KVM_NET_NETWORK=nope"), "{err}");
    }

    #[test]
    fn environment_overrides_are_validated_with_the_whole_config() {
        let env = Environment { bridge: Some("labbr0".to_owned()), ..Environment::default() };
        assert!(pick(None, "tap0", env).is_err(), "two networks on labbr0");
        let env = Environment { address: Some("10.9.0.1/24".to_owned()), ..Environment::default() };
        let network = choose(&config(), None, &IfName::parse("tap0").expect("valid"), &env).expect("valid").network;
        assert_eq!((network.mode, network.ipv4.map(|a| a.to_string())), (Mode::Nat, Some("10.9.0.1/24".to_owned())));
    }

    #[test]
    fn the_bridge_helper_names_a_network_or_its_bridge() {
        let by =
            |name: &str| choose_by_bridge_argument(&config(), name, &Environment::default()).map(|c| c.network.name);
        assert_eq!(by("lab").ok().as_deref(), Some("lab"));
        assert_eq!(by("labbr0").ok().as_deref(), Some("lab"));
        assert_eq!(by("br0").ok().as_deref(), Some("default"));
        let err = by("br9").expect_err("unknown");
        assert!(err.to_string().contains("--br=br9"), "{err}");
    }
}
