//! `kvm-net-bridge-helper [--use-vnet] --fd=N --br=NETWORK`: run by an
//! unprivileged QEMU for `-netdev bridge,helper=`; see `kvm-net-bridge-helper --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    kvm_net_core::cli::bridge_helper_main()
}
