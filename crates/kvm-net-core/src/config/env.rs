//! What the environment QEMU passes on may say about the network, and the
//! rule that a process with more privilege than its caller ignores it.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::Error;

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "KVM_NET_CONFIG";
/// Environment variable naming the network.
pub const ENV_NETWORK: &str = "KVM_NET_NETWORK";
/// Environment variable overriding the chosen network's bridge.
pub const ENV_BRIDGE: &str = "KVM_NET_BRIDGE";
/// Environment variable overriding the chosen network's IPv4 address (CIDR).
pub const ENV_ADDRESS: &str = "KVM_NET_ADDRESS";

/// The only PATH a helper running with more privilege than its caller uses.
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

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
}

impl Environment {
    /// Reads the process environment, or nothing at all when the process runs
    /// with more privilege than its caller (setuid or file capabilities): then
    /// the caller must not steer it to another config file or bridge, nor to
    /// another `iptables` through PATH, so the environment is replaced by a
    /// fixed PATH for everything this process runs. A setuid-root helper also
    /// becomes root through and through, because iptables refuses to run with
    /// a real user ID that differs from the effective one.
    ///
    /// Call it before any thread starts: it changes the process environment.
    pub fn from_process() -> Result<Self, Error> {
        if !privileged_beyond_caller() {
            return Self::from_lookup(|key| std::env::var_os(key));
        }
        for (key, _) in std::env::vars_os() {
            std::env::remove_var(key);
        }
        std::env::set_var("PATH", SAFE_PATH);
        if nix::unistd::geteuid().is_root() {
            let root = nix::unistd::Uid::from_raw(0);
            let group = nix::unistd::getegid();
            nix::unistd::setresgid(group, group, group)
                .and_then(|()| nix::unistd::setresuid(root, root, root))
                .map_err(Error::DropCallerIds)?;
        }
        Ok(Self::default())
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
        })
    }
}

impl Environment {
    /// The config file to read: `KVM_NET_CONFIG`, else the system file.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from(super::SYSTEM_CONFIG))
    }
}

/// `AT_SECURE` from the auxiliary vector: set by the kernel for setuid/setgid
/// programs and for programs with file capabilities.
fn privileged_beyond_caller() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel placed in
    // this process's memory at exec; it has no preconditions and returns 0 for
    // an unknown type.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
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

    #[test]
    fn test_runner_is_not_privileged_beyond_its_caller() {
        assert!(!privileged_beyond_caller());
    }
}
