//! `kvm-natup IFNAME`: run by QEMU as a tap script; see `kvm-natup --help`.

use std::process::ExitCode;

use kvm_net_core::cli::{main as run, Helper};

fn main() -> ExitCode {
    run(Helper::NatUp)
}
