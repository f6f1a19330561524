#!/bin/bash
# Installs what building and testing kvm-net needs on a fresh Debian machine:
# the firewall and link tools the helpers and tests drive, dnsmasq for DHCP,
# QEMU and busybox for the end-to-end guest, setcap and useradd for the
# install-mode tests, nft, firewalld and dbus for the firewall tests, python3
# and systemd-analyze for the NSS module and kvm-net.service, Open
# vSwitch, OVN and ethtool for the multi-host tests, and the musl target for static binaries; with --bench also hyperfine,
# bridge-utils, qemu-bridge-helper, gcc and iperf3. Idempotent: it installs only what is missing.
set -euo pipefail

need=()
command -v iptables >/dev/null || need+=(iptables)
# nft: the tests read kvm-net's nftables tables with it (the helpers never run it).
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v dpkg-deb >/dev/null || need+=(dpkg)
# Setuid and capability installs, tried by real users in tests/security.rs.
command -v setcap >/dev/null || [ -x /usr/sbin/setcap ] || need+=(libcap2-bin)
command -v setpriv >/dev/null || need+=(util-linux)
command -v useradd >/dev/null || [ -x /usr/sbin/useradd ] || need+=(passwd)
# strace: the nftables backend must start no process on a VM's start or stop.
command -v strace >/dev/null || need+=(strace)
# ethtool: checksum offload off on the veths of the OVN lab; ping: its guests.
command -v ethtool >/dev/null || [ -x /usr/sbin/ethtool ] || need+=(ethtool)
command -v ping >/dev/null || need+=(iputils-ping)
# IPv6 guests: dhclient -6 (DHCPv6) and rdisc6 (router advertisements), in namespaces.
command -v dhclient >/dev/null || [ -x /usr/sbin/dhclient ] || need+=(isc-dhcp-client)
command -v rdisc6 >/dev/null || need+=(ndisc6)
# Rate limits measured against their rate (tests/bandwidth.rs), and the data path's traffic in make bench.
command -v iperf3 >/dev/null || need+=(iperf3)
# The NSS module asked through Python's getaddrinfo as an ordinary user (tests/host_names.rs).
[ -x /usr/bin/python3 ] || need+=(python3)
# systemd-analyze verifies kvm-net.service (systemd is not PID 1 here: nothing starts).
command -v systemd-analyze >/dev/null || need+=(systemd)
# The kernel's UAPI headers: unit tests check kvm-net's hand-typed kernel numbers against them.
[ -e /usr/include/linux/netfilter/nf_tables.h ] || need+=(linux-libc-dev)
if [ "${1:-}" = --bench ]; then
    # The benchmark's timer, and brctl for the classic scripts it compares with.
    command -v hyperfine >/dev/null || need+=(hyperfine)
    command -v brctl >/dev/null || need+=(bridge-utils)
    # QEMU's own bridge helper, which the bridge helper is measured against.
    [ -x /usr/lib/qemu/qemu-bridge-helper ] || need+=(qemu-system-common)
    # The kernel's floor (benches/attach-floor.c, built static) and the data path's traffic.
    command -v gcc >/dev/null || need+=(gcc)
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
fi

# Daemons the tests start inside namespaces of their own (firewalld with its
# own system bus), installed without ever being started on this machine.
services=()
command -v firewalld >/dev/null || [ -x /usr/sbin/firewalld ] || services+=(firewalld)
command -v dbus-daemon >/dev/null || services+=(dbus)
# Open vSwitch and OVN (tests/ovs.rs, tests/ovn.rs): ovsdb-server,
# ovs-vswitchd, ovn-northd and ovn-controller, each test's own.
command -v ovs-vswitchd >/dev/null || [ -x /usr/sbin/ovs-vswitchd ] || services+=(openvswitch-switch)
command -v ovn-northd >/dev/null || services+=(ovn-central)
command -v ovn-controller >/dev/null || services+=(ovn-host)

if [ ${#need[@]} -gt 0 ] || [ ${#services[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${need[*]}; run as root (or install them) first" >&2
        exit 1
    fi
    echo "setup: installing ${need[*]} ${services[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ ${#need[@]} -gt 0 ]; then
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if [ ${#services[@]} -gt 0 ]; then
        # policy-rc.d: the packages' scripts must not start firewalld or Open
        # vSwitch on this machine's own network (Debian's invoke-rc.d and deb-systemd-invoke obey it).
        policy=/usr/sbin/policy-rc.d
        if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; else saved=; fi
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"
        apt-get install -y -qq --no-install-recommends "${services[@]}" >/dev/null
        if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
    fi
fi

# Static binaries: musl when rustup can add the target, else the Makefile
# falls back to glibc with +crt-static.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 \
        || echo "setup: musl target unavailable; building static glibc binaries instead"
fi
