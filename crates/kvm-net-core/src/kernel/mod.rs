//! The kernel, spoken to directly: netlink (links, addresses, routes,
//! neighbours, notifications), tun/tap devices, sysctls, listening sockets
//! and the network namespace's identity. No policy: what to ask is decided
//! above.

pub mod listeners;
pub mod netlink;
pub mod netns;
pub mod sysctl;
pub mod tap;
pub mod tc;
pub mod uapi;
pub mod wire;
