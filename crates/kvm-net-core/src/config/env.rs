//! What the environment QEMU passes on may say about the network, and the
//! rule that a process with more privilege than its caller ignores it.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::config::model::Choice;
use crate::error::Error;
use crate::security::privilege::privileged_beyond_caller;

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "KVM_NET_CONFIG";
/// Environment variable naming the network.
pub const ENV_NETWORK: &str = "KVM_NET_NETWORK";
/// Environment variable overriding the chosen network's bridge.
pub const ENV_BRIDGE: &str = "KVM_NET_BRIDGE";
/// Environment variable overriding the chosen network's IPv4 address (CIDR).
pub const ENV_ADDRESS: &str = "KVM_NET_ADDRESS";
/// Environment variable overriding the firewall backend (`nftables`, `iptables`, `auto`).
pub const ENV_FIREWALL: &str = "KVM_NET_FIREWALL";

/// The settings read from the environment, already decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// `KVM_NET_CONFIG`.
    pub config: Option<PathBuf>,
    /// `KVM_NET_NETWORK`.
    pub network: Option<String>,
    /// `KVM_NET_BRIDGE`.
    pub bridge: Option<String>,
    /// `KVM_NET_ADDRESS`.
    pub address: Option<String>,
    /// `KVM_NET_FIREWALL`.
    pub firewall: Option<String>,
}

impl Environment {
    /// Reads the process environment, or nothing at all when the process runs
    /// with more privilege than its caller (setuid or file capabilities): the
    /// caller must not steer it to another config file or bridge
    /// ([`crate::security::privilege::Start::detect`] has replaced that environment).
    pub fn from_process() -> Result<Self, Error> {
        if privileged_beyond_caller() {
            return Ok(Self::default());
        }
        Self::from_lookup(|key| std::env::var_os(key))
    }

    /// As [`Environment::from_process`] without the privilege check, with the
    /// variables supplied by the caller.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, Error> {
        let text = |key: &'static str| -> Result<Option<String>, Error> {
            lookup(key)
                .map(|raw| {
                    raw.into_string().map_err(|raw| Error::BadSetting {
                        key,
                        value: raw.to_string_lossy().into_owned(),
                        reason: "it is not valid UTF-8".to_owned(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            config: lookup(ENV_CONFIG).map(PathBuf::from),
            network: text(ENV_NETWORK)?,
            bridge: text(ENV_BRIDGE)?,
            address: text(ENV_ADDRESS)?,
            firewall: text(ENV_FIREWALL)?,
        })
    }
}

impl Environment {
    /// `KVM_NET_FIREWALL`, decoded.
    pub fn firewall_choice(&self) -> Result<Option<Choice>, Error> {
        self.firewall
            .as_deref()
            .map(|value| {
                Choice::parse(value).ok_or_else(|| Error::BadSetting {
                    key: ENV_FIREWALL,
                    value: value.to_owned(),
                    reason: "it is not one of auto, nftables, iptables".to_owned(),
                })
            })
            .transpose()
    }

    /// The config file to read: `KVM_NET_CONFIG`, else the system file.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from(super::SYSTEM_CONFIG))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_variables() {
        let env = Environment::from_lookup(|key| match key {
            ENV_CONFIG => Some("/tmp/k.toml".into()),
            ENV_NETWORK => Some("lab".into()),
            ENV_BRIDGE => Some("br7".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(env.config, Some(PathBuf::from("/tmp/k.toml")));
        assert_eq!(env.network.as_deref(), Some("lab"));
        assert_eq!(env.bridge.as_deref(), Some("br7"));
        assert_eq!(env.address, None);
    }
}
