#!/bin/bash
# Builds target/rpm/RPMS/x86_64/kvm-net-VERSION-1.x86_64.rpm from `make install`
# into a staging tree, with the same layout as the .deb.
#   packaging/rpm/build-rpm.sh BIN_DIR VERSION
set -euo pipefail
bin_dir=$1 version=$2
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
command -v rpmbuild >/dev/null || { echo "rpm: rpmbuild is missing (Debian: apt-get install rpm)" >&2; exit 1; }
stage=$top/target/rpm/stage
rm -rf "$stage"
make --no-print-directory install DESTDIR="$stage" PREFIX=/usr LIBEXECDIR=/usr/libexec LIBDIR=/usr/lib64 BIN_DIR="$bin_dir" >/dev/null
rpmbuild -bb --quiet \
    --define "_topdir $top/target/rpm" \
    --define "version $version" \
    --define "stagedir $stage" \
    --define "_build_id_links none" \
    packaging/rpm/kvm-net.spec
rpm=$top/target/rpm/RPMS/x86_64/kvm-net-$version-1.x86_64.rpm
rpm -qlp "$rpm"
echo "$rpm"
