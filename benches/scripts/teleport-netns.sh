#!/bin/bash
# Teleport against a plain send between two network namespaces (issue 10's
# benchmark). Host A (namespace cbtA) holds the image; host B (cbtB) holds
# nothing but a mirror on its own network (an HTTP server in cbtB serving a
# pool/dists tree). The veth between them is shaped with tbf on both ends.
#
#   teleport-netns.sh mirror CACHE OUT
#       Builds a mirror tree in OUT from a package cache filled by
#       `cbt --package-cache CACHE teleport fetch IMAGE --mirror URL`
#       (its .debs and the Release/Packages files it saved under apt's
#       list names).
#   teleport-netns.sh run IMAGE MIRROR_ROOT RATE [WORK]
#       RATE as tc takes it (10mbit, 100mbit). Runs a plain `cbt send` to
#       an empty daemon, then `cbt teleport` to a daemon with an empty
#       package cache and --mirror; compares both outputs with IMAGE and
#       prints one JSON line per run and the ratios. Needs root.
#
# CBT (default: target/release/cbt) is the binary used on both ends; LINK
# (e.g. 100Mbit), when set, is passed to `cbt teleport --link` for the
# decision whether fetching pays.
set -euo pipefail

CBT=${CBT:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/cbt}
NS_A=cbtA NS_B=cbtB IP_A=10.78.0.1 IP_B=10.78.0.2

mirror() {
	local cache=$1 out=$2
	mkdir -p "$out"
	local packages=""
	for f in "$cache"/*_dists_*; do
		[ -f "$f" ] || continue
		local name rel
		name=$(basename "$f")
		# deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.xz
		rel=${name#*_}                       # debian_dists_bookworm_...
		rel=${rel//_/\/}                     # debian/dists/bookworm/...
		mkdir -p "$out/$(dirname "$rel")"
		cp "$f" "$out/$rel"
		case $rel in *Packages.xz) packages="$packages $out/$rel" ;; esac
	done
	[ -n "$packages" ] || { echo "no Packages.xz index in $cache" >&2; exit 1; }
	local index
	index=$(mktemp)
	xz -dc $packages >"$index"
	local base
	base=$(dirname "$(dirname "$(dirname "$(dirname "${packages# }")")")")
	base=${base%/dists}
	for deb in "$cache"/*.deb; do
		local n v a
		IFS=_ read -r n v a <<<"$(basename "$deb" .deb)"
		v=${v//%3a/:}
		local filename
		filename=$(awk -v n="$n" -v v="$v" -v a="$a" '
			/^Package: / { p = $2 } /^Version: / { ver = $2 } /^Architecture: / { arch = $2 }
			/^Filename: / { f = $2 }
			/^$/ { if (p == n && ver == v && arch == a) { print f; exit } p = ver = arch = f = "" }' "$index")
		[ -n "$filename" ] || { echo "warning: $deb is not in the index" >&2; continue; }
		mkdir -p "$base/$(dirname "$filename")"
		cp "$deb" "$base/$filename"
	done
	rm -f "$index"
	echo "mirror tree in $out"
}

teardown() {
	for ns in $NS_A $NS_B; do
		ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true
		ip netns del $ns 2>/dev/null || true
	done
}

setup() {
	local rate=$1
	teardown
	ip netns add $NS_A
	ip netns add $NS_B
	ip link add vA netns $NS_A type veth peer name vB netns $NS_B
	ip -n $NS_A addr add $IP_A/24 dev vA
	ip -n $NS_B addr add $IP_B/24 dev vB
	for x in "$NS_A vA" "$NS_B vB"; do
		set -- $x
		ip -n "$1" link set "$2" up
		ip -n "$1" link set lo up
		ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst 32kbit latency 400ms
	done
}

daemon() { # port dir extra...
	local port=$1 dir=$2
	shift 2
	ip netns exec $NS_B "$CBT" --no-cache serve --data "$dir/data" --listen $IP_B:"$port" "$@" \
		2>"$dir/serve.log" &
	for _ in $(seq 50); do
		grep -q "listening on" "$dir/serve.log" 2>/dev/null && return
		sleep 0.1
	done
	echo "daemon did not start: $(cat "$dir/serve.log")" >&2
	exit 1
}

run() {
	local image=$1 root=$2 rate=$3 work=${4:-/tmp/cbt-teleport-bench}
	rm -rf "$work"
	mkdir -p "$work"/{plain,tele}/data "$work"/tele/debs
	trap teardown EXIT
	setup "$rate"
	ip netns exec $NS_B python3 -m http.server 8088 --bind 127.0.0.1 --directory "$root" \
		>"$work/mirror.log" 2>&1 &
	daemon 4730 "$work/plain"
	daemon 4731 "$work/tele" --package-cache "$work/tele/debs" --mirror http://127.0.0.1:8088/debian
	sleep 0.5
	local t0 t1 t2
	t0=$(date +%s.%N)
	ip netns exec $NS_A "$CBT" --no-cache send "$image" $IP_B:4730/out.raw --json >"$work/plain.json"
	t1=$(date +%s.%N)
	ip netns exec $NS_A "$CBT" --no-cache teleport "$image" $IP_B:4731/out.raw --json \
		${LINK:+--link "$LINK"} >"$work/tele.json"
	t2=$(date +%s.%N)
	cmp "$image" "$work/plain/data/out.raw"
	cmp "$image" "$work/tele/data/out.raw"
	python3 - "$work" "$t0" "$t1" "$t2" "$rate" <<'EOF'
import json, sys
work, t0, t1, t2, rate = sys.argv[1], *map(float, sys.argv[2:5]), sys.argv[5]
plain = json.load(open(f"{work}/plain.json"))
tele = json.load(open(f"{work}/tele.json"))
wire = lambda r: r["wire_bytes_sent"] + r["wire_bytes_received"]
tp = tele["teleport"]
print(json.dumps({"rate": rate, "plain_seconds": round(t1 - t0, 2), "plain_wire_bytes": wire(plain),
                  "teleport_seconds": round(t2 - t1, 2), "teleport_wire_bytes": wire(tele),
                  "describe_seconds": tp.get("describe_seconds"),
                  "plan": {k: tp["plan"][k] for k in ("packages", "cached", "to_fetch", "fetch_bytes", "resolve_seconds", "fetch", "reason")},
                  "prepared": {k: v for k, v in (tp.get("prepared") or {}).items() if k != "failed"},
                  "finished": tp.get("finished"), "blocks_sent": tele["blocks_sent"]}, indent=1))
print(f"teleport / plain: time {100 * (t2 - t1) / (t1 - t0):.1f}%, wire bytes {100 * wire(tele) / wire(plain):.1f}%")
EOF
}

case ${1:-} in
mirror) mirror "$2" "$3" ;;
run) shift; run "$@" ;;
*) sed -n '2,20p' "$0"; exit 2 ;;
esac
