//! QEMU's side of the bridge-helper protocol, without QEMU: a Unix socket
//! pair, the helper run as `HELPER [--use-vnet] --fd=N --br=NAME` with one
//! end as descriptor N, one byte received with the tap's descriptor
//! (`SCM_RIGHTS`), then the helper's exit status. Used by the protocol tests
//! and by the benchmark's driver (`bridge-helper-driver`).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::cmsg_space;
use nix::sys::socket::{recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};

/// The descriptor number the helper gets its socket as (QEMU's is whatever
/// `socketpair` returned; any number above the standard ones will do).
pub const HELPER_FD: RawFd = 7;

/// What one run of the helper gave.
#[derive(Debug)]
pub struct Received {
    /// The tap's descriptor, if the helper sent one.
    pub tap: Option<OwnedFd>,
    /// The helper's exit status and output.
    pub output: Output,
    /// From spawning the helper to its exit.
    pub elapsed: Duration,
}

impl Received {
    /// Whether the helper exited 0 and sent a descriptor, as QEMU requires.
    pub fn succeeded(&self) -> bool {
        self.output.status.success() && self.tap.is_some()
    }

    /// The helper's stderr.
    pub fn stderr(&self) -> String {
        crate::run::stderr(&self.output)
    }
}

/// The arguments QEMU passes: `[--use-vnet] --fd=N --br=NAME`.
pub fn qemu_arguments(bridge: &str, use_vnet: bool) -> Vec<String> {
    let mut args = Vec::new();
    if use_vnet {
        args.push("--use-vnet".to_owned());
    }
    args.push(format!("--fd={HELPER_FD}"));
    args.push(format!("--br={bridge}"));
    args
}

/// Runs `command` (the helper with its arguments, however it is wrapped)
/// with one end of a socket pair as descriptor [`HELPER_FD`], and collects
/// the descriptor it sends.
pub fn call(mut command: Command) -> Received {
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).expect("making a socket pair");
    let raw = theirs.as_raw_fd();
    // SAFETY: runs in the forked child before exec; see `inherit_as`.
    unsafe {
        command.pre_exec(move || inherit_as(raw, HELPER_FD));
    }
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = command.spawn().expect("starting the helper");
    drop(theirs);
    let tap = receive_descriptor(&ours);
    let output = child.wait_with_output().expect("waiting for the helper");
    Received { tap, output, elapsed: started.elapsed() }
}

/// In a forked child before exec: makes `fd` available as `number` across
/// exec. dup2 makes a copy without close-on-exec, except onto itself, where
/// the flag must be cleared instead. Async-signal-safe (two system calls).
fn inherit_as(fd: RawFd, number: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl and dup2 on descriptors of this process; no memory is involved.
    let done = unsafe {
        if fd == number {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, number)
        }
    };
    if done == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One byte and the descriptor attached to it; `None` if the peer closed
/// its end without sending one.
fn receive_descriptor(socket: &OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut buffers = [IoSliceMut::new(&mut byte)];
    let mut space = cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut buffers, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let fd = message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    // SAFETY: the kernel just installed this descriptor in this process for
    // the SCM_RIGHTS message; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The tap a tun descriptor is attached to (`TUNGETIFF`): its name, and
/// whether it has virtio-net headers (`IFF_VNET_HDR`).
pub fn tap_of(fd: &OwnedFd) -> (String, bool) {
    // SAFETY: ifreq is plain old data; all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq into `request`, alive for the call.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut request) };
    assert_eq!(done, 0, "TUNGETIFF: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel writes a NUL-terminated name into ifr_name.
    let name = unsafe { std::ffi::CStr::from_ptr(request.ifr_name.as_ptr()) }.to_string_lossy().into_owned();
    // SAFETY: TUNGETIFF fills ifru_flags.
    let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
    (name, flags & libc::IFF_VNET_HDR != 0)
}

/// Hands `tap` to a process of its own inside `ns` (as QEMU would hold it):
/// `sleep` with the descriptor as its fd 9. The tap lives until it is killed.
pub fn hold_in(ns: &crate::Netns, tap: OwnedFd) -> std::process::Child {
    let raw = tap.as_raw_fd();
    let mut command = ns.cmd("sleep");
    command.arg("600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: runs in the forked child before exec; see `inherit_as`.
    unsafe {
        command.pre_exec(move || inherit_as(raw, 9));
    }
    let child = command.spawn().expect("starting a holder for the tap");
    drop(tap);
    child
}
