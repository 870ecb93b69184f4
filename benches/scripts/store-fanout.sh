#!/bin/bash
# One image to 8 destinations through the block store (S3, served by moto)
# against 8 plain `cbt send`s, between network namespaces (the block store's
# benchmark; results in docs/BENCHMARKS.md, "Block store fan-out").
#
#   store-fanout.sh run [SOURCE] [WORK]
#       SOURCE defaults to $DATA/bookworm-user.raw; WORK to
#       /tmp/cbt-store-fanout. Needs root, moto_server, curl, python3 with
#       boto3 (installed with moto) and zstandard.
#
# Namespaces: cbtSrc (the source, holding SOURCE), cbtStore (moto_server:
# the S3 store) and cbtDst (the destinations, one after the other), joined
# by three veth pairs, each shaped with `tc ... tbf rate RATE` on both ends
# (no added delay), as in teleport-netns.sh:
#   cbtSrc 10.79.1.1 <-> 10.79.1.2 cbtStore   the source's link to the store
#   cbtDst 10.79.2.1 <-> 10.79.2.2 cbtStore   a destination's link to the store
#   cbtSrc 10.79.3.1 <-> 10.79.3.2 cbtDst     the source's link to a destination
# Every destination has its own link to the store; the pulls are run one
# after the other through the same shaped link, so the longest pull is the
# fan-out time when all destinations pull at once on their own links.
#
# With caches dropped before each run (sync; echo 3 > drop_caches), it runs:
#   push      cbt store push SOURCE s3://fanout/store/user, twice (the second
#             must upload no block)
#   pull D    cbt recv s3://fanout/store/user OUT --seed ... for each of the
#             8 seed sets in DESTS (cmp OUT SOURCE)
#   send D    cbt send SOURCE to a `cbt serve` in cbtDst restarted for each
#             destination with that seed set and an empty --data (cmp)
# and afterwards, untimed:
#   diag D    the same pulls again on the store's loopback (no shaping)
#             through a logging HTTP proxy, to see which byte ranges of
#             which packs a pull fetches
#   analysis  the manifest decoded; every image's 4 KiB blocks hashed, the
#             source's distinct non-zero blocks compressed one by one with
#             python's zstandard at level 3 (what a pack stores); for each
#             destination the blocks no seed holds and their stored size
# and prints a summary with the target checks (WORK/summary.txt).
#
# Every cbt command runs with --no-cache (no digest cache, no pack-index
# cache) and XDG_CACHE_HOME inside WORK. CBT (default target/release/cbt),
# DATA (default target/bench-data/debian), RATE (default 100mbit) and DIAG
# (default 1; 0 skips the diagnostic pulls) can be set. On exit the
# namespaces and every process started in them are removed, and so are the
# outputs and scratch files; WORK keeps only the JSON reports, logs and
# summary.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CBT=${CBT:-$ROOT/target/release/cbt}
DATA=${DATA:-$ROOT/target/bench-data/debian}
RATE=${RATE:-100mbit}
DIAG=${DIAG:-1}
NS_SRC=cbtSrc NS_S=cbtStore NS_D=cbtDst
IP_SRC_S=10.79.1.1 IP_S_SRC=10.79.1.2
IP_D_S=10.79.2.1 IP_S_D=10.79.2.2
IP_SRC_D=10.79.3.1 IP_D_SRC=10.79.3.2
PORT_S3=5000 PORT_PROXY=5001 PORT_CBT=4750
BUCKET=fanout STORE=s3://fanout/store IMAGE_URL=s3://fanout/store/user

# label:seed images (comma-separated, in $DATA); empty: no seed image
DESTS=(
	none:
	min:bookworm-min.raw
	web:bookworm-web.raw
	data:bookworm-data.raw
	web-inplace:bookworm-web-inplace.raw
	trixie:trixie-min.raw
	min+trixie:bookworm-min.raw,trixie-min.raw
	web+data:bookworm-web.raw,bookworm-data.raw
)

export AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=y AWS_REGION=us-east-1

WORK=""

teardown_ns() {
	for ns in $NS_SRC $NS_S $NS_D; do
		ip netns pids $ns 2>/dev/null | xargs -r kill 2>/dev/null || true
	done
	sleep 0.5
	for ns in $NS_SRC $NS_S $NS_D; do
		ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del $ns 2>/dev/null || true
	done
}

teardown() {
	teardown_ns
	if [ -n "$WORK" ] && [ -d "$WORK" ]; then
		rm -rf "$WORK"/out "$WORK"/serve-data "$WORK"/empty "$WORK"/xdg "$WORK"/user.cbtm \
			"$WORK"/proxy.py "$WORK"/analysis.py
	fi
}

veth() { # ns1 dev1 ip1 ns2 dev2 ip2
	ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
	ip -n "$1" addr add "$3"/24 dev "$2"
	ip -n "$4" addr add "$6"/24 dev "$5"
	local x
	for x in "$1 $2" "$4 $5"; do
		set -- $x
		ip -n "$1" link set "$2" up
		ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 32kbit latency 400ms
	done
}

setup() {
	local ns
	for ns in $NS_SRC $NS_S $NS_D; do
		ip netns add $ns
		ip -n $ns link set lo up
	done
	veth $NS_SRC vSrcS $IP_SRC_S $NS_S vSSrc $IP_S_SRC
	veth $NS_D vDstS $IP_D_S $NS_S vSDst $IP_S_D
	veth $NS_SRC vSrcD $IP_SRC_D $NS_D vDSrc $IP_D_SRC
}

wait_log() { # file pattern what
	for _ in $(seq 150); do
		grep -q "$2" "$1" 2>/dev/null && return
		sleep 0.1
	done
	echo "$3 did not start: $(cat "$1")" >&2
	exit 1
}

wait_port() { # ns ip port what
	for _ in $(seq 150); do
		ip netns exec "$1" python3 -c "import socket; socket.create_connection(('$2', $3), 1)" 2>/dev/null && return
		sleep 0.1
	done
	echo "$4 did not start on $2:$3" >&2
	exit 1
}

link_bytes() { # ns dev: bytes through that end of the veth, both ways
	local rx tx
	rx=$(ip netns exec "$1" cat /sys/class/net/"$2"/statistics/rx_bytes)
	tx=$(ip netns exec "$1" cat /sys/class/net/"$2"/statistics/tx_bytes)
	echo $((rx + tx))
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

now() { date +%s.%N; }

seed_args() { # comma-separated images -> --seed args (an empty directory for none)
	local list=$1 img
	if [ -z "$list" ]; then
		echo "--seed $WORK/empty"
		return
	fi
	for img in ${list//,/ }; do
		printf -- '--seed %s ' "$DATA/$img"
	done
}

# record NAME KIND REPORT T0 T1 L0 L1 RC SAME SEEDS: one JSON line into results.jsonl
record() {
	python3 - "$@" >>"$WORK/results.jsonl" <<'EOF'
import json, sys
name, kind, path = sys.argv[1:4]
t0, t1 = map(float, sys.argv[4:6])
l0, l1, rc = map(int, sys.argv[6:9])
same, seeds = sys.argv[9], sys.argv[10]
# cbt recv --json from a store prints "seconds" twice (the engine's, then the
# whole command's); keep both.
seconds = []
def hook(pairs):
    d = {}
    for k, v in pairs:
        if k == "seconds":
            seconds.append(v)
        d[k] = v
    return d
try:
    r = json.load(open(path), object_pairs_hook=hook)
except Exception as e:
    r = {"error": f"no JSON report: {e}"}
out = {"name": name, "kind": kind, "seeds": seeds, "exit": rc, "seconds": round(t1 - t0, 2),
       "link_bytes": l1 - l0, "identical": same == "true", "report": r}
if len(seconds) > 1:
    out["report_seconds_keys"] = seconds
print(json.dumps(out))
EOF
	tail -n1 "$WORK/results.jsonl" | cut -c1-300
}

push() { # label
	local label=$1 t0 t1 l0 l1 rc=0
	drop_caches
	l0=$(link_bytes $NS_SRC vSrcS) t0=$(now)
	ip netns exec $NS_SRC "$CBT" --no-cache store push "$SOURCE" $IMAGE_URL \
		--endpoint http://$IP_S_SRC:$PORT_S3 --json >"$WORK/$label.json" 2>"$WORK/$label.err" || rc=$?
	t1=$(now) l1=$(link_bytes $NS_SRC vSrcS)
	record "$label" push "$WORK/$label.json" "$t0" "$t1" "$l0" "$l1" "$rc" true ""
	[ $rc -eq 0 ] || { cat "$WORK/$label.err" >&2; exit 1; }
}

pull() { # label seeds
	local label=$1 seeds=$2 out=$WORK/out/pull.raw t0 t1 l0 l1 rc=0 same=false
	rm -f "$out"
	drop_caches
	l0=$(link_bytes $NS_D vDstS) t0=$(now)
	# shellcheck disable=SC2046
	ip netns exec $NS_D "$CBT" --no-cache recv $IMAGE_URL "$out" $(seed_args "$seeds") \
		--endpoint http://$IP_S_D:$PORT_S3 --progress none --json \
		>"$WORK/pull-$label.json" 2>"$WORK/pull-$label.err" || rc=$?
	t1=$(now) l1=$(link_bytes $NS_D vDstS)
	[ $rc -ne 0 ] || ! cmp -s "$SOURCE" "$out" || same=true
	record "$label" pull "$WORK/pull-$label.json" "$t0" "$t1" "$l0" "$l1" "$rc" "$same" "$seeds"
	rm -f "$out"
}

send() { # label seeds
	local label=$1 seeds=$2 data=$WORK/serve-data t0 t1 l0 l1 rc=0 same=false pid
	rm -rf "$data"
	mkdir -p "$data"
	drop_caches
	# shellcheck disable=SC2046
	ip netns exec $NS_D "$CBT" --no-cache serve --listen $IP_D_SRC:$PORT_CBT --data "$data" \
		$(seed_args "$seeds") 2>"$WORK/serve-$label.log" &
	pid=$!
	wait_log "$WORK/serve-$label.log" "listening on" "cbt serve"
	l0=$(link_bytes $NS_SRC vSrcD) t0=$(now)
	ip netns exec $NS_SRC "$CBT" --no-cache send "$SOURCE" $IP_D_SRC:$PORT_CBT/out.raw \
		--progress none --json >"$WORK/send-$label.json" 2>"$WORK/send-$label.err" || rc=$?
	t1=$(now) l1=$(link_bytes $NS_SRC vSrcD)
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	[ $rc -ne 0 ] || ! cmp -s "$SOURCE" "$data/out.raw" || same=true
	record "$label" send "$WORK/send-$label.json" "$t0" "$t1" "$l0" "$l1" "$rc" "$same" "$seeds"
	rm -rf "$data"
}

# A logging reverse proxy: one line per request (method, path, Range, status,
# body bytes) into its log.
write_proxy() {
	cat >"$WORK/proxy.py" <<'EOF'
import http.client, http.server, socketserver, sys, threading
up_host, up_port, port, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), open(sys.argv[4], "a")
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        c = http.client.HTTPConnection(up_host, up_port)
        c.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        r = c.getresponse()
        data = r.read()
        with lock:
            log.write(f"{self.command} {self.path} {self.headers.get('Range')} {r.status} {len(data)}\n")
            log.flush()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
S(("127.0.0.1", port), H).serve_forever()
EOF
}

diag_pull() { # label seeds
	local label=$1 seeds=$2 out=$WORK/out/diag.raw pid rc=0
	rm -f "$out" "$WORK/ranges-$label.log"
	ip netns exec $NS_S python3 "$WORK/proxy.py" 127.0.0.1 $PORT_S3 $PORT_PROXY "$WORK/ranges-$label.log" \
		2>"$WORK/proxy.err" &
	pid=$!
	wait_port $NS_S 127.0.0.1 $PORT_PROXY proxy
	# shellcheck disable=SC2046
	ip netns exec $NS_S "$CBT" --no-cache recv $IMAGE_URL "$out" $(seed_args "$seeds") \
		--endpoint http://127.0.0.1:$PORT_PROXY --progress none --json \
		>"$WORK/diag-$label.json" 2>"$WORK/diag-$label.err" || rc=$?
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	cmp -s "$SOURCE" "$out" || { echo "diag pull $label: rc $rc, output differs" >&2; }
	rm -f "$out"
}

run() {
	SOURCE=$(realpath "${1:-$DATA/bookworm-user.raw}")
	WORK=${2:-/tmp/cbt-store-fanout}
	rm -rf "$WORK"
	mkdir -p "$WORK"/{out,empty,xdg}
	export XDG_CACHE_HOME=$WORK/xdg
	trap teardown EXIT
	teardown_ns
	setup
	local started
	started=$(date -u +%FT%TZ)
	{
		echo "started $started"
		echo "cbt $("$CBT" --version) sha256 $(sha256sum "$CBT" | cut -c1-12) mtime $(date -u -r "$CBT" +%FT%TZ)"
		echo "moto $(python3 -c 'import moto; print(moto.__version__)'), zstandard $(python3 -c 'import zstandard; print(zstandard.__version__)')"
		echo "kernel $(uname -r), nproc $(nproc), rate $RATE"
		echo "source $SOURCE"
		echo "load average $(cut -d" " -f1-3 /proc/loadavg)"
	} >"$WORK/env.txt"
	cat "$WORK/env.txt"

	ip netns exec $NS_S moto_server -H 0.0.0.0 -p $PORT_S3 >"$WORK/moto.log" 2>&1 &
	wait_port $NS_S 127.0.0.1 $PORT_S3 moto_server
	ip netns exec $NS_S curl -sSf -X PUT http://127.0.0.1:$PORT_S3/$BUCKET -o /dev/null
	: >"$WORK/results.jsonl"

	push push1
	push push2

	local d label seeds
	for d in "${DESTS[@]}"; do
		label=${d%%:*} seeds=${d#*:}
		pull "$label" "$seeds"
	done
	for d in "${DESTS[@]}"; do
		label=${d%%:*} seeds=${d#*:}
		send "$label" "$seeds"
	done
	echo "timed runs ended $(date -u +%FT%TZ)" | tee -a "$WORK/env.txt"

	# Maintenance commands, on the store's loopback.
	local e
	for e in "ls $STORE" "verify $STORE --read"; do
		# shellcheck disable=SC2086
		{ echo "\$ cbt store $e"; ip netns exec $NS_S "$CBT" --no-cache store $e \
			--endpoint http://127.0.0.1:$PORT_S3 2>&1; echo "exit $?"; } >>"$WORK/store-maint.txt" || true
	done
	cat "$WORK/store-maint.txt"

	# The manifest, for the analysis.
	ip netns exec $NS_S python3 - http://127.0.0.1:$PORT_S3 "$BUCKET" store/images/user.cbtm "$WORK/user.cbtm" <<'EOF'
import boto3, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
open(sys.argv[4], "wb").write(s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])["Body"].read())
EOF

	if [ "$DIAG" = 1 ]; then
		write_proxy
		for d in "${DESTS[@]}"; do
			label=${d%%:*} seeds=${d#*:}
			diag_pull "$label" "$seeds"
		done
	fi
	analysis
	echo "ended $(date -u +%FT%TZ)" | tee -a "$WORK/env.txt"
}

analysis() {
	local dests=""
	for d in "${DESTS[@]}"; do dests="$dests $d"; done
	cat >"$WORK/analysis.py" <<'EOF'
import collections, hashlib, json, os, re, struct, sys
import zstandard

work, source, data, dests = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
BS = 4096
ZERO = bytes(BS)

# --- the manifest (docs/STORE.md) ---
raw = open(f"{work}/user.cbtm", "rb").read()
assert raw[:8] == b"CBTMANI1"
_, _, body_len, plain_len = struct.unpack_from("<IIQQ", raw, 8)
body = zstandard.ZstdDecompressor().decompress(raw[64:64 + body_len], max_output_size=plain_len)
o = 0
image_len, block_size = struct.unpack_from("<QI", body, o); o += 12 + 32
(nreg,) = struct.unpack_from("<I", body, o); o += 4
regions = [struct.unpack_from("<QQQ", body, o + 24 * i) for i in range(nreg)]; o += 24 * nreg
(npacks,) = struct.unpack_from("<I", body, o); o += 4
packs = [body[o + 32 * i:o + 32 * i + 32].hex() for i in range(npacks)]; o += 32 * npacks
(nruns,) = struct.unpack_from("<Q", body, o); o += 8
entry = {}          # block number -> (digest, pack id, offset, stored_len, encoding)
for _ in range(nruns):
    first, count = struct.unpack_from("<QI", body, o); o += 12
    for j in range(count):
        dg = body[o:o + 32]
        p, off, sl, pl, enc = struct.unpack_from("<IQIIB", body, o + 32); o += 53
        entry[first + j] = (dg, packs[p], off, sl, enc)
assert o == len(body) and block_size == BS and regions == [(0, image_len, 0)], regions
distinct = {}
for dg, p, off, sl, enc in entry.values():
    distinct[dg] = (p, off, sl)
man = {"manifest_bytes": len(raw), "manifest_plain": plain_len, "packs": npacks,
       "blocks": len(entry), "distinct_blocks": len(distinct),
       "stored_all_positions": sum(e[3] for e in entry.values()),
       "stored_distinct": sum(v[2] for v in distinct.values())}

# --- every image's blocks ---
def blocks(path):
    """(block number, content) of every non-zero 4 KiB block, data extents only."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            start -= start % BS
            end = min(size, -(-end // BS) * BS)
            p = start
            while p < end:
                buf = os.pread(fd, min(1 << 22, end - p), p)
                for i in range(0, len(buf), BS):
                    b = buf[i:i + BS]
                    if b != ZERO:
                        yield (p + i) // BS, b
                p += len(buf)
            pos = end
    finally:
        os.close(fd)

def h(b):
    return hashlib.blake2b(b, digest_size=16).digest()

cctx = zstandard.ZstdCompressor(level=3)
src = {}            # block number -> content hash
seen = {}
py_stored = 0       # zstd-3 of each distinct non-zero block, raw when not smaller
mismatch = 0
for n, b in blocks(source):
    k = h(b)
    src[n] = k
    if k not in seen:
        c = len(cctx.compress(b))
        seen[k] = c if c < BS else BS
        py_stored += seen[k]
    e = entry.get(n)
    if e is None or e[3] != seen[k]:
        mismatch += 1
assert set(src) == set(entry), "manifest and image disagree on the non-zero blocks"
content = {"nonzero_blocks": len(src), "distinct_nonzero": len(seen),
           "distinct_plain_bytes": len(seen) * BS, "py_zstd3_stored": py_stored,
           "positions_whose_stored_len_differs_from_python": mismatch}

seedsets = {}
def seedset(img):
    if img not in seedsets:
        seedsets[img] = {h(b) for _, b in blocks(f"{data}/{img}")}
    return seedsets[img]

# --- results of the timed runs ---
rows = [json.loads(l) for l in open(f"{work}/results.jsonl") if l.strip()]
by = {(r["kind"], r["name"]): r for r in rows}

def ranges(label):
    path = f"{work}/ranges-{label}.log"
    if not os.path.exists(path):
        return None
    rs = collections.defaultdict(list)
    other = 0
    for line in open(path):
        m = re.match(r"GET \S+/packs/(\w+)\.pack bytes=(\d+)-(\d+) \d+ (\d+)", line)
        if m:
            rs[m[1]].append((int(m[2]), int(m[3])))
        else:
            f = line.split()
            other += int(f[-1]) if f[0] == "GET" else 0
    return rs, other

dest_out = []
for d in dests:
    label, seeds = d.split(":", 1)
    local = set()
    for img in filter(None, seeds.split(",")):
        local |= seedset(img)
    missing_pos = [n for n, k in src.items() if k not in local]
    need = {}
    for n in missing_pos:
        dg, p, off, sl, _ = entry[n]
        need[dg] = (p, off, sl)
    need_bytes = sum(v[2] for v in need.values())
    row = {"label": label, "seeds": seeds or "none", "predicted_missing": len(missing_pos),
           "missing_distinct": len(need), "missing_stored_distinct": need_bytes,
           "missing_stored_all_positions": sum(entry[n][3] for n in missing_pos)}
    pr = by.get(("pull", label))
    if pr:
        r = pr["report"]
        row.update({"pull_exit": pr["exit"], "pull_identical": pr["identical"], "pull_seconds": pr["seconds"],
                    "pull_link_bytes": pr["link_bytes"], "blocks_missing": r.get("blocks_missing"),
                    "blocks_local": r.get("blocks_local"), "bytes_downloaded": r.get("bytes_downloaded"),
                    "requests": r.get("requests")})
    sr = by.get(("send", label))
    if sr:
        r = sr["report"]
        row.update({"send_exit": sr["exit"], "send_identical": sr["identical"], "send_seconds": sr["seconds"],
                    "send_link_bytes": sr["link_bytes"], "send_blocks_sent": r.get("blocks_sent"),
                    "send_wire_bytes": (r.get("wire_bytes_sent") or 0) + (r.get("wire_bytes_received") or 0)})
    rg = ranges(label)
    if rg:
        rs, other = rg
        total = sum(b - a + 1 for v in rs.values() for a, b in v)
        union = 0
        merged = {}
        for p, v in rs.items():
            v = sorted(v)
            m = []
            for a, b in v:
                if m and a <= m[-1][1] + 1:
                    m[-1][1] = max(m[-1][1], b)
                else:
                    m.append([a, b])
            merged[p] = m
            union += sum(b - a + 1 for a, b in m)
        uncovered = 0
        for p, off, sl in need.values():
            if not any(a <= off and off + sl - 1 <= b for a, b in merged.get(p, [])):
                uncovered += 1
        dj = json.load(open(f"{work}/diag-{label}.json")) if os.path.exists(f"{work}/diag-{label}.json") else {}
        row.update({"diag_bytes_downloaded": dj.get("bytes_downloaded"), "diag_requests": dj.get("requests"),
                    "diag_non_pack_bytes": other, "diag_range_bytes": total, "diag_range_union": union,
                    "diag_refetched": total - union, "diag_unneeded_in_union": union - need_bytes,
                    "diag_needed_blocks_not_covered": uncovered})
    dest_out.append(row)

push1, push2 = by[("push", "push1")], by[("push", "push2")]
json.dump({"manifest": man, "content": content, "push1": push1, "push2": push2, "dests": dest_out},
          open(f"{work}/analysis.json", "w"), indent=1)

# --- summary ---
def mb(x):
    return f"{x:,}".replace(",", " ")
p1, p2 = push1["report"], push2["report"]
C = man["stored_distinct"]
print(f"push 1: {push1['seconds']} s, link {mb(push1['link_bytes'])} B, report {json.dumps({k: p1[k] for k in ('blocks_uploaded', 'bytes_uploaded_plain', 'bytes_uploaded', 'bytes_already_stored', 'packs_uploaded', 'requests', 'seconds')})}")
print(f"push 2: {push2['seconds']} s, link {mb(push2['link_bytes'])} B, report {json.dumps({k: p2[k] for k in ('blocks_uploaded', 'bytes_uploaded_plain', 'bytes_uploaded', 'bytes_already_stored', 'packs_uploaded', 'requests', 'seconds')})}")
print(f"manifest {mb(man['manifest_bytes'])} B ({mb(man['manifest_plain'])} plain), {man['packs']} packs, "
      f"{mb(man['blocks'])} non-zero blocks, {mb(man['distinct_blocks'])} distinct; stored (manifest) distinct "
      f"{mb(C)} B, all positions {mb(man['stored_all_positions'])} B")
print(f"python zstd-3 per distinct block: {mb(content['py_zstd3_stored'])} B over {mb(content['distinct_nonzero'])} blocks "
      f"({mb(content['distinct_plain_bytes'])} B plain); positions whose size differs from the manifest: "
      f"{content['positions_whose_stored_len_differs_from_python']}")
overhead = p1["bytes_uploaded"] - C
index = man["distinct_blocks"] * 56 + man["packs"] * (8 + 44)
print(f"target 1: bytes_uploaded {mb(p1['bytes_uploaded'])} <= 1.05 x {mb(C)} = {mb(int(C * 1.05))}: "
      f"{'met' if p1['bytes_uploaded'] <= 1.05 * C else 'MISSED'} ({100 * p1['bytes_uploaded'] / C:.2f}%); "
      f"overhead {mb(overhead)} B = pack indexes/magic/trailers {mb(index)} + manifest {mb(man['manifest_bytes'])}"
      f" + other {mb(overhead - index - man['manifest_bytes'])}")
print(f"second push: blocks_uploaded {p2['blocks_uploaded']}, packs_uploaded {p2['packs_uploaded']}, "
      f"bytes_uploaded {mb(p2['bytes_uploaded'])} ({'= manifest' if p2['bytes_uploaded'] == man['manifest_bytes'] else 'not the manifest size'})")
print()
hdr = (f"{'dest':<12} {'seeds':<34} {'missing':>8} {'pred':>8} {'need stored':>12} {'downloaded':>12} {'ratio':>7} "
       f"{'pull s':>7} {'ok':>3} | {'send wire':>12} {'send s':>7} {'ok':>3}")
print(hdr)
for r in dest_out:
    ratio = r["bytes_downloaded"] / r["missing_stored_distinct"] if r.get("bytes_downloaded") and r["missing_stored_distinct"] else float("nan")
    print(f"{r['label']:<12} {r['seeds']:<34} {r.get('blocks_missing', 0):>8} {r['predicted_missing']:>8} "
          f"{mb(r['missing_stored_distinct']):>12} {mb(r.get('bytes_downloaded') or 0):>12} {ratio:>7.3f} "
          f"{r.get('pull_seconds', 0):>7.2f} {'y' if r.get('pull_identical') else 'N':>3} | "
          f"{mb(r.get('send_wire_bytes', 0)):>12} {r.get('send_seconds', 0):>7.2f} {'y' if r.get('send_identical') else 'N':>3}")
print()
for r in dest_out:
    if "diag_range_bytes" in r:
        print(f"diag {r['label']:<12} downloaded {mb(r['diag_bytes_downloaded'] or 0):>12} requests {r['diag_requests']}: "
              f"non-pack {mb(r['diag_non_pack_bytes'])}, pack ranges {mb(r['diag_range_bytes'])} = union "
              f"{mb(r['diag_range_union'])} + refetched {mb(r['diag_refetched'])}; union = needed "
              f"{mb(r['missing_stored_distinct'])} + unneeded {mb(r['diag_unneeded_in_union'])}; needed not covered "
              f"{r['diag_needed_blocks_not_covered']}")
print()
pulls = [r["pull_seconds"] for r in dest_out]
sends = [r["send_seconds"] for r in dest_out]
down = sum(r["bytes_downloaded"] for r in dest_out)
sendw = sum(r["send_wire_bytes"] for r in dest_out)
ps = push1["seconds"]
print(f"store: push {ps:.2f} s + max pull {max(pulls):.2f} s = {ps + max(pulls):.2f} s (fan-out, destinations in parallel on their own links); "
      f"push + sum of pulls = {ps + sum(pulls):.2f} s (one after the other)")
print(f"send: sum of 8 sends {sum(sends):.2f} s (max {max(sends):.2f} s)")
print(f"ratios: (push + max pull) / sends {100 * (ps + max(pulls)) / sum(sends):.1f}%, "
      f"(push + sum pulls) / sends {100 * (ps + sum(pulls)) / sum(sends):.1f}%")
print(f"bytes: uploaded {mb(p1['bytes_uploaded'])} + downloaded {mb(down)} = {mb(p1['bytes_uploaded'] + down)}; "
      f"source's link: store {mb(push1['link_bytes'])} vs sends {mb(sum(r['send_link_bytes'] for r in dest_out))} (link bytes); "
      f"send wire bytes total {mb(sendw)}")
for r in dest_out:
    if not r["missing_stored_distinct"]:
        print(f"target 2 {r['label']:<12} {mb(r['bytes_downloaded'])} <= 1.05 x 0: "
              f"{'met' if not r['bytes_downloaded'] else 'MISSED'} (no block missing; the download is the manifest "
              f"{'' if r['bytes_downloaded'] == man['manifest_bytes'] else 'and more'}); "
              f"blocks_missing {r['blocks_missing']} (predicted {r['predicted_missing']})")
        continue
    ok = r["bytes_downloaded"] <= 1.05 * r["missing_stored_distinct"]
    print(f"target 2 {r['label']:<12} {mb(r['bytes_downloaded'])} <= 1.05 x {mb(r['missing_stored_distinct'])}: "
          f"{'met' if ok else 'MISSED'} ({100 * r['bytes_downloaded'] / r['missing_stored_distinct']:.1f}%; without the manifest "
          f"{100 * (r['bytes_downloaded'] - man['manifest_bytes']) / r['missing_stored_distinct']:.1f}%); "
          f"blocks_missing {r['blocks_missing']} (predicted {r['predicted_missing']})")
EOF
	python3 "$WORK/analysis.py" "$WORK" "$SOURCE" "$DATA" "$dests" | tee "$WORK/summary.txt"
}

case ${1:-} in
run) shift; run "$@" ;;
*) sed -n "2,/^set -e/{/^set -e/!p}" "$0"; exit 2 ;;
esac
