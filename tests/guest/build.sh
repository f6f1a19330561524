#!/bin/bash
# Builds the test guest once and caches it: a Debian cloud kernel (downloaded
# with apt-get, unpacked, never installed) and a busybox initramfs holding
# tests/guest/init and the virtio-net modules.
#   tests/guest/build.sh [OUT_DIR]     (default: target/guest)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../target/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ "$out/initrd.img" -nt "$here/init" ] \
    && [ "$out/initrd.img" -nt "$here/udhcpc.script" ] && [ "$out/initrd.img" -nt "$0" ]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -s "$out/vmlinuz" ] || [ ! -d "$out/modules" ]; then
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
    echo "guest: downloading $pkg (about 27 MB, first run only; cached in $out)"
    (cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
    dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
    cp "$work"/kernel/boot/vmlinuz-* "$out/vmlinuz.new"
    mkdir -p "$out/modules.new"
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
        found=$(find "$work/kernel/lib/modules" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
        case "$found" in
            "") ;;  # built into this kernel
            *.xz) xz -dc "$found" > "$out/modules.new/$m.ko" ;;
            *) cp "$found" "$out/modules.new/$m.ko" ;;
        esac
    done
    rm -rf "$out/modules"
    mv "$out/modules.new" "$out/modules"
    mv "$out/vmlinuz.new" "$out/vmlinuz"
fi

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || busybox=/bin/busybox
if ! file "$busybox" 2>/dev/null | grep -q 'statically linked' && ! ldd "$busybox" 2>&1 | grep -q 'not a dynamic'; then
    echo "guest: $busybox is not static; install busybox-static" >&2
    exit 1
fi
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$out"/modules/*.ko "$root/lib/modules/" 2>/dev/null || true
install -m 0755 "$here/init" "$root/init"
mkdir -p "$root/etc"
install -m 0755 "$here/udhcpc.script" "$root/etc/udhcpc.script"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initrd.img.new"
mv "$out/initrd.img.new" "$out/initrd.img"
echo "guest: kernel and initramfs ready in $out"
