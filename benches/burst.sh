#!/bin/bash
# One burst, for benches/run.sh: UP concurrently on taps v0..v(N-1), then DOWN
# concurrently. Fails if any call failed. Runs inside a throwaway namespace.
#   burst.sh UP DOWN N
set -u
up=$1 down=$2 n=$3
pids=()
for i in $(seq 0 $((n - 1))); do "$up" "v$i" >/dev/null 2>&1 & pids+=($!); done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
if [ -n "${BURST_COUNT:-}" ]; then
    # Between up and down: how many masquerade rules exist, in iptables and
    # in kvm-net's nftables table (one rule set = 3 for kvm-net, 1 for the
    # classic script).
    { iptables -t nat -S; nft list table ip kvm_net 2>/dev/null; } | grep -c -i -- 'masquerade' > "$BURST_COUNT"
fi
pids=()
for i in $(seq 0 $((n - 1))); do "$down" "v$i" >/dev/null 2>&1 & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
exit "$failed"
