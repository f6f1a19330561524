//! Test harness: network namespaces that clean themselves up, and the built
//! helper binaries run inside them exactly as QEMU runs them.

pub mod bridge;
pub mod firewalld;
pub mod frames;
pub mod host;
pub mod inspect;
pub mod lab;
pub mod netns;
pub mod ovn;
pub mod ovs;
pub mod qemu;
pub mod resolver;
pub mod run;
pub mod sandbox;

use std::path::PathBuf;

pub use netns::Netns;

/// Environment variable naming the directory that holds the helper binaries
/// under test (`make test` points it at the static release build).
pub const ENV_BIN_DIR: &str = "KVM_NET_BIN_DIR";

/// Path of a helper binary under test.
pub fn helper(name: &str) -> PathBuf {
    let dir = std::env::var_os(ENV_BIN_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make build` or `cargo build` first, or set {ENV_BIN_DIR}",
        path.display()
    );
    path
}
