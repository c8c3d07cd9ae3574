#!/usr/bin/env bash
# Regenerate the capture fixtures for tests/test_capture.py from real traffic.
#
# Inside a private network namespace (loopback MTU 1280, so big answers span
# several TCP segments and UDP answers fragment), NSD serves example.test on
# port 53 while tcpdump records dig and a small pipelining TCP client on three
# link types. Other link types, VLAN tags, reordering and corruption are made by
# rewriting those real frames (make_captures.py). Needs root, nsd, tcpdump,
# dig, editcap, mergecap; nothing leaves the namespace.
#
#   sudo tests/data/captures/make_captures.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
ns="dnsgate-capgen-$$"
work="$(mktemp -d)"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

inns() { ip netns exec "$ns" "$@"; }

ip netns add "$ns"
inns ip link set lo mtu 1280 up
# No segmentation offload, or tcpdump sees one 2.8 KB super-segment on lo.
inns ip link set dev lo gso_max_size 1280 gso_max_segs 1

# --- authoritative server ---------------------------------------------------
big_txt=""
for i in $(seq 1 12); do
    big_txt+="big IN TXT \"chunk-$i $(printf 'x%.0s' $(seq 1 200))\""$'\n'
done
cat > "$work/example.test.zone" <<ZONE
\$ORIGIN example.test.
\$TTL 300
@   IN SOA ns.example.test. host.example.test. 1 3600 900 604800 300
@   IN NS  ns
ns  IN A   127.0.0.1
a   IN A   192.0.2.1
b   IN AAAA 2001:db8::b
c   IN A   192.0.2.3
d1  IN A   192.0.2.41
d2  IN A   192.0.2.42
e   IN A   192.0.2.5
$big_txt
ZONE
cat > "$work/nsd.conf" <<CONF
server:
    ip-address: 127.0.0.1
    ip-address: ::1
    port: 53
    username: ""
    chroot: ""
    zonesdir: "$work"
    zonelistfile: "$work/zone.list"
    database: ""
    pidfile: "$work/nsd.pid"
    xfrdfile: "$work/xfrd.state"
    xfrdir: "$work"
    logfile: "$work/nsd.log"
    server-count: 1
    verbosity: 1
    ipv4-edns-size: 4096
    ipv6-edns-size: 4096
remote-control:
    control-enable: no
zone:
    name: example.test
    zonefile: example.test.zone
CONF
# Background processes run via "ip netns exec" directly (it execs), so $! is
# their own pid and a signal reaches them.
ip netns exec "$ns" nsd -d -c "$work/nsd.conf" &
pids+=($!)
for _ in $(seq 1 100); do
    if inns dig +short +tries=1 +time=1 @127.0.0.1 ns.example.test A >/dev/null 2>&1 \
        && inns dig +short +tries=1 +time=1 @::1 ns.example.test A >/dev/null 2>&1; then
        ready=1; break
    fi
done
[ "${ready:-}" = 1 ] || { echo "nsd did not start" >&2; cat "$work/nsd.log" >&2; exit 1; }

# --- capture ----------------------------------------------------------------
start_tcpdump() {  # name, tcpdump args...: start, wait until it is listening
    local name="$1"; shift
    ip netns exec "$ns" tcpdump --immediate-mode -U -B 16384 -s 0 -w "$work/$name.pcap" "$@" \
        2> "$work/$name.log" &
    pids+=($!)
    for _ in $(seq 1 200); do
        grep -q "listening on" "$work/$name.log" && return 0
        sleep 0.05
    done
    echo "tcpdump $name did not start" >&2; cat "$work/$name.log" >&2; exit 1
}
start_tcpdump eth -i lo
start_tcpdump sll -i any -y LINUX_SLL
start_tcpdump sll2 -i any -y LINUX_SLL2 --time-stamp-precision nano
tcpdump_pids=("${pids[@]:1}")

# UDP over IPv4 and IPv6 (the TXT answer is ~2.6 KB: fragmented at MTU 1280).
inns dig +tries=1 @127.0.0.1 a.example.test A > /dev/null
inns dig +tries=1 @127.0.0.1 b.example.test AAAA > /dev/null
inns dig +tries=1 +ignore +bufsize=4096 @127.0.0.1 big.example.test TXT > /dev/null
inns dig +tries=1 @127.0.0.1 nx.example.test A > /dev/null
inns dig +tries=1 @::1 a.example.test A > /dev/null
inns dig +tries=1 +ignore +bufsize=4096 @::1 big.example.test TXT > /dev/null
# TCP: several queries on one connection; the TXT answer spans segments.
inns dig +tcp +keepopen @127.0.0.1 a.example.test A c.example.test A big.example.test TXT > /dev/null
inns dig +tcp @::1 c.example.test A > /dev/null
# TCP: two queries in one segment, and a query split inside its length prefix.
inns "$python" "$here/make_captures.py" tcp-client 127.0.0.1 53

# Let the last replies reach tcpdump before stopping it.
inns dig +tries=1 @127.0.0.1 ns.example.test A > /dev/null
for pid in "${tcpdump_pids[@]}"; do kill -INT "$pid"; wait "$pid" || true; done
# All three must hold the same complete traffic.
if grep -h "dropped by kernel" "$work"/*.log | grep -qv "^0 "; then
    echo "tcpdump dropped packets; run again" >&2; exit 1
fi
if [ "$(grep -h "packets captured" "$work"/*.log | sort -u | wc -l)" != 1 ]; then
    echo "captures differ in size; run again" >&2; exit 1
fi

# --- fixtures ---------------------------------------------------------------
out="$here"
cp "$work/eth.pcap" "$out/eth.pcap"
cp "$work/sll.pcap" "$out/sll.pcap"
cp "$work/sll2.pcap" "$out/sll2_nano.pcap"
editcap -F pcapng "$work/eth.pcap" "$out/eth.pcapng"
# Two interfaces with different link types in one pcapng; the SLL2 copy is
# shifted an hour later so the two copies of each TCP connection do not overlap.
editcap -t 3600 "$work/sll2.pcap" "$work/sll2_later.pcap"
mergecap -F pcapng -w "$out/eth_sll2_mixed.pcapng" "$work/eth.pcap" "$work/sll2_later.pcap"
"$python" "$here/make_captures.py" rewrite "$out/eth.pcap" "$out"
ls -l "$out"
