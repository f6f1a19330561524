//! Step-by-step tracing on stderr, switched on with `KVM_NET_DEBUG=1`; stdout
//! stays silent because with `-serial stdio` it is the VM's console.

use std::fmt;
use std::sync::OnceLock;

/// Environment variable that turns tracing on.
pub const ENV_DEBUG: &str = "KVM_NET_DEBUG";

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os(ENV_DEBUG).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Prints one step to stderr when tracing is on.
pub fn trace(step: fmt::Arguments<'_>) {
    if enabled() {
        eprintln!("kvm-net[{}]: {step}", std::process::id());
    }
}
