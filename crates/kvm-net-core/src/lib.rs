//! kvm-net's core: everything the tap helpers do, so that each binary is only
//! a call to [`cli::main`].

pub mod access;
pub mod bridge_helper;
pub mod check;
pub mod cli;
pub mod config;
pub mod dnsmasq;
pub mod error;
pub mod firewall;
pub mod helpers;
pub mod ifname;
pub mod lease;
pub mod listeners;
pub mod lock;
pub mod netlink;
pub mod network;
pub mod ovsdb;
pub mod ports;
pub mod privilege;
pub mod rundir;
pub mod runtime;
pub mod status;
pub mod switch;
pub mod sysctl;
pub mod tap;
pub mod trace;
pub mod watch;
pub mod wire;
