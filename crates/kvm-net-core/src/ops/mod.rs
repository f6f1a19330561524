//! The operations: a network's life (bring-up, teardown, gc), the tap
//! scripts QEMU runs, the bridge helper, the watcher, the lease hook
//! dnsmasq runs, and what a warm start may take for granted. Each puts the
//! layers below together; none holds policy of its own.

pub mod bridge_helper;
pub mod lease_hook;
pub mod network;
pub mod tap_scripts;
pub mod warm;
pub mod watch;
