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

# The bridge helper against QEMU's own qemu-bridge-helper doing the same job
# (attaching a tap it makes to an existing bridge), each run by a driver that
# makes the socket pair and receives the tap as QEMU does, alternating, each
# helper process timed from spawn to exit. /etc/qemu/bridge.conf lives in an
# overlay of /etc private to the benchmark's mount namespace.
driver=$top/target/release/bridge-helper-driver
qemu_helper=${QEMU_BRIDGE_HELPER:-/usr/lib/qemu/qemu-bridge-helper}
[ -x "$driver" ] || { echo "bench: $driver missing (cargo build --release -p kvm-net-tests --bin bridge-helper-driver)" >&2; exit 1; }
[ -x "$qemu_helper" ] || { echo "bench: $qemu_helper missing (apt-get install qemu-system-common)" >&2; exit 1; }
mkdir -p "$out/etc-upper" "$out/etc-work"
printf '[network.lan]\nmode = "bridged"\nbridge = "br0"\n' > "$out/lan.toml"
echo "bench: bridge-helper" >&2
KVM_NET_CONFIG=$out/lan.toml unshare --net --mount --propagation private -- bash -ec "
    ip link set lo up; ip link add br0 type bridge; ip link set br0 up
    mount -n -t overlay overlay -o lowerdir=/etc,upperdir=$out/etc-upper,workdir=$out/etc-work /etc
    mkdir -p /etc/qemu; echo 'allow br0' > /etc/qemu/bridge.conf
    $driver --repeat $runs --use-vnet --br=br0 $qemu_helper $bin/kvm-net-bridge-helper" > "$out/bridge-helper.txt"
# The bridge helper on a NAT network that has a VM running already.
echo "bench: bridge-helper-nat" >&2
unshare --net -- bash -ec "ip link set lo up; $driver --repeat $runs --use-vnet --hold-first --br=default $bin/kvm-net-bridge-helper" \
    > "$out/bridge-helper-nat.txt"
helper_us() { awk -v h="$2" '$1 == h { printf "%.2f", $2 / 1000 }' "$out/$1.txt"; }

# The kernel's floor for a warm start: the least program that attaches a tap
# (benches/attach-floor.c), without a C library and with one, against warm
# helpers, taking turns (attach-driver: medians of paired ratios).
floor=$out/attach-floor
floor_libc=$out/attach-floor-libc
gcc -O2 -static -nostdlib -fno-builtin -fno-stack-protector -s -o "$floor" "$top/benches/attach-floor.c"
gcc -O2 -static -s -DWITH_LIBC -o "$floor_libc" "$top/benches/attach-floor.c"
attach_driver=$top/target/release/attach-driver
echo "bench: floor" >&2
KVM_NET_FIREWALL=nftables unshare --net -- bash -ec "
    ip link set lo up; ip tuntap add dev t0 mode tap; ip tuntap add dev t1 mode tap; $bin/kvm-natup t0
    $attach_driver --repeat $runs --tap t1 -- $floor t1 br0 ';;' $floor_libc t1 br0 ';;' $bin/kvm-natup t1 ';;' $bin/kvm-ifup t1" \
    > "$out/floor.txt"
# The same with 1000 other ports on the bridge: starts, and stops that are not the last.
for n in 1 1000; do
    echo "bench: floor-ports-$n" >&2
    KVM_NET_FIREWALL=nftables unshare --net -- bash -ec "
        ip link set lo up
        (for i in \$(seq 1 $n); do echo \"tuntap add dev p\$i mode tap\"; done; echo 'tuntap add dev probe mode tap') | ip -batch -
        $bin/kvm-natup p1
        (for i in \$(seq 2 $n); do echo \"link set dev p\$i master br0\"; done) | ip -batch - 2>/dev/null || true
        $attach_driver --repeat $runs --tap probe -- $floor probe br0 ';;' $bin/kvm-natup probe
        $attach_driver --repeat $runs --prepare '$bin/kvm-natup probe' -- $floor -d probe ';;' $bin/kvm-natdown probe" \
        > "$out/floor-ports-$n.txt"
done
# floor_us GROUP LINE: the median of line LINE; floor_ratio: its paired ratio.
floor_us() { sed -n "${2}p" "$out/$1.txt" | awk '{ print $1 }'; }
floor_ratio() { sed -n "${2}p" "$out/$1.txt" | awk '{ printf "%.2fx", $2 }'; }

# System calls and nf_tables requests of one warm call (strace).
count_calls() {
    local name=$1 setup=$2 command=$3
    KVM_NET_FIREWALL=nftables unshare --net -- bash -ec "ip link set lo up; $setup; strace -f -qq -o $out/$name.strace $command >/dev/null"
    local netfilter
    netfilter=$(awk '/^[0-9]+ +socket\(AF_NETLINK.*NETLINK_NETFILTER/ { print $NF; exit }' "$out/$name.strace")
    echo "$(grep -cv '^[0-9]* *+++' "$out/$name.strace") $(grep -c "sendto($netfilter," "$out/$name.strace" 2>/dev/null || true)" > "$out/$name.calls"
}
echo "bench: system calls" >&2
warm_setup="ip tuntap add dev t0 mode tap; ip tuntap add dev t1 mode tap; $bin/kvm-natup t0; $bin/kvm-natup t1; ip link set dev t1 nomaster"
count_calls calls-natup "$warm_setup" "$bin/kvm-natup t1"
count_calls calls-natdown "$warm_setup; $bin/kvm-natup t1" "$bin/kvm-natdown t1"
count_calls calls-ifup "$warm_setup" "$bin/kvm-ifup t1"
count_calls calls-floor "$warm_setup" "$floor t1 br0"
calls() { cut -d' ' -f"$2" "$out/$1.calls"; }

measure attach "ip link add br0 type bridge; ip link set br0 up; ip tuntap add dev t0 mode tap" \
    -N --warmup 5 --runs "$runs" --prepare "ip link set dev t0 nomaster" \
    "ip link set dev t0 master br0" "$bin/kvm-ifup t0"
measure attach-classic "ip link add br0 type bridge; ip link set br0 up; ip tuntap add dev t0 mode tap" \
    --runs 3 --prepare "ip link set dev t0 nomaster" "$seeds/qemu-ifup t0"

taps64="for i in \$(seq 0 63); do ip tuntap add dev v\$i mode tap; done"
# One more burst, counting errors and masquerade rules between up and down.
count() {
    unshare --net -- bash -c "$taps64; BURST_COUNT=$out/$1.rules $top/benches/burst.sh $2 $3 64; echo \$? > $out/$1.errors"
}
# A config file of 50 NAT networks, one tap pattern each.
conf=$out/fifty.toml
for i in $(seq 0 49); do
    printf '[network.n%d]\nmode = "nat"\nbridge = "nbr%d"\nipv4 = "10.%d.0.1/24"\ntaps = ["n%d-*"]\ndhcp = { enabled = false }\n' \
        "$i" "$i" $((i + 1)) "$i"
done > "$conf"

# The firewall-dependent figures, once per backend (prefix nft- / ipt-).
for fw in nftables iptables; do
    p=${fw:0:3}-
    export KVM_NET_FIREWALL=$fw
    measure "${p}warm" "ip link add br9 type bridge; ip link set br9 up; ip tuntap add dev t0 mode tap; ip tuntap add dev t1 mode tap; $bin/kvm-natup t0" \
        -N --warmup 5 --runs "$runs" \
        --prepare "ip link set dev t1 nomaster" "ip link set dev t1 master br9" \
        --prepare "ip link set dev t0 nomaster" "$bin/kvm-natup t0"

    measure "${p}cold" "ip tuntap add dev t0 mode tap" \
        --warmup 3 --runs "$runs" \
        "ip link add br9 type bridge && ip link del br9" \
        "$bin/kvm-natup t0 && $bin/kvm-natdown t0"

    measure "${p}burst" "$taps64" --runs 5 "$top/benches/burst.sh $bin/kvm-natup $bin/kvm-natdown 64"
    count "${p}burst" "$bin/kvm-natup" "$bin/kvm-natdown"

    # Scale: N other ports on the bridge (attached with one `ip -batch`), then a
    # warm natup and a non-last natdown of one more tap.
    for n in 1 1000; do
        measure "${p}ports-$n" "
            (for i in \$(seq 1 $n); do echo \"tuntap add dev p\$i mode tap\"; done; echo 'tuntap add dev probe mode tap') | ip -batch -
            $bin/kvm-natup p1
            (for i in \$(seq 2 $n); do echo \"link set dev p\$i master br0\"; done) | ip -batch - 2>/dev/null || true" \
            -N --warmup 3 --runs "$runs" \
            --prepare "ip link set dev probe nomaster" "$bin/kvm-natup probe" \
            --prepare "$bin/kvm-natup probe" "$bin/kvm-natdown probe"
    done

    # The same file of 50 NAT networks, with one of them alive, then all 50.
    for alive in 1 50; do
        KVM_NET_CONFIG=$conf measure "${p}networks-$alive" "
            for i in \$(seq 0 $((alive - 1))); do ip tuntap add dev n\$i-0 mode tap; $bin/kvm-natup n\$i-0; done
            ip tuntap add dev n0-probe mode tap" \
            -N --warmup 3 --runs "$runs" \
            --prepare "ip link set dev n0-probe nomaster" "$bin/kvm-natup n0-probe" \
            --prepare "$bin/kvm-natup n0-probe" "$bin/kvm-natdown n0-probe"
    done
done
unset KVM_NET_FIREWALL

# A warm kvm-natup on an IPv6 network (router advertisements, its dnsmasq
# running) against one on an IPv4-only network, taking turns in one
# namespace (nftables), and the processes it starts (none: it stays one).
dual=$out/dual.toml
printf '[network.four]\nmode = "nat"\nbridge = "br4"\nipv4 = "10.4.0.1/24"\ntaps = ["f*"]\n[network.six]\nmode = "nat"\nbridge = "br6"\nipv4 = "10.6.0.1/24"\nipv6 = "fd00:66::1/64"\ntaps = ["s*"]\n' > "$dual"
echo "bench: ipv6" >&2
KVM_NET_CONFIG=$dual KVM_NET_FIREWALL=nftables unshare --net --mount --propagation private -- bash -ec "
    mkdir -p /run/kvm-net; mount -n -t tmpfs -o mode=0755 tmpfs /run/kvm-net; ip link set lo up
    ip tuntap add dev f0 mode tap; ip tuntap add dev s0 mode tap; $bin/kvm-natup f0; $bin/kvm-natup s0
    ip link set dev s0 nomaster
    strace -f -qq -e trace=clone,clone3,fork,vfork,execve -o $out/ipv6-warm.strace $bin/kvm-natup s0
    $bin/kvm-natdown f0; $bin/kvm-natdown s0"
# The pair, alternating: both networks in one namespace, each call on its own tap.
KVM_NET_CONFIG=$dual KVM_NET_FIREWALL=nftables unshare --net --mount --propagation private -- bash -ec "
    mkdir -p /run/kvm-net; mount -n -t tmpfs -o mode=0755 tmpfs /run/kvm-net; ip link set lo up
    ip tuntap add dev f0 mode tap; ip tuntap add dev s0 mode tap; ip tuntap add dev f1 mode tap; ip tuntap add dev s1 mode tap
    $bin/kvm-natup f0; $bin/kvm-natup s0
    hyperfine --style none --export-csv '$out/ipv6-vs-ipv4.csv' -N --warmup 5 --runs $runs \
        --prepare 'ip link set dev f1 nomaster' '$bin/kvm-natup f1' \
        --prepare 'ip link set dev s1 nomaster' '$bin/kvm-natup s1' >/dev/null
    $bin/kvm-natdown f1; $bin/kvm-natdown s1; $bin/kvm-natdown f0; $bin/kvm-natdown s0"
ipv6_processes=$(grep -cE 'clone|fork|execve' "$out/ipv6-warm.strace")

# A warm kvm-natup on a network with rate limits both ways (a shaper on the
# tap, an ifb for what the guest sends) against one without, each on a new
# tap as every VM start has, taking turns (attach-driver), and the
# processes it starts.
limited=$out/limited.toml
printf '[network.plain]\nmode = "nat"\nbridge = "brp"\nipv4 = "10.5.0.1/24"\ntaps = ["p*"]\ndhcp = { enabled = false }\n[network.lim]\nmode = "nat"\nbridge = "brl"\nipv4 = "10.6.0.1/24"\ntaps = ["l*"]\ndhcp = { enabled = false }\nbandwidth = { to_guest = "50mbit", from_guest = "20mbit" }\n' > "$limited"
echo "bench: limits" >&2
KVM_NET_CONFIG=$limited KVM_NET_FIREWALL=nftables unshare --net --mount --propagation private -- bash -ec "
    mkdir -p /run/kvm-net; mount -n -t tmpfs -o mode=0755 tmpfs /run/kvm-net; ip link set lo up
    for tap in p0 p1 l0 l1; do ip tuntap add dev \$tap mode tap; done
    $bin/kvm-natup p0; $bin/kvm-natup l0
    $attach_driver --repeat $runs --prepare '$top/benches/retap.sh p1 l1' -- $bin/kvm-natup p1 ';;' $bin/kvm-natup l1
    $top/benches/retap.sh l1
    strace -f -qq -e trace=clone,clone3,fork,vfork,execve -o $out/limits-warm.strace $bin/kvm-natup l1" > "$out/limits.txt"
limits_processes=$(grep -cE 'clone|fork|execve' "$out/limits-warm.strace")

# The classic scripts, for comparison.
measure warm-classic "ip tuntap add dev t0 mode tap; $seeds/qemu-natup t0 >/dev/null" \
    -N --warmup 5 --runs "$runs" --prepare "ip link set dev t0 nomaster" "$seeds/qemu-natup t0"
measure cold-classic "ip tuntap add dev t0 mode tap" --runs 20 \
    "$seeds/qemu-natup t0 >/dev/null && $seeds/qemu-natdown t0 >/dev/null"
measure burst-classic "$taps64" --runs 5 -i "$top/benches/burst.sh $seeds/qemu-natup $seeds/qemu-natdown 64"
count burst-classic "$seeds/qemu-natup" "$seeds/qemu-natdown"

ip_set=$(median attach 1) ifup=$(median attach 2) classic_ifup=$(median attach-classic 1)
classic_warm=$(median warm-classic 1) classic_cold=$(median cold-classic 1) classic_burst=$(median burst-classic 1)

row() { echo "| $1 | $2 ms | $3 ms | $(ratio "$2" "$3") | $4 |"; }
{
    echo "| measurement | kvm-net (median) | baseline (median) | ratio | target |"
    echo "|---|---|---|---|---|"
    row "attach: \`kvm-ifup\` vs one \`ip link set dev T master BR\`" "$ifup" "$ip_set" "≤ 0.7x"
    row "attach: \`kvm-ifup\` vs classic \`qemu-ifup\`" "$ifup" "$classic_ifup" ""
    row "bridge helper, attach to a bridge: \`kvm-net-bridge-helper\` vs \`qemu-bridge-helper\`" \
        "$(helper_us bridge-helper "$bin/kvm-net-bridge-helper")" "$(helper_us bridge-helper "$qemu_helper")" "≤ 1.0x"
    row "bridge helper, NAT network with a VM running, vs \`qemu-bridge-helper\` attaching" \
        "$(helper_us bridge-helper-nat "$bin/kvm-net-bridge-helper")" "$(helper_us bridge-helper "$qemu_helper")" ""
    echo "| **against the kernel's floor** (\`benches/attach-floor.c\`: 2 RTM_GETLINK in one send, 1 RTM_NEWLINK; medians of paired ratios) | | | | |"
    echo "| warm \`kvm-natup\` vs the floor without a C library | $(floor_us floor 3) µs | $(floor_us floor 1) µs | $(floor_ratio floor 3) | ≤ 1.5x |"
    echo "| \`kvm-ifup\` vs the floor without a C library | $(floor_us floor 4) µs | $(floor_us floor 1) µs | $(floor_ratio floor 4) | ≤ 1.2x |"
    echo "| warm \`kvm-natup\` vs the floor on glibc (\`gcc -static\`) | $(floor_us floor 3) µs | $(floor_us floor 2) µs | $(awk -v a="$(floor_ratio floor 3)" -v b="$(floor_ratio floor 2)" 'BEGIN { printf "%.2fx", a / b }') | ≤ 1.5x |"
    echo "| \`kvm-ifup\` vs the floor on glibc | $(floor_us floor 4) µs | $(floor_us floor 2) µs | $(awk -v a="$(floor_ratio floor 4)" -v b="$(floor_ratio floor 2)" 'BEGIN { printf "%.2fx", a / b }') | ≤ 1.2x |"
    echo "| bridge helper (attach to a bridge) vs the floor without a C library | $(helper_us bridge-helper "$bin/kvm-net-bridge-helper") ms | $(awk -v f="$(floor_us floor 1)" 'BEGIN { printf "%.2f", f / 1000 }') ms | $(awk -v a="$(helper_us bridge-helper "$bin/kvm-net-bridge-helper")" -v f="$(floor_us floor 1)" 'BEGIN { printf "%.2fx", a * 1000 / f }') | |"
    echo "| warm \`kvm-natup\` with 1000 other ports vs 1 (the floor: $(awk -v a="$(floor_us floor-ports-1000 1)" -v b="$(floor_us floor-ports-1 1)" 'BEGIN { printf "%.2fx", a / b }')) | $(floor_us floor-ports-1000 2) µs | $(floor_us floor-ports-1 2) µs | $(awk -v a="$(floor_us floor-ports-1000 2)" -v b="$(floor_us floor-ports-1 2)" 'BEGIN { printf "%.2fx", a / b }') | ≤ 1.2x |"
    echo "| non-last \`kvm-natdown\` with 1000 other ports vs 1 (the floor: $(awk -v a="$(floor_us floor-ports-1000 3)" -v b="$(floor_us floor-ports-1 3)" 'BEGIN { printf "%.2fx", a / b }')) | $(floor_us floor-ports-1000 4) µs | $(floor_us floor-ports-1 4) µs | $(awk -v a="$(floor_us floor-ports-1000 4)" -v b="$(floor_us floor-ports-1 4)" 'BEGIN { printf "%.2fx", a / b }') | ≤ 1.2x |"
    echo "| system calls / nf_tables requests: warm \`kvm-natup\` | $(calls calls-natup 1) / $(calls calls-natup 2) | floor: $(calls calls-floor 1) / 0 | | |"
    echo "| system calls / nf_tables requests: non-last \`kvm-natdown\`, \`kvm-ifup\` | $(calls calls-natdown 1) / $(calls calls-natdown 2), $(calls calls-ifup 1) / $(calls calls-ifup 2) | | | |"
    row "warm \`kvm-natup\`, an IPv6 network (advertising) vs an IPv4-only one (nftables)" "$(median ipv6-vs-ipv4 2)" "$(median ipv6-vs-ipv4 1)" "≤ 1.1x"
    echo "| processes a warm \`kvm-natup\` on an IPv6 network runs (execve, clone) | $ipv6_processes | | | 1 (itself) |"
    echo "| warm \`kvm-natup\` on a new tap, rate limits both ways vs none (medians of paired ratios) | $(floor_us limits 2) µs | $(floor_us limits 1) µs | $(floor_ratio limits 2) | ≤ 1.1x |"
    echo "| processes a warm \`kvm-natup\` with limits runs (execve, clone) | $limits_processes | | | 1 (itself) |"
    for p in nft- ipt-; do
        name=nftables
        [ "$p" = ipt- ] && name=iptables
        echo "| **$name backend** | | | | |"
        row "warm \`kvm-natup\` vs one \`ip link set dev T master BR\`" "$(median "${p}warm" 2)" "$(median "${p}warm" 1)" "≤ 1.0x"
        row "warm \`kvm-natup\` vs classic \`qemu-natup\`" "$(median "${p}warm" 2)" "$classic_warm" "≤ 0.5x"
        row "cold natup + natdown vs kernel floor (\`ip link add/del\` bridge)" "$(median "${p}cold" 2)" "$(median "${p}cold" 1)" "≤ 1.1x"
        row "cold natup + natdown vs classic \`qemu-natup\` + \`qemu-natdown\`" "$(median "${p}cold" 2)" "$classic_cold" ""
        row "64 concurrent up, then 64 down (wall) vs classic" "$(median "${p}burst" 1)" "$classic_burst" "≤ 250 ms"
        echo "| 64-burst: failed calls / masquerade rules while up | $(cat "$out/${p}burst.errors") / $(cat "$out/${p}burst.rules") | classic: $(cat "$out/burst-classic.errors") / $(cat "$out/burst-classic.rules") | | 0 / one set |"
        row "warm \`kvm-natup\` with 1000 other ports vs 1" "$(median "${p}ports-1000" 1)" "$(median "${p}ports-1" 1)" ""
        row "non-last \`kvm-natdown\` with 1000 other ports vs 1" "$(median "${p}ports-1000" 2)" "$(median "${p}ports-1" 2)" "≤ 1.5x"
        row "warm \`kvm-natup\` with 50 networks alive vs 1" "$(median "${p}networks-50" 1)" "$(median "${p}networks-1" 1)" "≤ 1.2x"
        row "non-last \`kvm-natdown\` with 50 networks alive vs 1" "$(median "${p}networks-50" 2)" "$(median "${p}networks-1" 2)" ""
        row "warm \`kvm-natup\`, file of 50 networks vs no file" "$(median "${p}networks-1" 1)" "$(median "${p}ports-1" 1)" ""
    done
    echo
    KVM_NET_BIN_DIR=$bin CONN_RATE=$top/target/release/conn-rate "$top/benches/datapath.sh"
    echo
    echo "| binary (static, stripped) | size | target |"
    echo "|---|---|---|"
    for b in kvm-ifup kvm-ifdown kvm-natup kvm-natdown kvm-net-bridge-helper kvm-net; do
        echo "| \`$b\` | $(stat -c %s "$bin/$b") bytes | ≤ 1500000 |"
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
