#!/bin/bash
# Installs the .deb on this machine, checks its files and the reversible
# /etc/qemu-ifup drop-in, runs the QEMU NAT end-to-end scenario with QEMU
# pointing at /usr/libexec/kvm-natup and /usr/libexec/kvm-natdown, then purges
# the package and checks that nothing of it is left. Needs root.
#   packaging/package-test.sh target/kvm-net_VERSION_amd64.deb
set -euo pipefail
deb=$1
top=$(cd "$(dirname "$0")/.." && pwd)
passed=0
pass() { echo "package-test: ok: $1"; passed=$((passed + 1)); }
fail() { echo "package-test: FAILED: $1" >&2; echo "package-test: $passed passed, 1 failed"; exit 1; }

if dpkg -s kvm-net >/dev/null 2>&1; then
    echo "package-test: kvm-net is already installed here; remove it first (this test purges it)" >&2
    exit 1
fi
fingerprint() { if [ -e "$1" ]; then sha256sum "$1"; else echo "absent $1"; fi; }
ifup_before=$(fingerprint /etc/qemu-ifup)
nsswitch_before=$(fingerprint /etc/nsswitch.conf)
ifdown_before=$(fingerprint /etc/qemu-ifdown)
# make install / make uninstall into a scratch DESTDIR leave nothing behind.
destdir=$(mktemp -d)
(cd "$top" && make --no-print-directory install DESTDIR="$destdir" PREFIX=/usr >/dev/null \
    && make --no-print-directory uninstall DESTDIR="$destdir" PREFIX=/usr >/dev/null)
left=$(find "$destdir" -type f -o -type l)
rm -rf "$destdir"
[ -z "$left" ] || fail "make uninstall left: $left"
pass "make install then make uninstall leave no file behind"

trap 'dpkg --purge kvm-net >/dev/null 2>&1 || true' EXIT

dpkg -i "$deb" >/dev/null
mapfile -t files < <(dpkg -L kvm-net | while read -r f; do [ -f "$f" ] && echo "$f"; done)
for f in /usr/libexec/kvm-natup /usr/libexec/kvm-natdown /usr/libexec/kvm-ifup /usr/libexec/kvm-ifdown \
    /usr/libexec/kvm-net-bridge-helper /usr/libexec/kvm-net-lease /usr/bin/kvm-net; do
    [ -x "$f" ] || fail "$f is not installed"
done
[ "$(stat -c '%U:%G %a' /usr/libexec/kvm-net-bridge-helper)" = "root:root 4755" ] \
    || fail "kvm-net-bridge-helper is not setuid root: $(stat -c '%U:%G %a' /usr/libexec/kvm-net-bridge-helper)"
[ ! -e /etc/kvm-net ] || fail "the package put a config in /etc"
for page in man8/kvm-natup.8.gz man8/kvm-ifup.8.gz man8/kvm-net-bridge-helper.8.gz man5/kvm-net.toml.5.gz man1/kvm-net.1.gz; do
    [ -f "/usr/share/man/$page" ] || fail "/usr/share/man/$page is not installed"
done
if command -v man >/dev/null; then
    man -w kvm-natup >/dev/null && man -w kvm-net.toml >/dev/null || fail "man does not find the pages"
fi
kvm-net --version >/dev/null || fail "kvm-net does not run"
pass "installed ${#files[@]} files, no conffile"

module=/usr/lib/$(cc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/libnss_kvmnet.so.2
[ -f "$module" ] || fail "$module is not installed"
[ "$(stat -c '%U:%G %a' "$module")" = "root:root 644" ] || fail "$module: $(stat -c '%U:%G %a' "$module")"
# glibc's loader finds it by the name nsswitch.conf's kvmnet makes it look for, with nothing more than libc.
python3 -c 'import ctypes; ctypes.CDLL("libnss_kvmnet.so.2").__getattr__("_nss_kvmnet_gethostbyname2_r")' \
    || fail "glibc does not load libnss_kvmnet.so.2 by name"
needed=$(objdump -p "$module" | awk '/NEEDED/ { print $2 }')
[ "$needed" = libc.so.6 ] || fail "$module needs more than libc: $needed"
[ "$(fingerprint /etc/nsswitch.conf)" = "$nsswitch_before" ] || fail "the package edited /etc/nsswitch.conf"
pass "the NSS module is installed where glibc finds it, needs libc alone, and nsswitch.conf is untouched"

unit=/usr/lib/systemd/system/kvm-net.service
[ -f "$unit" ] || fail "$unit is not installed"
grep -qx 'ExecStart=/usr/bin/kvm-net up --autostart' "$unit" || fail "$unit does not run the installed kvm-net"
if command -v systemd-analyze >/dev/null; then
    man=no
    command -v man >/dev/null && man=yes
    said=$(systemd-analyze verify --man=$man "$unit" 2>&1) || fail "systemd-analyze verify $unit: $said"
    # Units it names that this machine lacks (nftables, firewalld) are not the unit's fault.
    bad=$(echo "$said" | grep -v -e 'nftables.service' -e 'firewalld.service' -e '^$' || true)
    [ -z "$bad" ] || fail "systemd-analyze verify $unit: $bad"
fi
if command -v deb-systemd-helper >/dev/null; then
    [ -L /etc/systemd/system/multi-user.target.wants/kvm-net.service ] || fail "kvm-net.service is not enabled"
fi
pass "kvm-net.service is installed, verified and enabled"

if [ -e /etc/qemu-ifup ]; then
    kvm-net-qemu-dropin enable >/dev/null
    [ "$(readlink /etc/qemu-ifup)" = /usr/libexec/kvm-ifup ] || fail "drop-in: /etc/qemu-ifup does not run kvm-ifup"
    kvm-net-qemu-dropin enable >/dev/null || fail "drop-in: enabling twice failed"
    kvm-net-qemu-dropin disable >/dev/null
    [ "$(fingerprint /etc/qemu-ifup)" = "$ifup_before" ] || fail "drop-in: /etc/qemu-ifup not restored"
    [ "$(fingerprint /etc/qemu-ifdown)" = "$ifdown_before" ] || fail "drop-in: /etc/qemu-ifdown not restored"
    pass "the /etc/qemu-ifup drop-in goes on and comes off, restoring the packaged file"
fi

(cd "$top" && KVM_NET_BIN_DIR=/usr/libexec cargo test --quiet --locked -p kvm-net-tests --test qemu \
    -- --exact nat_guest_reaches_upstream_and_everything_goes_with_it) || fail "QEMU NAT scenario with /usr/libexec/kvm-natup"
pass "QEMU booted a guest through /usr/libexec/kvm-natup and kvm-natdown"

(cd "$top" && KVM_NET_BIN_DIR=/usr/libexec KVM_NET_INSTALLED_BRIDGE_HELPER=/usr/libexec/kvm-net-bridge-helper \
    cargo test --quiet --locked -p kvm-net-tests --test qemu \
    -- --exact an_unprivileged_qemu_gets_nat_and_dhcp_through_the_bridge_helper_until_it_exits) \
    || fail "QEMU run by an unprivileged user through /usr/libexec/kvm-net-bridge-helper"
pass "QEMU run by an unprivileged user got NAT and DHCP through the installed setuid bridge helper"

# Purging with the drop-in on must take it off too.
[ -e /etc/qemu-ifup ] && kvm-net-qemu-dropin enable >/dev/null
dpkg --purge kvm-net >/dev/null
trap - EXIT
for f in "${files[@]}"; do
    [ ! -e "$f" ] || fail "$f is left after purge"
done
[ ! -e /usr/share/doc/kvm-net ] || fail "/usr/share/doc/kvm-net is left after purge"
[ "$(fingerprint /etc/qemu-ifup)" = "$ifup_before" ] || fail "/etc/qemu-ifup not restored by purge"
[ -z "$(dpkg-divert --list /etc/qemu-ifup)" ] || fail "a diversion of /etc/qemu-ifup is left"
[ ! -e /etc/systemd/system/multi-user.target.wants/kvm-net.service ] || fail "kvm-net.service is still enabled after purge"
pass "purge left nothing of the package, and the drop-in was undone"
echo "package-test: $passed passed, 0 failed"
