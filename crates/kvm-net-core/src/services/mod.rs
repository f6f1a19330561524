//! The daemons kvm-net runs for a network: one dnsmasq per network (DHCP
//! and DNS), and the guests' names it answers.

pub mod dnsmasq;
pub mod host_names;
pub mod names;
