//! kvm-net's core: everything the tap helpers do, so that each binary is only
//! a call to [`cli::main`].

/// The allocator of every kvm-net program: musl's returns each emptied
/// 4 KiB group to the kernel at once (an mmap and a munmap, with its TLB
/// flush, around most netlink replies); dlmalloc keeps freed memory for the
/// next allocation, which is what a program that lives a millisecond wants.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

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
pub mod mac;
pub mod names;
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
pub mod warm;
pub mod watch;
pub mod wire;
