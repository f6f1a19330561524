#!/bin/sh
# benches/run.sh: each tap named, deleted and made again (a VM's new tap,
# as QEMU makes one at every start), between timed runs.
set -e
for tap in "$@"; do
    ip link del "$tap" 2>/dev/null || true
    ip tuntap add dev "$tap" mode tap
done
