#!/usr/bin/env bash
# ΔD = 0 on loopback (issue 8): a dense image that the destination already
# holds, moved by rsync (daemon, --inplace and temp-file, -I so it compares)
# and by cbt (send/recv into a new file seeded by the identical image, and
# recv --inplace onto the identical image). Warm page cache, as a re-sync
# of a just-used image; 3 runs each, every run prints its wall time.
# Usage: benches/scripts/delta0-loopback.sh [SIZE_MIB] [WORKDIR]
set -euo pipefail
size=${1:-1024}
work=${2:-/tmp/cbt-delta0}
cbt=${CBT:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/cbt}
mkdir -p "$work/seeds" "$work/out"
cd "$work"
if [ ! -f src.raw ] || [ "$(stat -c %s src.raw)" -ne $((size << 20)) ]; then
    head -c $((size << 20)) /dev/urandom > src.raw
fi
cp --reflink=never src.raw seeds/base.raw
cat > rsyncd.conf <<CONF
use chroot = no
[bench]
path = $work/out
read only = false
uid = root
gid = root
CONF
rsync --daemon --config=rsyncd.conf --port=8730 --address=127.0.0.1
trap 'kill $(cat /var/run/rsyncd.pid 2>/dev/null || pgrep -f "rsync --daemon --config=rsyncd.conf") 2>/dev/null || true' EXIT
cat src.raw seeds/base.raw > /dev/null    # warm
"$cbt" index seeds > /dev/null             # warm the digest cache, as cbt serve keeps one

t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
for run in 1 2 3; do
    cp --reflink=never src.raw out/r.raw; sync
    echo "rsync --inplace     $(t rsync -I --no-whole-file --inplace src.raw rsync://127.0.0.1:8730/bench/r.raw)"
    echo "rsync (temp file)   $(t rsync -I --no-whole-file src.raw rsync://127.0.0.1:8730/bench/r.raw)"
    rm -f out/c.raw; sync
    ( "$cbt" recv --listen 127.0.0.1:4790 out/c.raw --seed seeds --json > recv.json 2>/dev/null & )
    sleep 0.3
    echo "cbt send/recv       $(t "$cbt" send src.raw 127.0.0.1:4790)"
    sleep 0.2
    cp --reflink=never src.raw out/i.raw; sync
    ( "$cbt" recv --inplace --listen 127.0.0.1:4791 out/i.raw --json > recv-inplace.json 2>/dev/null & )
    sleep 0.3
    echo "cbt recv --inplace  $(t "$cbt" send src.raw 127.0.0.1:4791)"
    sleep 0.2
    echo "  bytes_written (--inplace): $(python3 -c 'import json; print(json.load(open("recv-inplace.json"))["bytes_written"])')"
    cmp src.raw out/c.raw && cmp src.raw out/i.raw
done
