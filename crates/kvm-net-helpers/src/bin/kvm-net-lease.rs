//! `kvm-net-lease add|old|del MAC IP [NAME]`: run by the dnsmasq of a network
//! with `guest_spoofing = "deny"` for each lease; binds or unbinds it.

use std::process::ExitCode;

fn main() -> ExitCode {
    kvm_net_core::ops::lease_hook::main()
}
