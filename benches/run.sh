#!/bin/bash
# make bench: whole-process timings (hyperfine) of kvm-net's helpers against
# the classic scripts and the kernel's own floor, every group in a throwaway
# network namespace of its own. Prints a table and rewrites the numbers in
# docs/performance.md. Ratios compare medians measured in the same run.
#   benches/run.sh            (KVM_NET_BIN_DIR and SEED_DIR override the paths)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${KVM_NET_BIN_DIR:?set KVM_NET_BIN_DIR to the built helpers}
seeds=${SEED_DIR:-$top/../shared/reference/seed-scripts}
out=$top/target/bench
rm -rf "$out"
mkdir -p "$out"
[ -x "$seeds/qemu-natup" ] || { echo "bench: classic scripts not found in $seeds (set SEED_DIR)" >&2; exit 1; }
runs=${BENCH_RUNS:-60}

# hyperfine in a fresh network namespace: NAME SETUP HYPERFINE-ARGS...
measure() {
    local name=$1 setup=$2
    shift 2
    echo "bench: $name" >&2
    unshare --net -- bash -ec "ip link set lo up; $setup; hyperfine --style none --export-csv '$out/$name.csv' \"\$@\" >/dev/null" \
        bench "$@"
}

# Median in milliseconds of row ROW (1-based) of a hyperfine CSV.
median() { awk -F, -v row="$2" 'NR == row + 1 { printf "%.2f", $4 * 1000 }' "$out/$1.csv"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

measure attach "ip link add br0 type bridge; ip link set br0 up; ip tuntap add dev t0 mode tap" \
    -N --warmup 5 --runs "$runs" --prepare "ip link set dev t0 nomaster" \
    "ip link set dev t0 master br0" "$bin/kvm-ifup t0"
measure attach-classic "ip link add br0 type bridge; ip link set br0 up; ip tuntap add dev t0 mode tap" \
    --runs 3 --prepare "ip link set dev t0 nomaster" "$seeds/qemu-ifup t0"

measure warm "ip tuntap add dev t0 mode tap; $bin/kvm-natup t0" \
    -N --warmup 5 --runs "$runs" --prepare "ip link set dev t0 nomaster" "$bin/kvm-natup t0"
measure warm-classic "ip tuntap add dev t0 mode tap; $seeds/qemu-natup t0 >/dev/null" \
    -N --warmup 5 --runs "$runs" --prepare "ip link set dev t0 nomaster" "$seeds/qemu-natup t0"

measure cold "ip tuntap add dev t0 mode tap" \
    --warmup 3 --runs "$runs" \
    "ip link add br9 type bridge && ip link del br9" \
    "$bin/kvm-natup t0 && $bin/kvm-natdown t0" \
    "$seeds/qemu-natup t0 >/dev/null && $seeds/qemu-natdown t0 >/dev/null"

taps64="for i in \$(seq 0 63); do ip tuntap add dev v\$i mode tap; done"
measure burst "$taps64" --runs 5 "$top/benches/burst.sh $bin/kvm-natup $bin/kvm-natdown 64"
measure burst-classic "$taps64" --runs 5 -i "$top/benches/burst.sh $seeds/qemu-natup $seeds/qemu-natdown 64"
# One more of each, counting errors and masquerade rules between up and down.
count() {
    unshare --net -- bash -c "$taps64; BURST_COUNT=$out/$1.rules $top/benches/burst.sh $2 $3 64; echo \$? > $out/$1.errors"
}
count burst "$bin/kvm-natup" "$bin/kvm-natdown"
count burst-classic "$seeds/qemu-natup" "$seeds/qemu-natdown"

# Scale: N other ports on the bridge (attached with one `ip -batch`), then a
# warm natup and a non-last natdown of one more tap.
for n in 1 100 1000; do
    measure "ports-$n" "
        (for i in \$(seq 1 $n); do echo \"tuntap add dev p\$i mode tap\"; done; echo 'tuntap add dev probe mode tap') | ip -batch -
        $bin/kvm-natup p1
        (for i in \$(seq 2 $n); do echo \"link set dev p\$i master br0\"; done) | ip -batch - 2>/dev/null || true" \
        -N --warmup 3 --runs "$runs" \
        --prepare "ip link set dev probe nomaster" "$bin/kvm-natup probe" \
        --prepare "$bin/kvm-natup probe" "$bin/kvm-natdown probe"
done

# 50 networks alive (a config file of 50 NAT networks, one VM each).
conf=$out/fifty.toml
for i in $(seq 0 49); do
    printf '[network.n%d]\nmode = "nat"\nbridge = "nbr%d"\nipv4 = "10.%d.0.1/24"\ntaps = ["n%d-*"]\ndhcp = { enabled = false }\n' \
        "$i" "$i" $((i + 1)) "$i"
done > "$conf"
KVM_NET_CONFIG=$conf measure networks-50 "
    for i in \$(seq 0 49); do ip tuntap add dev n\$i-0 mode tap; $bin/kvm-natup n\$i-0; done
    ip tuntap add dev n0-probe mode tap" \
    -N --warmup 3 --runs "$runs" \
    --prepare "ip link set dev n0-probe nomaster" "$bin/kvm-natup n0-probe" \
    --prepare "$bin/kvm-natup n0-probe" "$bin/kvm-natdown n0-probe"

ip_set=$(median attach 1) ifup=$(median attach 2) classic_ifup=$(median attach-classic 1)
warm=$(median warm 1) classic_warm=$(median warm-classic 1)
floor=$(median cold 1) cold=$(median cold 2) classic_cold=$(median cold 3)
burst=$(median burst 1) classic_burst=$(median burst-classic 1)
burst_rules=$(cat "$out/burst.rules") burst_errors=$(cat "$out/burst.errors")
classic_rules=$(cat "$out/burst-classic.rules") classic_errors=$(cat "$out/burst-classic.errors")

{
    echo "| measurement | kvm-net (median) | baseline (median) | ratio | target |"
    echo "|---|---|---|---|---|"
    echo "| attach: \`kvm-ifup\` vs one \`ip link set dev T master BR\` | $ifup ms | $ip_set ms | $(ratio "$ifup" "$ip_set") | ≤ 0.7x |"
    echo "| attach: \`kvm-ifup\` vs classic \`qemu-ifup\` | $ifup ms | $classic_ifup ms | $(ratio "$ifup" "$classic_ifup") | |"
    echo "| warm NAT start: \`kvm-natup\` vs classic \`qemu-natup\` | $warm ms | $classic_warm ms | $(ratio "$warm" "$classic_warm") | ≤ 0.5x |"
    echo "| cold NAT cycle vs kernel floor (\`ip link add/del\` bridge) | $cold ms | $floor ms | $(ratio "$cold" "$floor") | ≤ 1.3x |"
    echo "| cold NAT cycle vs classic \`qemu-natup\` + \`qemu-natdown\` | $cold ms | $classic_cold ms | $(ratio "$cold" "$classic_cold") | |"
    echo "| 64 concurrent up, then 64 down (wall) vs classic | $burst ms | $classic_burst ms | $(ratio "$burst" "$classic_burst") | < 1000 ms |"
    echo "| 64-burst: failed calls / masquerade rules while up | $burst_errors / $burst_rules (one set: 3) | $classic_errors / $classic_rules (one set: 1) | | 0 / one set |"
    for n in 1 100 1000; do
        echo "| warm \`kvm-natup\` with $n other port(s) vs 1 | $(median "ports-$n" 1) ms | $(median ports-1 1) ms | $(ratio "$(median "ports-$n" 1)" "$(median ports-1 1)") | ≤ 2x at 1000 |"
        echo "| non-last \`kvm-natdown\` with $n other port(s) vs 1 | $(median "ports-$n" 2) ms | $(median ports-1 2) ms | $(ratio "$(median "ports-$n" 2)" "$(median ports-1 2)") | ≤ 2x at 1000 |"
    done
    echo "| warm \`kvm-natup\` with 50 networks alive vs 1 | $(median networks-50 1) ms | $(median ports-1 1) ms | $(ratio "$(median networks-50 1)" "$(median ports-1 1)") | |"
    echo "| non-last \`kvm-natdown\` with 50 networks alive vs 1 | $(median networks-50 2) ms | $(median ports-1 2) ms | $(ratio "$(median networks-50 2)" "$(median ports-1 2)") | |"
    echo
    echo "| binary | size |"
    echo "|---|---|"
    for b in kvm-ifup kvm-ifdown kvm-natup kvm-natdown kvm-net; do
        echo "| \`$b\` | $(stat -c %s "$bin/$b") bytes |"
    done
    echo
    echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(uname -r), $(iptables -V), hyperfine $(hyperfine --version | cut -d' ' -f2)."
} > "$out/table.md"
cat "$out/table.md"

doc=$top/docs/performance.md
if [ -f "$doc" ] && grep -q '<!-- bench:begin -->' "$doc"; then
    awk -v table="$out/table.md" '
        /<!-- bench:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
        /<!-- bench:end -->/ { skip = 0 }
        !skip { print }' "$doc" > "$doc.new"
    mv "$doc.new" "$doc"
    echo "bench: numbers written to docs/performance.md" >&2
fi
