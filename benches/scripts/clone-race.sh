#!/usr/bin/env bash
# The clone race, in a loop: a seed that another process keeps rewriting
# (64 KiB random writes at random offsets, as a running VM does) while cbt
# copies from it. Every run that exits 0 must have published exactly the
# source; a run that exits non-zero must have published nothing.
#
#   benches/scripts/clone-race.sh DIR RUNS [MiB]
#
# DIR is where the images live: an ext4 directory, or a reflink XFS mount
# (mkfs.xfs -m reflink=1 on a file, mount -o loop) to test shared extents.
# Modes run in turn: copy, copy --inplace, recv from a one-shot sender
# (recv --listen), and a push to `cbt serve --seed`.
set -euo pipefail
dir=${1:?DIR}
runs=${2:?RUNS}
mib=${3:-64}
cbt=$(realpath "${CBT:-$(dirname "$0")/../../target/release/cbt}")
mkdir -p "$dir"
cd "$dir"
# Random data with zero blocks among it (one 4 KiB block in 8, and a whole
# MiB in 8), as disks have, and a seed that is an older version of it
# (half its zero blocks held data): a zero block is never written to a new
# output, so whatever a rejected clone left there must be undone.
python3 -c '
import os, random, sys
mib = int(sys.argv[1])
with open("src.raw", "wb") as f, open("seed-base.raw", "wb") as g:
    for m in range(mib):
        if m % 8 == 7:
            f.write(bytes(1 << 20))
            g.write(bytes(1 << 20))
            continue
        blocks = [os.urandom(4096) if random.random() > 0.125 else bytes(4096) for _ in range(256)]
        f.write(b"".join(blocks))
        # The seed: an older version, where half the zero blocks held data.
        g.write(b"".join(b if any(b) or random.random() < 0.5 else os.urandom(4096) for b in blocks))
' "$mib"
mkdir -p seeds data
# `exec`, so that $! is the writer itself and `kill` stops it. A pause
# between writes (REWRITE_PAUSE seconds) keeps most of the seed usable, so
# that clones and rejections both happen in one run.
rewriter() {
    exec python3 -c '
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
size = os.fstat(fd).st_size
pause = float(sys.argv[2])
while True:
    off = random.randrange(0, size // 65536) * 65536
    os.pwrite(fd, os.urandom(65536), off)
    time.sleep(pause)
' "$1" "${REWRITE_PAUSE:-0.002}"
}
# The port a listener announced on stderr (file $1), once its line is
# whole (a line read while being written would give a wrong port).
port_of() {
    for _ in $(seq 400); do
        if [ -s "$1" ] && [ -z "$(tail -c 1 "$1")" ]; then
            p=$(sed -n 's/.*listening on [0-9.]*:\([0-9][0-9]*\)$/\1/p' "$1" | head -n 1)
            [ -n "$p" ] && { echo "$p"; return; }
        fi
        sleep 0.05
    done
}
wrong=0 failed=0 ok=0 cloned=0
modes=(copy inplace recv push)
for ((i = 0; i < runs; i++)); do
    mode=${modes[i % 4]}
    cp --reflink=auto seed-base.raw seeds/seed.raw
    rm -f out.raw data/out.raw
    if [ "$mode" = inplace ]; then
        # An older version of the image: its second half already right.
        cp src.raw out.raw
        head -c $((mib << 19)) /dev/urandom | dd of=out.raw conv=notrunc status=none
    fi
    rewriter seeds/seed.raw & rw=$!
    set +e
    case $mode in
    copy) "$cbt" --no-cache copy src.raw out.raw --seed seeds --json > run.json 2> run.err ;;
    inplace) "$cbt" --no-cache copy src.raw out.raw --seed seeds --inplace --json > run.json 2> run.err ;;
    recv)
        "$cbt" --no-cache recv --listen 127.0.0.1:0 out.raw --seed seeds --json > run.json 2> run.err & r=$!
        port=$(port_of run.err)
        "$cbt" --no-cache send src.raw "127.0.0.1:$port" > /dev/null 2>> run.err || kill $r
        wait $r ;;
    push)
        "$cbt" --no-cache serve --listen 127.0.0.1:0 --data data --seed seeds 2> serve.err & d=$!
        port=$(port_of serve.err)
        "$cbt" --no-cache send src.raw "127.0.0.1:$port/out.raw" --json > run.json 2> run.err
        rc=$?; kill $d; wait $d 2> /dev/null; (exit $rc) ;;
    esac
    rc=$?
    set -e
    kill $rw; wait $rw 2> /dev/null || true
    out=out.raw; [ "$mode" = push ] && out=data/out.raw
    if [ $rc -eq 0 ]; then
        if cmp -s src.raw "$out"; then ok=$((ok + 1)); else wrong=$((wrong + 1)); echo "WRONG: run $i ($mode)"; fi
        c=$(grep -o '"bytes_cloned": *[0-9]*' run.json | grep -o '[0-9]*$' || echo 0)
        cloned=$((cloned + ${c:-0}))
    else
        failed=$((failed + 1))
        echo "failed (exit $rc): run $i ($mode): $(tail -n 2 run.err | tr '\n' ' ')"
        # Nothing may be published by a failed run (in place: the journal stays).
        if [ "$mode" != inplace ] && [ -e "$out" ]; then wrong=$((wrong + 1)); echo "LEFT OUTPUT: run $i ($mode)"; fi
    fi
done
echo "runs=$runs ok=$ok failed=$failed wrong=$wrong bytes_cloned_total=$cloned dir=$dir"
[ $wrong -eq 0 ]
