#!/bin/bash
# Builds target/kvm-net_VERSION_amd64.deb with dpkg-deb from `make install`
# into a staging tree: no conffiles (no file in /etc means the classic
# defaults), the NSS module in the multiarch library directory (nsswitch.conf
# left to the administrator), maintainer scripts that undo the /etc/qemu-ifup drop-in and
# enable kvm-net.service as Debian enables a package's services.
#   packaging/debian/build-deb.sh BIN_DIR VERSION
set -euo pipefail
bin_dir=$1 version=$2
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
stage=target/deb/kvm-net
rm -rf "$stage"
make --no-print-directory install DESTDIR="$stage" PREFIX=/usr LIBEXECDIR=/usr/libexec LIBDIR=/usr/lib/$(cc -print-multiarch) SYSTEMDUNITDIR=/usr/lib/systemd/system \
    BIN_DIR="$bin_dir" >/dev/null
# Debian keeps documentation and manual pages compressed.
find "$stage/usr/share/man" -type f -exec gzip -9n {} +
gzip -9n "$stage/usr/share/doc/kvm-net/README.md"
install -m 0644 packaging/debian/copyright "$stage/usr/share/doc/kvm-net/copyright"
sed "s/@VERSION@/$version/; s/@DATE@/$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")/" \
    packaging/debian/changelog.in | gzip -9n > "$stage/usr/share/doc/kvm-net/changelog.gz"
install -d "$stage/usr/share/lintian/overrides"
install -m 0644 packaging/debian/lintian-overrides "$stage/usr/share/lintian/overrides/kvm-net"
install -d "$stage/DEBIAN"
sed "s/@VERSION@/$version/; s/@SIZE@/$(du -sk --exclude=DEBIAN "$stage" | cut -f1)/" packaging/debian/control.in \
    > "$stage/DEBIAN/control"
for script in prerm postinst postrm; do
    install -m 0755 "packaging/debian/$script" "$stage/DEBIAN/$script"
done
# The NSS module is a shared library in the multiarch directory: ldconfig's trigger.
echo "activate-noawait ldconfig" > "$stage/DEBIAN/triggers"
(cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
dpkg-deb --root-owner-group -Zxz --build "$stage" "target/kvm-net_${version}_amd64.deb" >/dev/null
echo "target/kvm-net_${version}_amd64.deb"
