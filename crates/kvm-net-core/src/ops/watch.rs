//! Teardown for networks whose VMs run no downscript. QEMU runs none with
//! `-netdev bridge,helper=`: its tap just disappears when QEMU closes it
//! (clean exit, crash or SIGKILL). So the first bridge helper of a managed
//! network leaves one small process behind, the watcher, which sleeps on the
//! kernel's link notifications and, when the bridge has no ports left,
//! removes the network exactly as the last `kvm-natdown` would, then exits.
//! It also takes away what outlives a tap: a switch's port (Open vSwitch),
//! the guest filter's bindings, the ifb of a limited port (on a bridged
//! network, that is all its watcher is for). No kvm-net process runs while
//! no VM uses the network.
//!
//! One watcher per network: it holds `/run/kvm-net/watch/TAG.lock` for its
//! whole life. Both the helper that starts a watcher and a watcher that
//! decides to leave do so under the bridge's lock, and a leaving watcher lets
//! go of its own lock first; so a VM starting while the network is torn down
//! finds either a watcher that will see its tap, or none, and starts one.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::unistd::{fork, setsid, ForkResult};

use crate::config::model::Network;
use crate::error::Error;
use crate::firewall::{self, guests::GuestFilter};
use crate::kernel::netlink::{LinkEvents, Netlink};
use crate::kernel::netns::bridge_tag;
use crate::ops::network::{why_it_stays, Services};
use crate::security::lock::BridgeLock;
use crate::security::rundir::{Area, SafeDir};
use crate::shaping;
use crate::switch::linux::Marks;
use crate::switch::{self, Departures, Switch};
use crate::trace::trace;

/// The lock a network's watcher holds while it lives.
struct WatchLock {
    file: File,
    dir: SafeDir,
    name: String,
}

impl WatchLock {
    /// The network's watch lock if no watcher holds it; `None` if one does.
    fn try_acquire(network: &Network) -> Result<Option<Self>> {
        let dir = SafeDir::create(Area::Watch)?;
        // Several networks may share one switch (ovs networks on OVN's
        // br-int): one watcher each, for its own ports.
        let name = format!("{}@{}.lock", bridge_tag(&network.bridge)?, network.name);
        loop {
            let file = dir.open_or_create(&name, 0o600)?;
            // SAFETY: flock on a descriptor this function owns; LOCK_NB never blocks.
            match Errno::result(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
                Ok(_) => {}
                Err(Errno::EWOULDBLOCK) => return Ok(None),
                Err(err) => return Err(err).with_context(|| format!("locking {}", dir.path().join(&name).display())),
            }
            // A watcher that left removed the file after we opened it: lock the new one.
            if dir.holds(&name, &file)? {
                return Ok(Some(Self { file, dir, name }));
            }
        }
    }

    /// Lets go: the file goes first, while still held, so that lock files
    /// do not pile up.
    fn release(self) -> Result<()> {
        self.dir.remove(&self.name)?;
        drop(self.file);
        Ok(())
    }
}

/// Makes sure a watcher runs for `network`, starting one if none does. Call
/// it with the bridge's lock held, from a single-threaded process.
pub fn ensure_watcher(network: &Network) -> Result<()> {
    let Some(lock) = WatchLock::try_acquire(network)? else {
        trace(format_args!("a watcher already runs for bridge {}", network.bridge));
        return Ok(());
    };
    trace(format_args!("starting a watcher for bridge {}", network.bridge));
    // SAFETY: the helpers are single-threaded here (the only threads they
    // start, in teardown, are joined before returning), so the child is a
    // complete copy of the one thread and may run any code. The child never
    // returns into the caller's frames: it ends in `process::exit`.
    match unsafe { fork() }.context("starting the network's watcher")? {
        ForkResult::Parent { .. } => {
            // The child's copy of the descriptor keeps the lock.
            drop(lock);
            Ok(())
        }
        ForkResult::Child => {
            let keep = [lock.file.as_raw_fd(), lock.dir.as_fd().as_raw_fd()];
            let code = match become_daemon(&keep).and_then(|()| watch(network, lock)) {
                Ok(()) => 0,
                Err(err) => {
                    log_failure(network, &err);
                    1
                }
            };
            std::process::exit(code)
        }
    }
}

/// Tells syslog (`/dev/log`, where journald or rsyslog listens) why the
/// watcher gave up; the watcher has no terminal and nobody reads its stderr.
/// The network is then left for `kvm-net gc` (`kvm-net check` reports it).
/// Best effort: without a syslog daemon the line is lost.
fn log_failure(network: &Network, err: &anyhow::Error) {
    // <27>: facility daemon, severity err.
    let line = format!(
        "<27>kvm-net-watch[{}]: network {} (bridge {}): {err:#}; run `kvm-net gc` once its VMs are gone",
        std::process::id(),
        network.name,
        network.bridge
    );
    if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = socket.send_to(line.as_bytes(), "/dev/log");
    }
}

/// Leaves the caller behind: a session of its own (no terminal signals from
/// QEMU's) with a daemon's signal actions, /dev/null for stdin, stdout and stderr (QEMU's pipes must see
/// their end when QEMU goes), and no descriptor but those in `keep`. Above
/// all not the tap's, which would keep the tap alive, nor the bridge's lock.
fn become_daemon(keep: &[RawFd]) -> Result<()> {
    setsid().context("starting a session for the watcher")?;
    crate::security::privilege::restore_default_signals().context("resetting the watcher's signal actions")?;
    // What ps and top show: the watcher, not another bridge helper.
    nix::sys::prctl::set_name(c"kvm-net-watch").context("naming the watcher")?;
    let null = OpenOptions::new().read(true).write(true).open("/dev/null").context("opening /dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors of this process, from a
        // descriptor it owns; no memory is involved.
        Errno::result(unsafe { libc::dup2(null.as_raw_fd(), fd) }).context("redirecting the watcher's output")?;
    }
    drop(null);
    // The objects owning the descriptors closed here are never used again in
    // this process: it only runs `watch`, and the one it would share (the
    // nf_tables socket) is forgotten first.
    firewall::forget_inherited_sockets();
    let mut kept: Vec<u32> = keep.iter().filter_map(|fd| u32::try_from(*fd).ok()).collect();
    kept.sort_unstable();
    let mut from = 3u32;
    for next in kept.into_iter().chain([u32::MAX]) {
        if next > from {
            // SAFETY: close_range only closes descriptors of this process.
            Errno::result(unsafe { libc::syscall(libc::SYS_close_range, from, next - 1, 0) })
                .context("closing the helper's descriptors in the watcher")?;
        }
        from = from.max(next.saturating_add(1));
    }
    Ok(())
}

/// Waits for the network's switch to lose its last port, then leaves (a
/// managed network torn down first).
fn watch(network: &Network, lock: WatchLock) -> Result<()> {
    // Subscribed before the first look, so that no departure goes unseen.
    let mut events = LinkEvents::subscribe()?;
    let mut lock = lock;
    loop {
        match look(network, lock)? {
            Look::Keep(kept, Departures::Bridge(index)) => {
                lock = kept;
                events.wait_for_departure(index)?;
            }
            Look::Keep(kept, Departures::Taps { names, alias }) => {
                lock = kept;
                events.wait_for_port_departure(&names, &alias)?;
            }
            Look::Done => return Ok(()),
        }
    }
}

/// What a look at the network decided.
enum Look {
    /// Ports remain: keep watching for these departures.
    Keep(WatchLock, Departures),
    /// The network is gone (removed here, or by someone else), or kept up
    /// until `kvm-net down`: the watcher has let go of its lock.
    Done,
}

/// The network's switch as it is now; `None` when it is gone or (a
/// managed network) no longer kvm-net's.
fn open_switch(network: &Network, netlink: &mut Netlink) -> Result<Option<Box<dyn Switch>>> {
    match switch::open(network, netlink, None) {
        Ok(switch) if network.mode.is_managed() && !switch.link().is_some_and(|bridge| bridge.is_managed()) => Ok(None),
        Ok(switch) => Ok(Some(switch)),
        Err(err) if matches!(err.downcast_ref::<Error>(), Some(Error::NoBridge(_))) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Decides what to do now. Ports whose tap went are taken away (from a
/// switch that keeps them, and from the guest filter: a guest started
/// again on another tap is itself again), under the bridge's lock, which
/// the helpers adding a port hold too (a tap made again under the same name
/// is never taken off). With no port of kvm-net's left the watcher leaves,
/// taking a managed network down as the last `kvm-natdown` would.
fn look(network: &Network, lock: WatchLock) -> Result<Look> {
    let mut netlink = Netlink::connect()?;
    let filter = GuestFilter::of(network);
    let filtered = filter.is_asked_for();
    let Some(mut switch) = open_switch(network, &mut netlink)? else {
        trace(format_args!("the switch of network {} is gone, or not kvm-net's", network.name));
        lock.release()?;
        return Ok(Look::Done);
    };
    // The ifbs of limited taps that went (no lock needed: each is its tap's alone).
    let ifbs_left = shaping::is_asked_for(network) && shaping::release_departed(&mut netlink)?;
    // A switch kvm-net does not make, whose ports go with their links, has
    // a watcher for its ports' ifbs alone (the bridge helper's taps on a
    // bridged network): it leaves with the last of them.
    if !network.mode.is_managed() && !switch.keeps_departed_ports() {
        if ifbs_left {
            return Ok(Look::Keep(lock, switch.departures(&mut netlink)?));
        }
        lock.release()?;
        return Ok(Look::Done);
    }
    // The common case, without the bridge's lock: ports left, and nothing to take away.
    if !filtered && switch.has_ports(&mut netlink)? && switch.stale_ports(&mut netlink)?.is_empty() {
        return Ok(Look::Keep(lock, switch.departures(&mut netlink)?));
    }
    let bridge_lock = BridgeLock::acquire(&network.bridge)?;
    // Declared after the bridge's lock, so dropped before it (on an error
    // too): a helper holding the bridge's lock never sees a watcher that is
    // on its way out.
    let lock = lock;
    // Seen again under the lock: a VM may have started meanwhile.
    let Some(mut switch) = open_switch(network, &mut netlink)? else {
        lock.release()?;
        return Ok(Look::Done);
    };
    for port in switch.stale_ports(&mut netlink)? {
        trace(format_args!("{port} is gone: removing its port of {}", switch.describe()));
        switch.forget(&port)?;
    }
    if filtered {
        let present: Vec<String> = switch.ports(&mut netlink)?.into_iter().map(|port| port.name).collect();
        filter.release_departed(&present)?;
    }
    if switch.has_ports(&mut netlink)? {
        return Ok(Look::Keep(lock, switch.departures(&mut netlink)?));
    }
    let Some(bridge) = switch.link().cloned().filter(|_| network.mode.is_managed()) else {
        lock.release()?;
        return Ok(Look::Done);
    };
    if let Some(why) = why_it_stays(&bridge, None)? {
        trace(format_args!("bridge {} stays: {why}", bridge.name));
        lock.release()?;
        return Ok(Look::Done);
    }
    trace(format_args!("bridge {} has no ports left: removing the network", bridge.name));
    let removed =
        Services::for_bridge(&network.bridge).and_then(|services| services.tear_down(&mut netlink, Some(&bridge)));
    // Let go of the watch lock before the bridge's: a helper waiting for the
    // bridge's lock then finds no watcher, and starts one.
    lock.release()?;
    removed?;
    bridge_lock.remove_file()?;
    Ok(Look::Done)
}
