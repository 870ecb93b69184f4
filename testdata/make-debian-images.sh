#!/usr/bin/env bash
# Builds realistic Debian VM images for the transfer benchmarks
# (benches/src/bin/harness.rs). Run as root; results are cached under OUT
# (default target/bench-data/debian) and never committed.
#
#   testdata/make-debian-images.sh [OUT]
#
# What it builds, R1 being the first Debian suite of this machine's apt
# configuration and R2 a second release if the same mirror offers one:
#   rootfs/R1-min    debootstrap --variant=minbase
#   rootfs/R1-web    R1-min + a web-server package set (nginx, ...)
#   rootfs/R1-data   R1-web + ~300 MB of user data (mixed file sizes, a
#                    SQLite database) and edited /etc files
#   rootfs/R2-min    debootstrap --variant=minbase of R2
# and from them, 1 GiB each (virtual size):
#   R1-min.raw R1-web.raw R1-data.raw R2-min.raw    raw ext4 (mkfs.ext4 -b 4096 -d)
#   R1-web-part.raw     the R1-web filesystem in an MBR partition at sector 63
#   R1-{min,web,data}.qcow2    qcow2 (cluster 64 KiB)
#   R1-web-on-min.qcow2 overlay holding R1-web, backing file R1-min.qcow2
#                       (a rebuilt image: most clusters differ from the base)
#   R1-web-inplace.raw  the web packages installed into a loop-mounted copy
#                       of R1-min.raw (an upgrade done in place, as in a VM)
#   R1-web-inplace-on-min.qcow2  the same as an overlay on R1-min.qcow2
#   R1-data-snap.qcow2  R1-data with an internal snapshot "web" of R1-web
# The mirror is read at run time from /etc/apt/sources.list and
# /etc/apt/sources.list.d/*.{list,sources}. If debootstrap cannot reach it
# the script says so and exits with status 2 (nothing is faked).
# The file OUT/done lists what was built; delete OUT to rebuild.
set -Eeuo pipefail
trap 'echo "make-debian-images: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

OUT=${1:-target/bench-data/debian}
SIZE=1G
USER_DATA_MB=${USER_DATA_MB:-300}
mkdir -p "$OUT/rootfs"
OUT=$(cd "$OUT" && pwd)
log() { echo "make-debian-images: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (debootstrap, chroot)"
    exit 1
fi
# Bump when the set of images changes: a cache of another layout is
# completed (every step below skips what exists).
LAYOUT=2
if [ -f "$OUT/done" ] && grep -qx "layout=$LAYOUT" "$OUT/done"; then
    log "cached in $OUT (delete it to rebuild)"
    cat "$OUT/done"
    exit 0
fi

need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$2" >/dev/null
}
need debootstrap debootstrap
need mkfs.ext4 e2fsprogs
need sfdisk fdisk
need qemu-img qemu-utils
need sqlite3 sqlite3
need openssl openssl

# --- The mirror, from the apt configuration -------------------------------
# Prints "URI SUITE" for the first Debian main archive entry (not -security
# or -updates).
find_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" {
                i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i+1) !~ /-(security|updates|backports)$/ && $i ~ /debian\/?$/) { print $i, $(i+1); exit }
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
             {
                uri = ""; suite = ""; enabled = 1
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)    { split(substr($i, 6), u, " "); uri = u[1] }
                    if ($i ~ /^Suites:/)  { split(substr($i, 8), s, " "); suite = s[1] }
                    if ($i ~ /^Enabled: *no/) enabled = 0
                }
                if (enabled && uri ~ /debian\/?$/ && suite !~ /-(security|updates|backports)$/ && suite != "") { print uri, suite; exit }
             }' "$f"
    done
}
read -r MIRROR R1 < <(find_mirror | head -n1) || true
if [ -z "${MIRROR:-}" ] || [ -z "${R1:-}" ]; then
    log "no Debian mirror found in /etc/apt/sources.list{,.d}: skipping the Debian images"
    exit 2
fi
log "mirror $MIRROR, release $R1 (from the apt configuration)"

# A second release the mirror offers: the next one, else the previous one.
R2=""
case "$R1" in
    bookworm) CANDIDATES="trixie bullseye" ;;
    trixie) CANDIDATES="forky bookworm" ;;
    bullseye) CANDIDATES="bookworm buster" ;;
    *) CANDIDATES="bookworm bullseye" ;;
esac
for r in $CANDIDATES; do
    if [ -e "/usr/share/debootstrap/scripts/$r" ] &&
        curl -fsI --max-time 20 "${MIRROR%/}/dists/$r/Release" >/dev/null 2>&1; then
        R2=$r
        break
    fi
done
[ -n "$R2" ] && log "second release: $R2" || log "the mirror offers no second release: skipping it"

# --- Root file systems ------------------------------------------------------
MOUNTS=()
cleanup() {
    local m
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[i]}" 2>/dev/null || true
    done
}
trap cleanup EXIT

bootstrap() { # bootstrap SUITE DIR
    local suite=$1 dir=$2
    [ -f "$dir/.ok" ] && return 0
    rm -rf "$dir" "$dir.partial"
    log "debootstrap --variant=minbase $suite (a few minutes)"
    if ! debootstrap --variant=minbase "$suite" "$dir.partial" "$MIRROR" >"$OUT/debootstrap-$suite.log" 2>&1; then
        log "debootstrap $suite from $MIRROR failed (see $OUT/debootstrap-$suite.log): cannot reach the mirror?"
        return 2
    fi
    rm -rf "$dir.partial/var/cache/apt/archives/"*.deb
    mv "$dir.partial" "$dir"
    touch "$dir/.ok"
}

in_chroot() { # in_chroot DIR COMMAND...
    local dir=$1
    shift
    mount -t proc proc "$dir/proc" && MOUNTS+=("$dir/proc")
    mount --bind /dev "$dir/dev" && MOUNTS+=("$dir/dev")
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod +x "$dir/usr/sbin/policy-rc.d"
    local rc=0
    DEBIAN_FRONTEND=noninteractive chroot "$dir" "$@" || rc=$?
    rm -f "$dir/usr/sbin/policy-rc.d"
    umount -l "$dir/dev" "$dir/proc"
    MOUNTS=()
    return $rc
}

# Deterministic pseudo-random bytes: AES-128-CTR keystream of SEED.
keystream() { # keystream SEED BYTES
    # openssl dies of SIGPIPE when head has enough: not an error.
    { openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 -in /dev/zero 2>/dev/null || true; } | head -c "$2"
}

add_user_data() { # add_user_data ROOT
    local root=$1 home=$1/home/alice
    mkdir -p "$home/photos" "$home/docs" "$home/src" "$home/db"
    log "user data: ${USER_DATA_MB} MB of mixed files and a SQLite database"
    local stream=$OUT/.stream
    keystream 42 $((USER_DATA_MB * 1024 * 1024)) >"$stream"
    local off=0 i n
    # Large binary files (media-like, incompressible): 40% of the volume.
    for i in $(seq 1 $((USER_DATA_MB * 4 / 10 / 8))); do
        dd if="$stream" of="$home/photos/video-$i.mp4" bs=1M skip=$off count=8 status=none
        off=$((off + 8))
    done
    # Medium files: 30%, 256 KiB to 2 MiB each.
    local left=$((USER_DATA_MB * 3 / 10 * 1024)) k=0
    while [ "$left" -gt 0 ]; do
        n=$((256 * (1 + k % 8)))
        dd if="$stream" of="$home/photos/img-$k.jpg" bs=1K skip=$((off * 1024)) count=$n status=none
        off=$((off + (n + 1023) / 1024))
        left=$((left - n))
        k=$((k + 1))
    done
    # Many small text files (compressible): 1 to 48 KiB of base64.
    k=0
    left=$((USER_DATA_MB / 10 * 1024))
    while [ "$left" -gt 0 ]; do
        n=$((1 + (k * 7) % 48))
        dd if="$stream" bs=1K skip=$((off * 1024 + k % 1024)) count=$n status=none | base64 >"$home/docs/note-$k.txt"
        left=$((left - n * 4 / 3))
        k=$((k + 1))
    done
    rm -f "$stream"
    # Source tree: copies of the system's own text files.
    cp -a "$root/usr/share/doc" "$home/src/doc-copy" 2>/dev/null || true
    # A SQLite database (~25 MB).
    sqlite3 "$home/db/app.sqlite" <<'SQL'
PRAGMA page_size = 4096;
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, email TEXT, token TEXT);
CREATE TABLE events(id INTEGER PRIMARY KEY, user INTEGER, at INTEGER, payload BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)
  INSERT INTO users SELECT x, 'user' || x, 'user' || x || '@example.org', hex(randomblob(16)) FROM c;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
  INSERT INTO events SELECT x, x % 20000, 1700000000 + x * 37, randomblob(80) FROM c;
CREATE INDEX events_user ON events(user);
SQL
    # Edited /etc files.
    echo "web01" >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 web01.example.org web01\n' >"$root/etc/hosts"
    echo "alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash" >>"$root/etc/passwd"
    echo "alice:!:19800:0:99999:7:::" >>"$root/etc/shadow"
    echo "alice:x:1000:" >>"$root/etc/group"
    chown -R 1000:1000 "$home"
    echo "Welcome to web01 (managed image)" >"$root/etc/motd"
    if [ -d "$root/etc/nginx/sites-available" ]; then
        cat >"$root/etc/nginx/sites-available/default" <<'EOF'
server {
    listen 80 default_server;
    server_name web01.example.org;
    root /home/alice/docs;
    location / { autoindex on; }
}
EOF
    fi
    echo "vm.swappiness = 10" >>"$root/etc/sysctl.conf"
}

bootstrap "$R1" "$OUT/rootfs/$R1-min" || exit 2

if [ ! -f "$OUT/rootfs/$R1-web/.ok" ]; then
    rm -rf "$OUT/rootfs/$R1-web"
    cp -a "$OUT/rootfs/$R1-min" "$OUT/rootfs/$R1-web.partial"
    rm -f "$OUT/rootfs/$R1-web.partial/.ok"
    log "installing the web-server package set"
    if ! in_chroot "$OUT/rootfs/$R1-web.partial" sh -c \
        'apt-get update -q && apt-get install -y -q --no-install-recommends nginx ssl-cert ca-certificates curl logrotate && apt-get clean' \
        >"$OUT/web-packages.log" 2>&1; then
        log "apt-get install in the chroot failed (see $OUT/web-packages.log)"
        exit 2
    fi
    mv "$OUT/rootfs/$R1-web.partial" "$OUT/rootfs/$R1-web"
    touch "$OUT/rootfs/$R1-web/.ok"
fi

if [ ! -f "$OUT/rootfs/$R1-data/.ok" ]; then
    rm -rf "$OUT/rootfs/$R1-data" "$OUT/rootfs/$R1-data.partial"
    cp -a "$OUT/rootfs/$R1-web" "$OUT/rootfs/$R1-data.partial"
    rm -f "$OUT/rootfs/$R1-data.partial/.ok"
    add_user_data "$OUT/rootfs/$R1-data.partial"
    mv "$OUT/rootfs/$R1-data.partial" "$OUT/rootfs/$R1-data"
    touch "$OUT/rootfs/$R1-data/.ok"
fi

if [ -n "$R2" ]; then
    bootstrap "$R2" "$OUT/rootfs/$R2-min" || {
        log "skipping $R2"
        R2=""
    }
fi

# --- Images -------------------------------------------------------------------
mkimage() { # mkimage NAME
    local name=$1
    [ -f "$OUT/$name.raw" ] && return 0
    log "mkfs.ext4 -d -> $name.raw"
    rm -f "$OUT/$name.raw.tmp"
    mkfs.ext4 -q -F -b 4096 -L "$name" -d "$OUT/rootfs/$name" "$OUT/$name.raw.tmp" "$SIZE"
    mv "$OUT/$name.raw.tmp" "$OUT/$name.raw"
}
for n in "$R1-min" "$R1-web" "$R1-data" ${R2:+"$R2-min"}; do mkimage "$n"; done

if [ ! -f "$OUT/$R1-web-part.raw" ]; then
    log "partitioned variant: MBR, partition at sector 63"
    fs=$(stat -c %s "$OUT/$R1-web.raw")
    rm -f "$OUT/p.tmp"
    truncate -s $((fs + 1024 * 1024)) "$OUT/p.tmp"
    echo "start=63, size=$((fs / 512)), type=83" | sfdisk -q "$OUT/p.tmp" >/dev/null
    dd if="$OUT/$R1-web.raw" of="$OUT/p.tmp" bs=512 seek=63 conv=notrunc,sparse status=none
    mv "$OUT/p.tmp" "$OUT/$R1-web-part.raw"
fi

for n in "$R1-min" "$R1-web" "$R1-data"; do
    [ -f "$OUT/$n.qcow2" ] && continue
    log "qcow2 -> $n.qcow2"
    qemu-img convert -f raw -O qcow2 "$OUT/$n.raw" "$OUT/$n.qcow2.tmp"
    mv "$OUT/$n.qcow2.tmp" "$OUT/$n.qcow2"
done

# The same upgrade done in place, as a running VM would: the packages are
# installed into a copy of the minbase file system itself (loop mount), so
# unchanged blocks stay where they were.
if [ ! -f "$OUT/$R1-web-inplace.raw" ]; then
    log "in-place upgrade: $R1-web-inplace.raw (web packages installed into a copy of $R1-min.raw)"
    cp --sparse=always "$OUT/$R1-min.raw" "$OUT/i.tmp"
    mkdir -p "$OUT/mnt"
    mount -o loop "$OUT/i.tmp" "$OUT/mnt" && MOUNTS+=("$OUT/mnt")
    if ! in_chroot "$OUT/mnt" sh -c \
        'apt-get update -q && apt-get install -y -q --no-install-recommends nginx ssl-cert ca-certificates curl logrotate && apt-get clean' \
        >"$OUT/web-inplace-packages.log" 2>&1; then
        log "apt-get install in the loop-mounted image failed (see $OUT/web-inplace-packages.log)"
        umount "$OUT/mnt"
        exit 2
    fi
    rm -f "$OUT/mnt/.ok"
    umount "$OUT/mnt"
    MOUNTS=()
    mv "$OUT/i.tmp" "$OUT/$R1-web-inplace.raw"
fi

if [ ! -f "$OUT/$R1-web-inplace-on-min.qcow2" ]; then
    log "backing chain: $R1-web-inplace-on-min.qcow2 -> $R1-min.qcow2"
    (cd "$OUT" && qemu-img convert -f raw -O qcow2 -B "$R1-min.qcow2" -F qcow2 \
        "$R1-web-inplace.raw" "$R1-web-inplace-on-min.qcow2.tmp" && mv "$R1-web-inplace-on-min.qcow2.tmp" "$R1-web-inplace-on-min.qcow2")
fi

if [ ! -f "$OUT/$R1-web-on-min.qcow2" ]; then
    log "backing chain: $R1-web-on-min.qcow2 -> $R1-min.qcow2"
    (cd "$OUT" && qemu-img convert -f raw -O qcow2 -B "$R1-min.qcow2" -F qcow2 \
        "$R1-web.raw" "$R1-web-on-min.qcow2.tmp" && mv "$R1-web-on-min.qcow2.tmp" "$R1-web-on-min.qcow2")
fi

if [ ! -f "$OUT/$R1-data-snap.qcow2" ]; then
    log "internal snapshot: $R1-data-snap.qcow2 (snapshot 'web' = $R1-web, active = $R1-data)"
    cp "$OUT/$R1-web.qcow2" "$OUT/s.tmp"
    qemu-img snapshot -c web "$OUT/s.tmp"
    qemu-img convert -n -f raw -O qcow2 "$OUT/$R1-data.raw" "$OUT/s.tmp"
    mv "$OUT/s.tmp" "$OUT/$R1-data-snap.qcow2"
fi

{
    echo "layout=$LAYOUT"
    echo "mirror=$MIRROR"
    echo "r1=$R1"
    echo "r2=$R2"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    (cd "$OUT" && ls -1 ./*.raw ./*.qcow2 | sed 's|^\./|image=|')
} >"$OUT/done.tmp"
mv "$OUT/done.tmp" "$OUT/done"
log "done: $OUT"
cat "$OUT/done"
