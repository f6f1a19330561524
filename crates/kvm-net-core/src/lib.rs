//! kvm-net's core: everything the tap helpers do, so that each binary is only
//! a call to [`cli::main`].
//!
//! The modules are layers. A module imports from its own folder or from a
//! lower layer, never upwards; lower layers use `config::model`, never the
//! `config` facade. Bottom to top:
//!
//! 0. [`trace`], [`ifname`], [`ports`], [`mac`]: words every layer speaks
//! 1. [`config::model`]: the config's data
//! 2. [`error`]
//! 3. [`kernel`]: netlink, taps, sysctls, what the kernel says
//! 4. [`security`]: privilege, access, `/run/kvm-net`, locks
//! 5. [`config`]: loading, validating, choosing a network
//! 6. [`firewall`], [`switch`], [`services`], [`shaping`]: what a network is made of
//! 7. [`ops`]: the operations that put it together
//! 8. [`report`]: status and check
//! 9. [`cli`]: QEMU's contract
//!
//! `tests/layers.rs` fails when an import breaks the rule;
//! docs/architecture.md says why each layer is where it is.

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
pub mod shaping;
pub mod switch;
pub mod trace;
