//! Who may do what, and the safe handling of what a privileged helper
//! touches on a caller's behalf: privilege reduction, grants and tap
//! ownership, verified files under /run, and the per-bridge locks.

pub mod access;
pub mod lock;
pub mod privilege;
pub mod rundir;
