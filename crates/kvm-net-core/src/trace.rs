//! Step-by-step tracing on stderr, switched on with `KVM_NET_DEBUG=1`, and
//! warnings; stdout stays silent because with `-serial stdio` it is the VM's
//! console.

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
        warn(format_args!("kvm-net[{}]: {step}", std::process::id()));
    }
}

/// Prints a warning line on stderr. A caller's closed or broken stderr is
/// no reason to stop half-way (`eprintln!` would panic, and so abort).
pub fn warn(line: fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
