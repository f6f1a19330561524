//! kvm-net's core: everything the tap helpers do, so that each binary is only
//! a call to [`cli::main`].

/// The allocator of every kvm-net program: musl's returns each emptied
/// 4 KiB group to the kernel at once (an mmap and a munmap, with its TLB
/// flush, around most netlink replies); dlmalloc keeps freed memory for the
/// next allocation, which is what a program that lives a millisecond wants.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

pub mod cli;
pub mod config;
pub mod error;
pub mod firewall;
pub mod ifname;
pub mod kernel;
pub mod mac;
pub mod ops;
pub mod ports;
pub mod report;
pub mod security;
pub mod services;
pub mod switch;
pub mod trace;
