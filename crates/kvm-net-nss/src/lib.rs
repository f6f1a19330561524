//! `libnss_kvmnet.so.2`, the NSS module of service `kvmnet`
//! (`hosts: files kvmnet dns` in `/etc/nsswitch.conf`): guests of kvm-net's
//! networks by name on the host, for `gethostbyname` and `getaddrinfo`.
//!
//! It answers from the names files kvm-net publishes while a network is
//! up, `/run/kvm-net/hosts/netns-COOKIE-BRIDGE.{hosts,leases}` (readable
//! by everyone, names and addresses only), those of the caller's network
//! namespace alone, and only while that namespace has the bridge. What names they hold is kvm-net's policy: `dhcp.hosts` names
//! plain and in the network's domain, guests' own host names only in the
//! domain (a guest never shadows a host name such as `mail`).
//!
//! glibc loads it into every process that resolves a name, as that
//! process's user: no std, no allocation, no unwinding; every file opened
//! without following links, regular files only, read in pieces of a few
//! KiB with a bounded total; anything it cannot read is no answer, never
//! an error of the caller's.

#![no_std]

pub mod names;

use core::ffi::{c_char, c_int, CStr};
use core::net::IpAddr;

use names::Lines;

/// Where kvm-net publishes the names.
const HOSTS_DIR: &CStr = c"/run/kvm-net/hosts";
/// The most of one file read: far more than a network's names take.
const MAX_FILE: usize = 1 << 20;
/// The most files looked at, and addresses answered.
const MAX_FILES: usize = 64;
const MAX_ADDRESSES: usize = 16;
/// `SO_NETNS_COOKIE` (asm-generic/socket.h).
const SO_NETNS_COOKIE: c_int = 71;

/// glibc's `enum nss_status`.
const NSS_STATUS_TRYAGAIN: c_int = -2;
const NSS_STATUS_NOTFOUND: c_int = 0;
const NSS_STATUS_SUCCESS: c_int = 1;
/// `h_errno` values (netdb.h).
const HOST_NOT_FOUND: c_int = 1;
const NETDB_INTERNAL: c_int = -1;

#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: abort takes no arguments and never returns; nothing here can
    // panic, but a module must never unwind into its caller.
    unsafe { libc::abort() }
}

/// core, built once for every target with unwinding, names the personality
/// routine that would unwind a panic through its frames; this module
/// aborts instead and never unwinds, so nothing ever calls it. Defined so
/// that glibc's loader finds every symbol the module names.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// The caller's network namespace's cookie, which names kvm-net's files.
fn netns_cookie() -> Option<u64> {
    // SAFETY: socket takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let mut cookie: u64 = 0;
    let mut length = core::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `cookie`, which
    // lives through the call; `fd` is open.
    let got = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, core::ptr::addr_of_mut!(cookie).cast(), &mut length)
    };
    // SAFETY: closes the descriptor this function opened.
    unsafe { libc::close(fd) };
    (got == 0).then_some(cookie)
}

/// `netns-COOKIE-`, the start of this namespace's files' names.
fn prefix(cookie: u64, into: &mut [u8; 32]) -> &[u8] {
    let mut digits = [0u8; 20];
    let mut count = 0;
    let mut value = cookie;
    loop {
        digits[count] = b'0' + (value % 10) as u8;
        count += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    let head = b"netns-";
    into[..head.len()].copy_from_slice(head);
    for (at, digit) in digits[..count].iter().rev().enumerate() {
        into[head.len() + at] = *digit;
    }
    into[head.len() + count] = b'-';
    &into[..head.len() + count + 1]
}

/// The bridge a names file is of: `BRIDGE.hosts` or `BRIDGE.leases`
/// (after the namespace's prefix), a name the kernel could give a link.
fn bridge_of_file(rest: &[u8]) -> Option<&[u8]> {
    let bridge = rest.strip_suffix(b".hosts").or_else(|| rest.strip_suffix(b".leases"))?;
    let valid = !bridge.is_empty()
        && bridge.len() < libc::IFNAMSIZ
        && bridge.iter().all(|b| b.is_ascii_graphic() && *b != b'/' && *b != b':');
    valid.then_some(bridge)
}

/// Whether a link named `bridge` is in the caller's network namespace:
/// the names of a network whose bridge is gone (its files not yet removed)
/// are not answered.
fn bridge_exists(bridge: &[u8]) -> bool {
    let mut name = [0u8; libc::IFNAMSIZ];
    name[..bridge.len()].copy_from_slice(bridge);
    // SAFETY: `name` is NUL-terminated (bridge is shorter than IFNAMSIZ,
    // checked by bridge_of_file); if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(name.as_ptr().cast()) != 0 }
}

/// Whether `fd` is open on a file of kind `kind` (`S_IFREG`, `S_IFDIR`)
/// that root owns and only root may write: what kvm-net makes. Anything
/// else under /run/kvm-net/hosts is not kvm-net's, and not believed.
fn is_roots(fd: c_int, kind: libc::mode_t) -> bool {
    // SAFETY: stat is plain old data; all-zero bytes are a valid value.
    let mut status: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: fstat writes one stat into `status`; `fd` is open.
    let known = unsafe { libc::fstat(fd, &mut status) } == 0;
    known && status.st_mode & libc::S_IFMT == kind && status.st_uid == 0 && status.st_mode & 0o022 == 0
}

/// Feeds every byte of the regular file `name` (in `dir`) to `lines`.
fn read_file(dir: c_int, name: &CStr, lines: &mut Lines<'_>, found: &mut impl FnMut(IpAddr)) {
    // SAFETY: openat reads the NUL-terminated name; `dir` is open.
    let fd = unsafe {
        libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
    };
    if fd < 0 {
        return;
    }
    let regular = is_roots(fd, libc::S_IFREG);
    let mut buffer = [0u8; 4096];
    let mut total = 0;
    while regular && total < MAX_FILE {
        // SAFETY: read writes at most `buffer.len()` bytes into `buffer`.
        let got = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        let Ok(got) = usize::try_from(got) else { break };
        if got == 0 {
            break;
        }
        lines.feed(&buffer[..got], found);
        total += got;
    }
    lines.finish(found);
    // SAFETY: closes the descriptor this function opened.
    unsafe { libc::close(fd) };
}

/// The addresses of `name` of `family` (`AF_INET`, `AF_INET6`) in this
/// namespace's names files, into `found`; how many.
fn lookup(name: &[u8], family: c_int, found: &mut [IpAddr; MAX_ADDRESSES]) -> usize {
    if !names::is_dns_name(name) {
        return 0;
    }
    let Some(cookie) = netns_cookie() else { return 0 };
    let mut storage = [0u8; 32];
    let prefix = prefix(cookie, &mut storage);
    // SAFETY: open reads the NUL-terminated path.
    let dir = unsafe { libc::open(HOSTS_DIR.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if dir < 0 {
        return 0;
    }
    if !is_roots(dir, libc::S_IFDIR) {
        // SAFETY: closes the descriptor this function opened.
        unsafe { libc::close(dir) };
        return 0;
    }
    // SAFETY: dup gives fdopendir a descriptor of its own, which closedir closes.
    let listing = unsafe { libc::fdopendir(libc::dup(dir)) };
    let mut count = 0;
    if !listing.is_null() {
        let mut files = 0;
        while files < MAX_FILES {
            // SAFETY: readdir on a stream this function opened; the entry
            // stays valid until the next readdir or closedir.
            let entry = unsafe { libc::readdir(listing) };
            if entry.is_null() {
                break;
            }
            // SAFETY: d_name is a NUL-terminated name within the entry.
            let file = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            let Some(bridge) = file.to_bytes().strip_prefix(prefix).and_then(bridge_of_file) else { continue };
            if !bridge_exists(bridge) {
                continue;
            }
            files += 1;
            let mut lines = Lines::new(name);
            read_file(dir, file, &mut lines, &mut |address| {
                let wanted = match address {
                    IpAddr::V4(_) => family == libc::AF_INET,
                    IpAddr::V6(_) => family == libc::AF_INET6,
                };
                if wanted && count < MAX_ADDRESSES && !found[..count].contains(&address) {
                    found[count] = address;
                    count += 1;
                }
            });
        }
        // SAFETY: closes the stream this function opened.
        unsafe { libc::closedir(listing) };
    }
    // SAFETY: closes the descriptor this function opened.
    unsafe { libc::close(dir) };
    count
}

/// Lays out a `struct hostent` for `name` and `addresses` in the caller's
/// `buffer`; false when it is too small.
///
/// # Safety
/// `result` must point to a writable hostent and `buffer` to `length`
/// writable bytes, as NSS's callers guarantee.
unsafe fn fill(
    name: &[u8],
    family: c_int,
    addresses: &[IpAddr],
    result: *mut libc::hostent,
    buffer: *mut c_char,
    length: usize,
) -> bool {
    let size = if family == libc::AF_INET { 4 } else { 16 };
    let pointer = core::mem::size_of::<*mut c_char>();
    let start = buffer as usize;
    let aligned = start.div_ceil(pointer) * pointer;
    let lists = aligned - start;
    // h_aliases: one NULL; h_addr_list: the addresses and a NULL; then the addresses, then the name.
    let needed = lists + pointer + (addresses.len() + 1) * pointer + addresses.len() * size + name.len() + 1;
    if needed > length {
        return false;
    }
    let aliases = (aligned) as *mut *mut c_char;
    let list = (aligned + pointer) as *mut *mut c_char;
    let data = (aligned + pointer + (addresses.len() + 1) * pointer) as *mut u8;
    let copy = data.add(addresses.len() * size);
    // SAFETY (this block): every write is inside the `needed` bytes checked above.
    aliases.write(core::ptr::null_mut());
    for (index, address) in addresses.iter().enumerate() {
        let at = data.add(index * size);
        match address {
            IpAddr::V4(v4) => core::ptr::copy_nonoverlapping(v4.octets().as_ptr(), at, 4),
            IpAddr::V6(v6) => core::ptr::copy_nonoverlapping(v6.octets().as_ptr(), at, 16),
        }
        list.add(index).write(at.cast());
    }
    list.add(addresses.len()).write(core::ptr::null_mut());
    core::ptr::copy_nonoverlapping(name.as_ptr(), copy, name.len());
    copy.add(name.len()).write(0);
    (*result).h_name = copy.cast();
    (*result).h_aliases = aliases;
    (*result).h_addrtype = family;
    (*result).h_length = size as c_int;
    (*result).h_addr_list = list;
    true
}

/// `gethostbyname2_r` for service `kvmnet`.
///
/// # Safety
/// Called by glibc's NSS with a NUL-terminated `name` and valid pointers.
#[no_mangle]
pub unsafe extern "C" fn _nss_kvmnet_gethostbyname2_r(
    name: *const c_char,
    family: c_int,
    result: *mut libc::hostent,
    buffer: *mut c_char,
    length: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    if name.is_null() || result.is_null() || buffer.is_null() {
        *errnop = libc::EINVAL;
        *h_errnop = NETDB_INTERNAL;
        return NSS_STATUS_NOTFOUND;
    }
    // SAFETY: glibc passes a NUL-terminated name.
    let wanted = CStr::from_ptr(name).to_bytes();
    let wanted = wanted.strip_suffix(b".").unwrap_or(wanted);
    let mut found = [IpAddr::from([0u8; 4]); MAX_ADDRESSES];
    let count = match family {
        libc::AF_INET | libc::AF_INET6 => lookup(wanted, family, &mut found),
        _ => 0,
    };
    if count == 0 {
        *errnop = libc::ENOENT;
        *h_errnop = HOST_NOT_FOUND;
        return NSS_STATUS_NOTFOUND;
    }
    // SAFETY: as the caller guarantees, `result` and `buffer` are valid.
    if !fill(wanted, family, &found[..count], result, buffer, length) {
        *errnop = libc::ERANGE;
        *h_errnop = NETDB_INTERNAL;
        return NSS_STATUS_TRYAGAIN;
    }
    NSS_STATUS_SUCCESS
}

/// `gethostbyname_r` for service `kvmnet`: IPv4.
///
/// # Safety
/// As [`_nss_kvmnet_gethostbyname2_r`].
#[no_mangle]
pub unsafe extern "C" fn _nss_kvmnet_gethostbyname_r(
    name: *const c_char,
    result: *mut libc::hostent,
    buffer: *mut c_char,
    length: usize,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    _nss_kvmnet_gethostbyname2_r(name, libc::AF_INET, result, buffer, length, errnop, h_errnop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_names_its_bridge_or_is_not_read() {
        assert_eq!(bridge_of_file(b"labbr0.hosts"), Some(&b"labbr0"[..]));
        assert_eq!(bridge_of_file(b"br0.10.leases"), Some(&b"br0.10"[..]));
        for bad in [&b"labbr0"[..], b".hosts", b"a-name-far-too-long.hosts", b"x.hosts.tmp", b"a b.hosts", b"a/b.hosts"]
        {
            assert_eq!(bridge_of_file(bad), None, "{:?}", core::str::from_utf8(bad));
        }
        assert!(bridge_exists(b"lo"));
        assert!(!bridge_exists(b"no-such-link0"));
    }

    #[test]
    fn the_prefix_names_this_namespace() {
        let mut storage = [0u8; 32];
        assert_eq!(prefix(0, &mut storage), b"netns-0-");
        assert_eq!(prefix(u64::MAX, &mut storage), b"netns-18446744073709551615-");
        assert!(netns_cookie().is_some(), "SO_NETNS_COOKIE (Linux 5.14)");
    }

    #[test]
    fn a_hostent_fits_the_callers_buffer_or_asks_for_more() {
        let addresses = [IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])];
        // SAFETY: hostent is plain old data; all-zero bytes are a valid value.
        let mut result: libc::hostent = unsafe { core::mem::zeroed() };
        let mut buffer = [0 as c_char; 128];
        // SAFETY: result and buffer are valid for the call.
        assert!(unsafe { fill(b"web1", libc::AF_INET, &addresses, &mut result, buffer.as_mut_ptr(), buffer.len()) });
        // SAFETY: fill wrote a NUL-terminated name and a NULL-terminated list.
        unsafe {
            assert_eq!(CStr::from_ptr(result.h_name).to_bytes(), b"web1");
            assert_eq!(result.h_length, 4);
            let first = *result.h_addr_list;
            assert_eq!(core::slice::from_raw_parts(first.cast::<u8>(), 4), [10, 0, 0, 1]);
            assert!((*result.h_addr_list.add(2)).is_null());
            assert!((*result.h_aliases).is_null());
        }
        let mut small = [0 as c_char; 16];
        // SAFETY: as above.
        assert!(!unsafe { fill(b"web1", libc::AF_INET, &addresses, &mut result, small.as_mut_ptr(), small.len()) });
    }
}
