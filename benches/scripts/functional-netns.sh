#!/bin/bash
# `cbt teleport --functional` (a package-level rebuild at the destination)
# against a block-level pull (`cbt recv --seed`) and rsync, between two
# network namespaces. Host A (namespace cbtA) holds the image and exports it
# (`cbt serve --export`, `rsync --daemon`); host B (cbtB) holds only a seed
# image and an apt mirror on its own loopback (an HTTP server inside cbtB,
# which A cannot reach). The veth between them is shaped with tbf on both
# ends, as in teleport-netns.sh.
#
#   functional-netns.sh newer-mirror MIRROR_ROOT OUT
#       Builds a mirror tree OUT/debian holding only NEWER versions of every
#       .deb found under MIRROR_ROOT: each one is unpacked (dpkg-deb -R), its
#       Version gets `+cbt1` appended (the epoch stays), exact `(= V)`
#       dependencies on bumped packages are bumped too, and it is rebuilt
#       (dpkg-deb -b, same data compression) into pool/. Then
#       dists/$SUITE/main/binary-amd64/Packages(.xz) and a Release with
#       SHA256 sums are written with apt-ftparchive. SUITE defaults to
#       bookworm (the suite in the guest's sources.list: see `cbt describe`).
#   functional-netns.sh run IMAGE MIRROR_ROOT SEED RATE [WORK]
#       RATE as tc takes it (10mbit, 100mbit). Serves MIRROR_ROOT in cbtB at
#       http://127.0.0.1:8088/debian, exports IMAGE from cbtA, and from cbtB
#       runs, with caches dropped before each:
#         functional  cbt teleport --functional A/NAME OUT --seed SEED
#                     --package-cache EMPTY --mirror URL
#         cbt-pull    cbt recv A/NAME OUT --seed SEED
#         rsync-inplace / rsync-temp
#                     cp SEED OUT; rsync -z [--inplace] --stats from an
#                     rsync daemon in cbtA (SEED is the basis)
#       and prints one JSON line per run, then a summary with the ratios and
#       the target check (bytes over the link <= the carried user data
#       compressed with zstd -3, + 5%). Bytes over the link are counted on
#       B's veth (rx + tx, IP headers included) and, for each tool, as it
#       reports them. Needs root.
#
# CBT (default: target/release/cbt) is the binary used on both ends. RUNS
# (default "functional cbt-pull rsync-inplace rsync-temp") picks the runs;
# SERVE_OPTS is added to A's `cbt serve` (e.g. "--compress zstd:3").
set -euo pipefail

CBT=${CBT:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/cbt}
SUITE=${SUITE:-bookworm}
NS_A=cbtA NS_B=cbtB IP_A=10.78.0.1 IP_B=10.78.0.2
PORT_CBT=4740 PORT_RSYNC=8730 PORT_MIRROR=8088
RUNS=${RUNS:-functional cbt-pull rsync-inplace rsync-temp}
SERVE_OPTS=${SERVE_OPTS:-}

want() { [[ " $RUNS " == *" $1 "* ]]; }

# --- newer-mirror ---------------------------------------------------------

newer_mirror() {
	local root=$1 out=$2
	local tmp
	tmp=$(mktemp -d)
	mkdir -p "$out/debian/dists/$SUITE/main/binary-amd64" "$out/debian/pool/main"
	# name<TAB>version of every package, for the exact dependencies
	find "$root" -name '*.deb' -print0 | sort -z |
		xargs -0 -r -n1 dpkg-deb -W --showformat='${Package}\t${Version}\t${Architecture}\n' \
			>"$tmp/versions"
	[ -s "$tmp/versions" ] || { echo "no .deb under $root" >&2; exit 1; }
	local n=0
	while IFS= read -r -d '' deb; do
		local pkg ver arch comp
		IFS=$'\t' read -r pkg ver arch < <(dpkg-deb -W --showformat='${Package}\t${Version}\t${Architecture}\n' "$deb")
		comp=$(ar t "$deb" | sed -n 's/^data\.tar\.\{0,1\}//p')
		case $comp in xz | gz | zst | bz2 | lzma) ;; "") comp=none ;; *) comp=xz ;; esac
		[ "$comp" = gz ] && comp=gzip
		[ "$comp" = zst ] && comp=zstd
		[ "$comp" = bz2 ] && comp=xz # dpkg-deb cannot write bzip2
		rm -rf "$tmp/x"
		dpkg-deb -R "$deb" "$tmp/x"
		python3 - "$tmp/x/DEBIAN/control" "$tmp/versions" <<'EOF'
import re, sys
control, versions = sys.argv[1], sys.argv[2]
have = {}
for line in open(versions):
    name, ver, _ = line.rstrip("\n").split("\t")
    have.setdefault(name, set()).add(ver)
rel = re.compile(r"([a-z0-9][a-z0-9+.-]+)(:[a-z0-9-]+)?(\s*)\(=\s*([^)\s]+)\s*\)")
def bump(m):
    name, arch, sp, ver = m.groups()
    if ver in have.get(name, ()):
        ver += "+cbt1"
    return f"{name}{arch or ''}{sp}(= {ver})"
out = []
for line in open(control, encoding="utf-8"):
    field = line.split(":", 1)[0]
    if field == "Version":
        line = line.rstrip("\n") + "+cbt1\n"
    elif field in ("Depends", "Pre-Depends"):
        line = rel.sub(bump, line)
    out.append(line)
open(control, "w", encoding="utf-8").writelines(out)
EOF
		local dir newver file
		newver="$ver+cbt1"
		case $pkg in lib?*) dir=${pkg:0:4} ;; *) dir=${pkg:0:1} ;; esac
		mkdir -p "$out/debian/pool/main/$dir/$pkg"
		file="$out/debian/pool/main/$dir/$pkg/${pkg}_${newver#*:}_${arch}.deb"
		dpkg-deb -Z"$comp" -b "$tmp/x" "$file" >/dev/null
		n=$((n + 1))
	done < <(find "$root" -name '*.deb' -print0 | sort -z)
	# Translations are keyed by the description's md5, which did not change.
	local i18n
	i18n=$(find "$root" -path "*/dists/$SUITE/main/i18n" -type d | head -n1)
	[ -z "$i18n" ] || cp -r "$i18n" "$out/debian/dists/$SUITE/main/"
	(
		cd "$out/debian"
		apt-ftparchive packages pool/main >"dists/$SUITE/main/binary-amd64/Packages"
		xz -9 -k -f "dists/$SUITE/main/binary-amd64/Packages"
		apt-ftparchive \
			-o APT::FTPArchive::Release::Origin=cbt-bench \
			-o APT::FTPArchive::Release::Label=cbt-bench \
			-o APT::FTPArchive::Release::Suite="$SUITE" \
			-o APT::FTPArchive::Release::Codename="$SUITE" \
			-o APT::FTPArchive::Release::Architectures=amd64 \
			-o APT::FTPArchive::Release::Components=main \
			release "dists/$SUITE" >"$tmp/Release"
		mv "$tmp/Release" "dists/$SUITE/Release"
	)
	rm -rf "$tmp"
	echo "mirror tree with $n newer packages in $out (serve $out, URL .../debian)"
}

# --- run --------------------------------------------------------------------

teardown() {
	for ns in $NS_A $NS_B; do
		ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true
	done
	sleep 0.5
	for ns in $NS_A $NS_B; do
		ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del $ns 2>/dev/null || true
	done
	if [ -n "${WORK_MNT:-}" ] && mountpoint -q "$WORK_MNT"; then umount "$WORK_MNT" || true; fi
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

wait_log() { # file pattern what
	for _ in $(seq 100); do
		grep -q "$2" "$1" 2>/dev/null && return
		sleep 0.1
	done
	echo "$3 did not start: $(cat "$1")" >&2
	exit 1
}

wait_port() { # ns ip port what
	for _ in $(seq 100); do
		ip netns exec "$1" python3 -c "import socket,sys; socket.create_connection(('$2', $3), 1)" 2>/dev/null && return
		sleep 0.1
	done
	echo "$4 did not start on $2:$3" >&2
	exit 1
}

link_bytes() { # bytes through B's end of the veth, both ways
	local rx tx
	rx=$(ip netns exec $NS_B cat /sys/class/net/vB/statistics/rx_bytes)
	tx=$(ip netns exec $NS_B cat /sys/class/net/vB/statistics/tx_bytes)
	echo $((rx + tx))
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

now() { date +%s.%N; }

run() {
	local image=$1 root=$2 seed=$3 rate=$4 work=${5:-/tmp/cbt-functional-bench}
	image=$(realpath "$image") root=$(realpath "$root") seed=$(realpath "$seed")
	local name
	name=$(basename "$image")
	rm -rf "$work"
	mkdir -p "$work"/{export,data,empty-cache,out,mnt}
	WORK_MNT=$work/mnt
	trap teardown EXIT
	ln "$image" "$work/export/$name" 2>/dev/null || cp --reflink=auto --sparse=always "$image" "$work/export/$name"
	setup "$rate"

	# B: the mirror, on B's own loopback only.
	ip netns exec $NS_B python3 -m http.server $PORT_MIRROR --bind 127.0.0.1 --directory "$root" \
		>"$work/mirror.log" 2>&1 &
	wait_port $NS_B 127.0.0.1 $PORT_MIRROR mirror
	# A: cbt daemon exporting the image, and an rsync daemon.
	ip netns exec $NS_A "$CBT" --no-cache serve --listen $IP_A:$PORT_CBT --data "$work/data" \
		--export "$work/export" $SERVE_OPTS 2>"$work/serve.log" &
	wait_log "$work/serve.log" "listening on" "cbt serve"
	cat >"$work/rsyncd.conf" <<EOF
use chroot = no
uid = root
gid = root
max connections = 4
pid file = $work/rsyncd.pid
log file = $work/rsyncd.log
[img]
    path = $work/export
    read only = yes
EOF
	ip netns exec $NS_A rsync --daemon --no-detach --config="$work/rsyncd.conf" \
		--address=$IP_A --port=$PORT_RSYNC &
	wait_port $NS_B $IP_A $PORT_RSYNC "rsync daemon"

	local results=$work/results.jsonl
	: >"$results"
	local t0 t1 l0 l1 rc same

	# 1. functional rebuild
	if want functional; then
		drop_caches
		l0=$(link_bytes) t0=$(now) rc=0
		ip netns exec $NS_B "$CBT" --no-cache --package-cache "$work/empty-cache" teleport --functional \
			$IP_A:$PORT_CBT/"$name" "$work/out/functional.qcow2" --seed "$seed" \
			--mirror http://127.0.0.1:$PORT_MIRROR/debian --progress none --json \
			>"$work/functional.json" 2>"$work/functional.err" || rc=$?
		t1=$(now) l1=$(link_bytes)
		python3 - "$work/functional.json" "$rate" "$t0" "$t1" "$l0" "$l1" "$rc" >>"$results" <<'EOF'
import json, sys
path, rate, t0, t1, l0, l1, rc = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:5]), *map(int, sys.argv[5:8])
try:
    r = json.load(open(path))
except Exception as e:
    r = {"error": f"no JSON report: {e}"}
t = r.get("transfer") or {}
ud = r.get("user_data") or {}
out = {"run": "functional", "rate": rate, "exit": rc, "seconds": round(t1 - t0, 2),
       "link_bytes": l1 - l0,
       "wire_bytes": t.get("wire_bytes_received", 0) + t.get("wire_bytes_sent", 0),
       "wire_bytes_received": t.get("wire_bytes_received"), "blocks_sent": t.get("blocks_sent"),
       "user_data_bytes": ud.get("bytes"), "phases": r.get("phases"),
       "verification": r.get("verification"),
       "packages": {k: v for k, v in (r.get("packages") or {}).items() if not isinstance(v, list)}}
print(json.dumps(out))
EOF
		tail -n1 "$results"
		rm -f "$work/out/functional.qcow2"
	fi

	# 2. block-level pull with the same seed
	if want cbt-pull; then
		drop_caches
		l0=$(link_bytes) t0=$(now) rc=0
		ip netns exec $NS_B "$CBT" --no-cache recv $IP_A:$PORT_CBT/"$name" "$work/out/pull.raw" \
			--seed "$seed" --progress none --json >"$work/pull.json" 2>"$work/pull.err" || rc=$?
		t1=$(now) l1=$(link_bytes)
		same=false
		[ $rc -ne 0 ] || ! cmp -s "$image" "$work/out/pull.raw" || same=true
		python3 - "$work/pull.json" "$rate" "$t0" "$t1" "$l0" "$l1" "$rc" "$same" >>"$results" <<'EOF'
import json, sys
path, rate, t0, t1, l0, l1, rc, same = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:5]), *map(int, sys.argv[5:8]), sys.argv[8]
try:
    r = json.load(open(path))
except Exception as e:
    r = {"error": f"no JSON report: {e}"}
print(json.dumps({"run": "cbt-pull", "rate": rate, "exit": rc, "seconds": round(t1 - t0, 2),
                  "link_bytes": l1 - l0,
                  "wire_bytes": r.get("wire_bytes_received", 0) + r.get("wire_bytes_sent", 0),
                  "wire_bytes_received": r.get("wire_bytes_received"), "blocks_sent": r.get("blocks_sent"),
                  "identical": same == "true"}))
EOF
		tail -n1 "$results"
		rm -f "$work/out/pull.raw"
	fi

	# 3. rsync against the seed as basis
	local mode
	for mode in $RUNS; do
		case $mode in rsync-inplace) mode=inplace ;; rsync-temp) mode=temp ;; *) continue ;; esac
		local out=$work/out/rsync-$mode.raw tc0 tc1
		rm -f "$out"
		tc0=$(now)
		cp --sparse=always "$seed" "$out"
		tc1=$(now)
		local opts=(-z --stats)
		[ $mode = temp ] || opts+=(--inplace)
		drop_caches
		l0=$(link_bytes) t0=$(now) rc=0
		ip netns exec $NS_B rsync "${opts[@]}" rsync://$IP_A:$PORT_RSYNC/img/"$name" "$out" \
			>"$work/rsync-$mode.log" 2>&1 || rc=$?
		t1=$(now) l1=$(link_bytes)
		same=false
		[ $rc -ne 0 ] || ! cmp -s "$image" "$out" || same=true
		python3 - "$work/rsync-$mode.log" "$rate" "$t0" "$t1" "$l0" "$l1" "$rc" "$same" "$mode" "$tc0" "$tc1" \
			"${opts[*]}" >>"$results" <<'EOF'
import json, re, sys
path, rate = sys.argv[1], sys.argv[2]
t0, t1 = map(float, sys.argv[3:5])
l0, l1, rc = map(int, sys.argv[5:8])
same, mode = sys.argv[8], sys.argv[9]
tc0, tc1 = map(float, sys.argv[10:12])
log = open(path).read()
def stat(label):
    m = re.search(label + r":\s*([\d,]+)", log)
    return int(m.group(1).replace(",", "")) if m else None
sent, recv = stat("Total bytes sent"), stat("Total bytes received")
print(json.dumps({"run": f"rsync-{mode}", "rate": rate, "exit": rc, "seconds": round(t1 - t0, 2),
                  "link_bytes": l1 - l0, "wire_bytes": (sent or 0) + (recv or 0),
                  "wire_bytes_received": recv, "literal_data": stat("Literal data"),
                  "matched_data": stat("Matched data"), "seed_copy_seconds": round(tc1 - tc0, 2),
                  "options": sys.argv[12], "identical": same == "true"}))
EOF
		tail -n1 "$results"
		rm -f "$out"
	done

	# The carried user data, compressed (see user_data_compressed).
	user_data_compressed "$image" "$work"
	summary "$work"
}

# Writes WORK/user-data.json: the user data of IMAGE as `cbt describe` lists
# it (every file but package_state: what the user-data pack carries, whose
# sizes add up to the report's user_data.bytes), tarred from IMAGE mounted
# read-only, raw and through zstd -3.
user_data_compressed() {
	local image=$1 work=$2
	"$CBT" --no-cache describe "$image" --json >"$work/describe.json"
	python3 - "$work/describe.json" "$work/user-data.list" >"$work/user-data.files" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
files = [f for f in d["user_data"]["files"] if f["kind"] != "package_state"]
with open(sys.argv[2], "wb") as f:
    for x in files:
        f.write(x["path"].lstrip("/").encode() + b"\0")
print(len(files), sum(x["size"] for x in files))
EOF
	local fs_off
	fs_off=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(next(f["offset"] for f in d["filesystems"] if f.get("root")))' "$work/describe.json")
	mount -o ro,noload,loop,offset="$fs_off" "$image" "$work/mnt"
	local raw zst
	raw=$(tar -C "$work/mnt" --null -T "$work/user-data.list" -cf - | wc -c)
	zst=$(tar -C "$work/mnt" --null -T "$work/user-data.list" -cf - | zstd -3 -T1 -c | wc -c)
	umount "$work/mnt"
	python3 -c 'import json,sys; n,b=map(int,open(sys.argv[1]).read().split()); print(json.dumps({"files": n, "file_bytes": b, "tar_bytes": int(sys.argv[2]), "zstd3_bytes": int(sys.argv[3])}))' \
		"$work/user-data.files" "$raw" "$zst" >"$work/user-data.json"
}

summary() {
	local work=$1
	python3 - "$work/results.jsonl" "$work/user-data.json" <<'EOF' | tee "$work/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ud = json.load(open(sys.argv[2]))
by = {r["run"]: r for r in rows}
print(f"{'run':<15} {'seconds':>9} {'link bytes':>14} {'tool bytes':>14} {'exit':>5}")
for r in rows:
    print(f"{r['run']:<15} {r['seconds']:>9.2f} {r['link_bytes']:>14,} {r['wire_bytes']:>14,} {r['exit']:>5}")
f = by.get("functional")
if f:
    for other in ("cbt-pull", "rsync-inplace", "rsync-temp"):
        o = by.get(other)
        if o and o["seconds"] and o["link_bytes"]:
            print(f"functional / {other}: time {100 * f['seconds'] / o['seconds']:.1f}%, "
                  f"link bytes {100 * f['link_bytes'] / o['link_bytes']:.1f}%")
    print(f"user data carried: {f.get('user_data_bytes')} bytes (report); cbt describe: {ud['files']} files, "
          f"{ud['file_bytes']:,} bytes; tar {ud['tar_bytes']:,} bytes; tar | zstd -3: {ud['zstd3_bytes']:,} bytes")
    zst = ud["zstd3_bytes"]
    limit = zst * 1.05
    for key in ("link_bytes", "wire_bytes"):
        v = f[key]
        print(f"target ({key}) {v:,} <= {limit:,.0f} (user data zstd -3 + 5%): "
              f"{'met' if v <= limit else 'missed'} ({100 * v / zst:.1f}% of the compressed user data)")
EOF
}

case ${1:-} in
newer-mirror) newer_mirror "$2" "$3" ;;
run) shift; run "$@" ;;
*) sed -n "2,/^set -e/{/^set -e/!p}" "$0"; exit 2 ;;
esac

