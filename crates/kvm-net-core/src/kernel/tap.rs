//! Tap devices made from `/dev/net/tun`, for the bridge helper: QEMU run by an
//! ordinary user cannot make one itself, so the helper makes it and hands
//! over the descriptor. The tap is not persistent: it lives exactly as long
//! as some process holds that descriptor, so it goes when QEMU does, however
//! QEMU ends.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::unistd::Uid;

use crate::ifname::IfName;

/// The clone device every tun/tap is made through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// A tap device held open by this process.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: IfName,
    vnet_hdr: bool,
}

/// `struct ifreq` with its name set, everything else zero.
fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers
    // and plain structs), for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // The last byte stays 0: the kernel reads a NUL-terminated name.
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *slot = byte as libc::c_char;
    }
    request
}

impl Tap {
    /// Makes a tap named after `pattern` (`kvmtap%d`: the kernel picks the
    /// number), without packet information (`IFF_NO_PI`, as QEMU expects),
    /// with virtio-net headers if `vnet_hdr` is asked and the kernel offers
    /// them. `owner` may then use it as theirs (no group is set: a group
    /// would let every member open it).
    pub fn create(pattern: &str, vnet_hdr: bool, owner: Option<Uid>) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(TUN_DEVICE)
            .with_context(|| format!("opening {TUN_DEVICE}"))?;
        let fd = OwnedFd::from(file);
        let vnet_hdr = vnet_hdr && offers_vnet_hdr(&fd)?;
        let mut request = ifreq_named(pattern);
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        request.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `request` is, alive and exclusively borrowed for the call, on a
        // descriptor of /dev/net/tun this function owns.
        Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut request) })
            .context("creating a tap device (TUNSETIFF)")?;
        // SAFETY: the kernel wrote a NUL-terminated name into ifr_name (its
        // last byte was zero and stays within the array).
        let name = unsafe { CStr::from_ptr(request.ifr_name.as_ptr()) };
        let name = name.to_str().ok().and_then(|n| IfName::parse(n).ok()).context("the kernel named the tap oddly")?;
        let tap = Self { fd, name, vnet_hdr };
        if let Some(uid) = owner {
            tap.set_owner(uid)?;
        }
        Ok(tap)
    }

    fn set_owner(&self, uid: Uid) -> Result<()> {
        // SAFETY: TUNSETOWNER takes its argument by value (an unsigned
        // long); no memory is passed.
        Errno::result(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid.as_raw())) })
            .with_context(|| format!("giving tap {} to uid {uid}", self.name))
            .map(drop)
    }

    /// The name the kernel gave it.
    pub fn name(&self) -> &IfName {
        &self.name
    }

    /// Whether it carries virtio-net headers (`IFF_VNET_HDR`).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The descriptor that keeps it alive.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

/// Whether the tun driver supports `IFF_VNET_HDR` (`TUNGETFEATURES`).
fn offers_vnet_hdr(fd: &OwnedFd) -> Result<bool> {
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one unsigned int through the pointer,
    // which points at `features`, alive for the call.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETFEATURES, &mut features) })
        .context("asking the tun driver for its features (TUNGETFEATURES)")?;
    Ok(features & libc::IFF_VNET_HDR as libc::c_uint != 0)
}
