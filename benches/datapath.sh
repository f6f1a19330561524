#!/bin/bash
# make bench, the data path: traffic from a guest through a NAT network to an
# upstream host, through kvm-net (each backend, with 1 and with 100 networks
# alive) and through the same topology made by hand with one masquerade
# rule (the kernel's floor), taking turns, each in namespaces of its own:
#   guest (10.99.0.10) -- vm-0 | bridge 10.99.0.1, host | up0 -- upstream (203.0.113.2)
# Figures: iperf3 TCP throughput, iperf3 UDP 64-byte packets received per
# second, new TCP connections per second (conn-rate). Then IPv6 against IPv4
# through one kvm-net network (NAT66 against NAT44), taking turns. Prints a
# markdown table of medians of paired ratios (kvm-net / floor) to stdout.
#   benches/datapath.sh    (KVM_NET_BIN_DIR: the helpers; CONN_RATE: the client)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${KVM_NET_BIN_DIR:?set KVM_NET_BIN_DIR to the built helpers}
conn_rate=${CONN_RATE:-$top/target/release/conn-rate}
rounds=${DATAPATH_ROUNDS:-3}
seconds=${DATAPATH_SECONDS:-2}
out=$top/target/bench/datapath
rm -rf "$out"
mkdir -p "$out"
[ -x "$conn_rate" ] || { echo "datapath: $conn_rate missing (cargo build --release -p kvm-net-tests --bin conn-rate)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "datapath: iperf3 missing (apt-get install iperf3)" >&2; exit 1; }

prefix=kvmbench$$
namespaces=()
cleanup() {
    for ns in "${namespaces[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}
trap cleanup EXIT

# topology NAME: namespaces NAME-g, NAME-h, NAME-u, the guest's veth end vm-0
# in NAME-h (not attached), upstream reachable from the host, iperf3 and
# conn-rate serving upstream.
topology() {
    local name=$1
    for part in g h u; do ip netns add "$name-$part"; namespaces+=("$name-$part"); done
    ip -n "$name-h" link set lo up
    ip -n "$name-h" link add vm-0 type veth peer name eth0 netns "$name-g"
    ip -n "$name-h" link add up0 type veth peer name wan0 netns "$name-u"
    ip -n "$name-h" addr add 203.0.113.1/24 dev up0
    ip -n "$name-h" addr add 2001:db8:1::1/64 dev up0 nodad
    ip -n "$name-h" link set up0 up
    ip -n "$name-g" link set lo up
    ip -n "$name-g" addr add 10.99.0.10/24 dev eth0
    ip -n "$name-g" addr add fd00:99::10/64 dev eth0 nodad
    ip -n "$name-g" link set eth0 up
    ip -n "$name-g" route add default via 10.99.0.1
    ip -n "$name-g" -6 route add default via fd00:99::1
    ip -n "$name-u" link set lo up
    ip -n "$name-u" addr add 203.0.113.2/24 dev wan0
    ip -n "$name-u" addr add 2001:db8:1::2/64 dev wan0 nodad
    ip -n "$name-u" link set wan0 up
    ip netns exec "$name-u" iperf3 -s -D
    # In a subshell of its own: its death at the end is not this shell's news.
    (ip netns exec "$name-u" "$conn_rate" --serve 203.0.113.2:7000 >/dev/null 2>&1 &)
    (ip netns exec "$name-u" "$conn_rate" --serve '[2001:db8:1::2]:7000' >/dev/null 2>&1 &)
}

# The floor: a bridge, its address, forwarding and one masquerade rule.
floor() {
    local name=$1
    topology "$name"
    ip -n "$name-h" link add brf type bridge
    ip -n "$name-h" addr add 10.99.0.1/24 dev brf
    ip -n "$name-h" link set brf up
    ip -n "$name-h" link set vm-0 master brf up
    ip netns exec "$name-h" sysctl -q -w net.ipv4.ip_forward=1
    ip netns exec "$name-h" nft -f - <<'EOF'
table ip floor {
    chain postrouting { type nat hook postrouting priority srcnat; ip saddr 10.99.0.0/24 oifname "up0" masquerade; }
}
EOF
}

# kvm-net: network bench (vm-0) and OTHERS more networks alive, each with a tap.
kvmnet() {
    local name=$1 backend=$2 others=$3 config=$out/$1.toml
    topology "$name"
    printf '[network.bench]\nmode = "nat"\nbridge = "brbench"\nipv4 = "10.99.0.1/24"\nipv6 = "fd00:99::1/64"\nipv6_autoconfig = "off"\ntaps = ["vm-*"]\ndhcp = { enabled = false }\n' > "$config"
    for i in $(seq 1 "$others"); do
        printf '[network.o%d]\nmode = "nat"\nbridge = "bro%d"\nipv4 = "10.%d.%d.1/24"\ntaps = ["o%d-*"]\ndhcp = { enabled = false }\n' \
            "$i" "$i" $((100 + i / 200)) $((i % 200)) "$i" >> "$config"
    done
    # The measured network first: iptables puts later networks' jumps ahead
    # of it, its worst place.
    ip netns exec "$name-h" env KVM_NET_CONFIG="$config" KVM_NET_FIREWALL="$backend" bash -ec "
        $bin/kvm-natup vm-0
        for i in \$(seq 1 $others); do ip tuntap add dev o\$i-0 mode tap; $bin/kvm-natup o\$i-0; done"
}

# The same network with everything a shared host turns on: guest_spoofing
# = "deny" (the guest takes its fixed address by DHCP, which binds it),
# isolate_guests and a port forward.
hardened() {
    local name=$1 config=$out/$1.toml
    topology "$name"
    printf '[network.bench]\nmode = "nat"\nbridge = "brbench"\nipv4 = "10.99.0.1/24"\ntaps = ["vm-*"]\nguest_spoofing = "deny"\nisolate_guests = true\n[network.bench.dhcp]\nhosts = [{ mac = "52:54:00:99:00:10", ip = "10.99.0.10", name = "bench" }]\n[[network.bench.forwards]]\nhost_port = 2222\nguest = "bench"\nguest_port = 22\n' > "$config"
    ip -n "$name-g" link set eth0 down
    ip -n "$name-g" link set eth0 address 52:54:00:99:00:10
    ip -n "$name-g" link set eth0 up
    ip -n "$name-g" route replace default via 10.99.0.1
    ip netns exec "$name-h" env KVM_NET_CONFIG="$config" KVM_NET_FIREWALL=nftables "$bin/kvm-natup" vm-0
    printf '#!/bin/sh\nexit 0\n' > "$out/udhcpc.sh"
    chmod 0755 "$out/udhcpc.sh"
    ip netns exec "$name-g" busybox udhcpc -i eth0 -n -q -f -t 5 -T 1 -s "$out/udhcpc.sh" >/dev/null 2>&1
}

# figure NAME METRIC [FAMILY]: one measurement from NAME-g to NAME-u, over
# IPv4 (the default) or IPv6 (6).
figure() {
    local name=$1 metric=$2 upstream=203.0.113.2 at=203.0.113.2:7000
    if [ "${3:-4}" = 6 ]; then upstream=2001:db8:1::2 at='[2001:db8:1::2]:7000'; fi
    case $metric in
        tcp) ip netns exec "$name-g" iperf3 -c "$upstream" -t "$seconds" -J \
                 | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' ;;
        udp64) ip netns exec "$name-g" iperf3 -c "$upstream" -u -l 64 -b 0 -t "$seconds" -J \
                 | python3 -c 'import json,sys; s=json.load(sys.stdin)["end"]["sum"]; print((s["packets"]-s["lost_packets"])/s["seconds"])' ;;
        conn) ip netns exec "$name-g" "$conn_rate" "$at" "$seconds" ;;
    esac
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

floor f
metrics="tcp udp64 conn"
echo "| data path (median of paired ratios, kvm-net / floor) | TCP throughput | UDP 64-byte packets/s | new connections/s | target |"
echo "|---|---|---|---|---|"
for backend in nftables iptables; do
    for alive in 1 100; do
        name=k-${backend:0:3}-$alive
        echo "datapath: $backend, $alive networks" >&2
        kvmnet "$name" "$backend" $((alive - 1))
        row="| $backend, $alive network$([ "$alive" = 1 ] || echo s) alive"
        for metric in $metrics; do
            : > "$out/$name.$metric"
            for _ in $(seq 1 "$rounds"); do
                base=$(figure f "$metric")
                mine=$(figure "$name" "$metric")
                echo "$mine $base" >> "$out/$name.$metric.raw"
                awk -v a="$mine" -v b="$base" 'BEGIN { printf "%.4f\n", a / b }' >> "$out/$name.$metric"
            done
            row="$row | $(median < "$out/$name.$metric" | awk '{ printf "%.2fx", $1 }')"
        done
        echo "$row | ≥ 0.9x |"
        for part in g h u; do
            ip netns pids "$name-$part" | xargs -r kill -9 2>/dev/null || true
            ip netns del "$name-$part"
        done
    done
done

# IPv6 against IPv4 through the same kvm-net network (nftables), taking turns.
name=k-six
echo "datapath: IPv6 against IPv4" >&2
kvmnet "$name" nftables 0
row="| IPv6 (NAT66) / IPv4 (NAT44), the same kvm-net network (nftables)"
for metric in $metrics; do
    : > "$out/$name.$metric"
    for _ in $(seq 1 "$rounds"); do
        four=$(figure "$name" "$metric")
        six=$(figure "$name" "$metric" 6)
        awk -v a="$six" -v b="$four" 'BEGIN { printf "%.4f\n", a / b }' >> "$out/$name.$metric"
    done
    row="$row | $(median < "$out/$name.$metric" | awk '{ printf "%.2fx", $1 }')"
done
echo "$row | ≥ 0.9x |"

# deny, isolate_guests and a forward against the same network with defaults
# and against the floor (nftables), taking turns.
echo "datapath: hardened" >&2
hardened k-hard
kvmnet k-plain nftables 0
for baseline in f k-plain; do
    what="the floor"
    [ "$baseline" = k-plain ] && what="defaults"
    row="| guest_spoofing = deny, isolate_guests, a forward / $what (nftables)"
    for metric in $metrics; do
        : > "$out/k-hard-$baseline.$metric"
        for _ in $(seq 1 "$rounds"); do
            base=$(figure "$baseline" "$metric")
            mine=$(figure k-hard "$metric")
            awk -v a="$mine" -v b="$base" 'BEGIN { printf "%.4f\n", a / b }' >> "$out/k-hard-$baseline.$metric"
        done
        row="$row | $(median < "$out/k-hard-$baseline.$metric" | awk '{ printf "%.2fx", $1 }')"
    done
    echo "$row | ≥ 0.9x |"
done
