//! Named networks: the system config file, validated whole on every use, or
//! the classic scripts' single network when there is no file.

mod env;
mod file;
mod key_path;
pub mod model;
mod select;

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use self::model::{Choice, Config, Network, Source};
use crate::error::Error;

pub use self::env::{Environment, ENV_ADDRESS, ENV_BRIDGE, ENV_CONFIG, ENV_FIREWALL, ENV_NETWORK};
pub use self::select::{choose, choose_by_bridge_argument, Chosen};

/// The system config file; only this one is read by a privileged helper.
pub const SYSTEM_CONFIG: &str = "/etc/kvm-net/kvm-net.toml";

/// The largest config file kvm-net reads; a few hundred networks fit.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// Reads and validates `path`; a missing file means the classic network.
    /// Only a regular file of at most [`MAX_CONFIG_BYTES`] is read (a FIFO
    /// or a device is refused without blocking). With `trusted_only` (a
    /// helper privileged beyond its caller), the file and its directory must
    /// also be root's and writable by no one else: whoever can write them
    /// grants networks.
    pub fn load(path: &Path, trusted_only: bool) -> Result<Self, Error> {
        let bad =
            |reason: String| Error::Config { path: path.display().to_string(), network: None, field: None, reason };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(file) => file,
            // The classic scripts exactly: no DHCP server appears on br0 just
            // because kvm-net replaced them.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config {
                    source: Source::Builtin,
                    firewall: Choice::Auto,
                    networks: vec![Network::classic()],
                })
            }
            Err(err) => return Err(bad(format!("cannot read it: {err}"))),
        };
        let meta = file.metadata().map_err(|err| bad(format!("cannot read it: {err}")))?;
        if !meta.file_type().is_file() {
            return Err(bad("it is not a regular file".to_owned()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(bad(format!("it is {} bytes, over the limit of {MAX_CONFIG_BYTES}", meta.len())));
        }
        if trusted_only {
            check_trusted(path, &meta).map_err(bad)?;
        }
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|err| bad(format!("cannot read it: {err}")))?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(bad(format!("it grew over the limit of {MAX_CONFIG_BYTES} bytes while being read")));
        }
        file::parse(&text, path)
    }

    /// The config with the environment's firewall choice (`KVM_NET_FIREWALL`), if any.
    pub fn with_environment(mut self, env: &Environment) -> Result<Self, Error> {
        if let Some(choice) = env.firewall_choice()? {
            self.firewall = choice;
            for network in &mut self.networks {
                network.firewall = choice;
            }
        }
        Ok(self)
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// The config of a privileged helper must be root's alone: the file, and
/// the directory it is in (whoever can write the directory can replace it).
fn check_trusted(path: &Path, meta: &Metadata) -> Result<(), String> {
    let unsafe_owner = |what: &str, meta: &Metadata| -> Option<String> {
        if meta.uid() != 0 {
            Some(format!("{what} is owned by uid {}, not root", meta.uid()))
        } else if meta.mode() & 0o022 != 0 && !(meta.is_dir() && meta.mode() & libc::S_ISVTX != 0) {
            Some(format!("{what} has mode {:04o}: others may write to it", meta.mode() & 0o7777))
        } else {
            None
        }
    };
    if let Some(reason) = unsafe_owner("the file", meta) {
        return Err(format!("{reason}; a setuid or capability helper reads only a config that root alone can change"));
    }
    let real = std::fs::canonicalize(path).map_err(|err| format!("cannot resolve it: {err}"))?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    let dir_meta = std::fs::metadata(dir).map_err(|err| format!("cannot read {}: {err}", dir.display()))?;
    match unsafe_owner(&format!("its directory {}", dir.display()), &dir_meta) {
        Some(reason) => {
            Err(format!("{reason}; a setuid or capability helper reads only a config that root alone can change"))
        }
        None => Ok(()),
    }
}
