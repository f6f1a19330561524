//! What kvm-net tells its user: `kvm-net status` and `kvm-net check`,
//! read from the kernel, the firewall and the services, changing nothing.

pub mod check;
pub mod status;
