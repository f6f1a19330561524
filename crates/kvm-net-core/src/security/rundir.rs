//! kvm-net's files under `/run/kvm-net`, which a helper running setuid root
//! writes on behalf of an unprivileged caller. Every directory on the way is
//! opened without following symlinks and checked (a directory, owned by root,
//! writable by nobody else) before anything is looked up in it; files are
//! then opened relative to that descriptor, never by a path a second time,
//! with `O_NOFOLLOW`, and created with `O_EXCL` and a fixed mode. Nothing
//! here depends on the caller's umask.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::Error;

/// kvm-net's directory under `/run`.
pub const RUN_DIR: &str = "/run/kvm-net";

/// The directories kvm-net keeps under [`RUN_DIR`], each with its fixed mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// Lock files: root's alone (0700), so that no other user can open, and
    /// so hold, a lock that every VM start waits for.
    Lock,
    /// One directory per dnsmasq (config, pidfile, leases, log), readable by
    /// all (0755) so that `kvm-net status` works for anyone.
    Dnsmasq,
    /// What kvm-net added to firewalld for each bridge (0755).
    Firewalld,
    /// One lock file per network with a watcher (see [`crate::ops::watch`]),
    /// held by that watcher: root's alone (0700), like [`Area::Lock`].
    Watch,
    /// The guest filter's bindings of each network, as they were last in
    /// force (which port holds which MAC and address): what a filter made
    /// anew restores. Root's alone (0700): guests' MACs.
    Guests,
    /// Guests' names and addresses for the host's resolver (the NSS module,
    /// which runs as any user): readable by all (0755), names and addresses only.
    Hosts,
}

impl Area {
    /// Its directory's name under [`RUN_DIR`].
    pub fn name(self) -> &'static str {
        match self {
            Area::Lock => "lock",
            Area::Dnsmasq => "dnsmasq",
            Area::Firewalld => "firewalld",
            Area::Watch => "watch",
            Area::Guests => "guests",
            Area::Hosts => "hosts",
        }
    }

    fn mode(self) -> u32 {
        match self {
            Area::Lock | Area::Watch | Area::Guests => 0o700,
            Area::Dnsmasq | Area::Firewalld | Area::Hosts => 0o755,
        }
    }
}

/// The mode of `/run/kvm-net` itself.
const TOP_MODE: u32 = 0o755;

/// A verified directory, held open: everything below is reached through it.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn unsafe_path(path: &Path, why: String) -> anyhow::Error {
    Error::UnsafePath { path: path.display().to_string(), why }.into()
}

/// Refuses a directory that someone other than root owns or may write to:
/// anything in it could have been planted.
fn check_dir(stat: &FileStat, path: &Path, sticky_ok: bool) -> Result<()> {
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFDIR {
        return Err(unsafe_path(path, "it is not a directory".to_owned()));
    }
    if stat.st_uid != 0 {
        return Err(unsafe_path(path, format!("it is owned by uid {}, not root", stat.st_uid)));
    }
    let sticky = stat.st_mode & libc::S_ISVTX != 0;
    if stat.st_mode & 0o022 != 0 && !(sticky_ok && sticky) {
        return Err(unsafe_path(path, format!("its mode {:04o} lets others write to it", stat.st_mode & 0o7777)));
    }
    Ok(())
}

/// Refuses a file that is not a plain, singly linked file of root's.
fn check_file(stat: &FileStat, path: &Path) -> Result<()> {
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFREG {
        return Err(unsafe_path(path, "it is not a regular file".to_owned()));
    }
    if stat.st_uid != 0 {
        return Err(unsafe_path(path, format!("it is owned by uid {}, not root", stat.st_uid)));
    }
    if stat.st_nlink != 1 {
        return Err(unsafe_path(path, format!("it has {} hard links", stat.st_nlink)));
    }
    Ok(())
}

fn is_not_found(err: &Errno) -> bool {
    *err == Errno::ENOENT
}

impl AsFd for SafeDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl SafeDir {
    /// `/run/kvm-net/AREA`, created with its fixed mode if missing.
    pub fn create(area: Area) -> Result<Self> {
        let run = Self::run()?;
        let top = run.subdir("kvm-net", TOP_MODE)?;
        top.subdir(area.name(), area.mode())
    }

    /// `/run/kvm-net/AREA` if it exists (for readers that must not create it).
    pub fn existing(area: Area) -> Result<Option<Self>> {
        let run = Self::run()?;
        let Some(top) = run.existing_subdir("kvm-net", TOP_MODE)? else { return Ok(None) };
        top.existing_subdir(area.name(), area.mode())
    }

    /// `/run`: root's, and writable by others only if sticky.
    fn run() -> Result<Self> {
        let path = PathBuf::from("/run");
        let fd = nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .with_context(|| format!("opening {}", path.display()))?;
        check_dir(&fstat(&fd).with_context(|| format!("checking {}", path.display()))?, &path, true)?;
        Ok(Self { fd, path })
    }

    /// This directory's path, for messages and for programs given a path (dnsmasq).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn child(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the directory `name` here, creating it if missing, and gives it
    /// `mode`. Created as 0700 and widened afterwards, so that it is never
    /// more open than meant, whatever the umask.
    pub fn subdir(&self, name: &str, mode: u32) -> Result<Self> {
        // Nearly always there already: opened first, created only if missing.
        if let Some(dir) = self.existing_subdir(name, mode)? {
            return Ok(dir);
        }
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(err) => return Err(err).with_context(|| format!("creating {}", self.child(name).display())),
        }
        self.existing_subdir(name, mode)?
            .with_context(|| format!("{} vanished right after it was created", self.child(name).display()))
    }

    /// Opens the directory `name` here if it exists, verifies it, and gives
    /// it `mode` (a root-owned directory that only root could write to is
    /// safe to tighten or widen).
    pub fn existing_subdir(&self, name: &str, mode: u32) -> Result<Option<Self>> {
        let path = self.child(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(unsafe_path(&path, "it is a symlink or not a directory".to_owned()))
            }
            // Root without CAP_DAC_OVERRIDE cannot enter someone else's directory.
            Err(Errno::EACCES) => {
                let stat = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .with_context(|| format!("checking {}", path.display()))?;
                check_dir(&stat, &path, false)?;
                return Err(Errno::EACCES).with_context(|| format!("opening {}", path.display()));
            }
            Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
        };
        let stat = fstat(&fd).with_context(|| format!("checking {}", path.display()))?;
        check_dir(&stat, &path, false)?;
        if stat.st_mode & 0o7777 != mode {
            fchmod(&fd, Mode::from_bits_truncate(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        Ok(Some(Self { fd, path }))
    }

    /// Opens (creating if missing) the file `name` for reading and writing,
    /// with `mode`. The directory is root's alone to write, so an existing
    /// file is root's; it is still checked, and never followed if a link.
    pub fn open_or_create(&self, name: &str, mode: u32) -> Result<File> {
        let path = self.child(name);
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(mode & 0o600))
            .with_context(|| format!("opening {}", path.display()))?;
        let stat = fstat(&fd).with_context(|| format!("checking {}", path.display()))?;
        check_file(&stat, &path)?;
        if stat.st_mode & 0o7777 != mode {
            fchmod(&fd, Mode::from_bits_truncate(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        Ok(File::from(fd))
    }

    /// Creates `name` afresh (removing what was there, never following it)
    /// with `mode`, for writing.
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File> {
        let path = self.child(name);
        self.remove(name)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(&self.fd, name, flags, Mode::from_bits_truncate(mode & 0o600))
            .with_context(|| format!("creating {}", path.display()))?;
        if mode & 0o077 != 0 {
            fchmod(&fd, Mode::from_bits_truncate(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
        Ok(File::from(fd))
    }

    /// Replaces `name` with `contents` atomically (a new file renamed over it).
    pub fn replace(&self, name: &str, contents: &[u8], mode: u32) -> Result<()> {
        let temporary = format!(".{name}.new");
        let mut file = self.create_new(&temporary, mode)?;
        file.write_all(contents).with_context(|| format!("writing {}", self.child(&temporary).display()))?;
        renameat(&self.fd, temporary.as_str(), &self.fd, name)
            .with_context(|| format!("putting {} in place", self.child(name).display()))
    }

    /// The text of the file `name`, at most `limit` bytes; `None` if there
    /// is none, or only a symlink (never kvm-net's, never followed).
    pub fn read(&self, name: &str, limit: u64) -> Result<Option<String>> {
        self.read_owned(name, limit, true)
    }

    /// As [`SafeDir::read`], for a file some daemon gives to its own user
    /// (dnsmasq's pidfile), whose text is only a hint that is checked
    /// before it is acted on.
    pub fn read_hint(&self, name: &str, limit: u64) -> Result<Option<String>> {
        self.read_owned(name, limit, false)
    }

    fn read_owned(&self, name: &str, limit: u64, roots_only: bool) -> Result<Option<String>> {
        let path = self.child(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(err) if is_not_found(&err) || err == Errno::ELOOP => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
        };
        let stat = fstat(&fd).with_context(|| format!("checking {}", path.display()))?;
        if roots_only {
            check_file(&stat, &path)?;
        } else if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(unsafe_path(&path, "it is not a regular file".to_owned()));
        }
        let mut text = String::new();
        File::from(fd).take(limit).read_to_string(&mut text).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(text))
    }

    /// Whether the file `name` here is `file` (same device and inode).
    pub fn holds(&self, name: &str, file: &File) -> Result<bool> {
        let path = self.child(name);
        let held = fstat(file.as_fd()).with_context(|| format!("checking {}", path.display()))?;
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(now) => Ok(now.st_dev == held.st_dev && now.st_ino == held.st_ino),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(err).with_context(|| format!("checking {}", path.display())),
        }
    }

    /// Removes the file `name`; one already gone counts as removed.
    pub fn remove(&self, name: &str) -> Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {}", self.child(name).display())),
        }
    }

    /// Removes the directory `name` and what is in it (kvm-net's
    /// directories hold files, and at most one level of directories of
    /// files); one already gone counts as removed.
    pub fn remove_tree(&self, name: &str) -> Result<()> {
        self.remove_tree_within(name, 1)
    }

    fn remove_tree_within(&self, name: &str, depth: u32) -> Result<()> {
        let path = self.child(name);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
        };
        let inner =
            Self { fd: fd.try_clone().with_context(|| format!("opening {}", path.display()))?, path: path.clone() };
        let mut listing = Dir::from_fd(fd).with_context(|| format!("listing {}", path.display()))?;
        let names: Vec<Vec<u8>> = listing
            .iter()
            .filter_map(|entry| entry.ok().map(|e| e.file_name().to_bytes().to_vec()))
            .filter(|name| name != b"." && name != b"..")
            .collect();
        for entry in names {
            let Some(entry) = OsStr::from_bytes(&entry).to_str() else {
                return Err(unsafe_path(&path, "it holds a file whose name is not UTF-8".to_owned()));
            };
            match unlinkat(&inner.fd, entry, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {}
                Err(err) if is_not_found(&err) => {}
                Err(Errno::EISDIR) if depth > 0 => inner.remove_tree_within(entry, depth - 1)?,
                Err(err) => return Err(err).with_context(|| format!("removing {}", inner.child(entry).display())),
            }
        }
        match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
        }
    }
}
