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
#   rootfs/R1-user   R1-web + ~400 MB (USER2_MB) of realistic, seeded user
#                    data: text documents (prose, Markdown, HTML, CSV, JSON),
#                    mail, nginx and syslog logs with rotated .1 files, a
#                    ~40 MB SQLite database, media-like random files, a copy
#                    of the documents and a tar of the nginx logs as backups;
#                    edited /etc files
#   rootfs/R2-min    debootstrap --variant=minbase of R2
# and from them, 1 GiB each (virtual size) unless said otherwise:
#   R1-min.raw R1-web.raw R1-data.raw R2-min.raw    raw ext4 (mkfs.ext4 -b 4096 -d)
#   R1-user.raw         raw ext4 too, 3 GiB
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
USER2_MB=${USER2_MB:-400}
mkdir -p "$OUT/rootfs"
OUT=$(cd "$OUT" && pwd)
log() { echo "make-debian-images: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (debootstrap, chroot)"
    exit 1
fi
# Bump when the set of images changes: a cache of another layout is
# completed (every step below skips what exists).
LAYOUT=3
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
need python3 python3

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
    edit_etc "$root" web01 /home/alice/docs
    chown -R 1000:1000 "$home"
}

# Edited /etc files: host name, a user alice, motd, the nginx site, sysctl.
edit_etc() { # edit_etc ROOT HOST WEBROOT
    local root=$1 host=$2 webroot=$3
    echo "$host" >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s.example.org %s\n' "$host" "$host" >"$root/etc/hosts"
    echo "alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash" >>"$root/etc/passwd"
    echo "alice:!:19800:0:99999:7:::" >>"$root/etc/shadow"
    echo "alice:x:1000:" >>"$root/etc/group"
    echo "Welcome to $host (managed image)" >"$root/etc/motd"
    if [ -d "$root/etc/nginx/sites-available" ]; then
        cat >"$root/etc/nginx/sites-available/default" <<EOF
server {
    listen 80 default_server;
    server_name $host.example.org;
    root $webroot;
    location / { autoindex on; }
}
EOF
    fi
    echo "vm.swappiness = 10" >>"$root/etc/sysctl.conf"
}

# Realistic user data, mostly compressible and deterministic (seeded), in
# shares of USER2_MB: text 30% (Documents 12%, projects 10%, mail 8%), logs
# 15% (/var/log/nginx 9.5%, /var/log/syslog 6%, each log with a rotated .1
# of older lines), a SQLite database 10%, media-like random files 25%, and
# backups: a copy of Documents (duplicates at 4 KiB alignment) and an
# uncompressed tar of /var/log/nginx (duplicates at 512-byte alignment).
add_mixed_user_data() { # add_mixed_user_data ROOT
    local root=$1 home=$1/home/alice sql=$OUT/.user-db.sql t0=$SECONDS
    log "user data: ~${USER2_MB} MB of documents, mail, logs, a SQLite database, media and backups"
    mkdir -p "$home/db" "$home/backup" "$root/var/log/nginx"
    python3 - "$root" "$home" "$USER2_MB" "$sql" <<'PY'
# Seeded (deterministic) user data: text documents, mail, data exports,
# logs, the database as a SQL script and media-like random files.
# Arguments: ROOT HOME MB SQL_OUT.
import json, os, random, re, sys, time
from itertools import accumulate

root, home, mb, sql_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
total = mb << 20
rng = random.Random(20261206)
T0 = 1764547200  # 2025-12-01T00:00:00Z: the data spans the year after it.

# Vocabulary with natural (Zipf-like) frequencies, from the rootfs' own
# licence and copyright texts.
counts = {}
srcs = [os.path.join(root, "usr/share/common-licenses")]
docs = os.path.join(root, "usr/share/doc")
paths = []
for d in srcs:
    if os.path.isdir(d):
        paths += [os.path.join(d, f) for f in sorted(os.listdir(d))]
if os.path.isdir(docs):
    paths += [os.path.join(docs, p, "copyright") for p in sorted(os.listdir(docs))]
dict_words = os.path.join(root, "usr/share/dict/words")
for p in paths:
    if os.path.isfile(p) and not os.path.islink(p):
        with open(p, encoding="utf-8", errors="replace") as f:
            for w in re.findall(r"[A-Za-z]{2,}", f.read()):
                w = w.lower()
                counts[w] = counts.get(w, 0) + 1
if os.path.isfile(dict_words):
    with open(dict_words, encoding="utf-8", errors="replace") as f:
        for w in f.read().split():
            if w.isalpha():
                counts.setdefault(w.lower(), 1)
if len(counts) < 100:
    sys.exit("gen.py: no vocabulary found under " + root)
# A table in which each word appears in proportion to its count: uniform
# draws from it are weighted draws, without a bisection per word.
vocab = sorted(counts)
scale = (1 << 20) / sum(counts.values())
table = [w for w in vocab for _ in range(max(1, round(counts[w] * scale)))]


class Words:
    """A refilled pool of words drawn by frequency."""

    def __init__(self):
        self.pool, self.pos = [], 0

    def take(self, n):
        if self.pos + n > len(self.pool):
            self.pool = rng.choices(table, k=200000)
            self.pos = 0
        w = self.pool[self.pos:self.pos + n]
        self.pos += n
        return w


words = Words()
ENDS = "." * 12 + "?!"


def sentence():
    w = words.take(rng.randint(5, 24))
    if len(w) > 10:
        w[rng.randrange(3, len(w) - 3)] += ","
    s = " ".join(w)
    return s[0].upper() + s[1:] + rng.choice(ENDS)


def paragraph():
    return " ".join(sentence() for _ in range(rng.randint(2, 8)))


def title():
    return " ".join(words.take(rng.randint(2, 6))).title()


FIRST = ("alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia "
         "peggy rupert sybil trent victor walter xena yusuf zoe").split()
LAST = ("smith jones martin bernard dubois muller schmidt rossi garcia lopez "
        "novak kowalski jensen larsen silva costa weber fischer moreau petit").split()
CITIES = ("Paris Lyon Berlin Hamburg Madrid Lisbon Rome Milan Vienna Prague Warsaw "
          "Oslo Dublin Brussels Amsterdam Zurich Geneva Munich Porto Turin").split()
STATUS = ["paid"] * 8 + ["pending", "refunded", "cancelled"]


def person():
    f, l = rng.choice(FIRST), rng.choice(LAST)
    return f.title() + " " + l.title(), f"{f}.{l}@example.org"


def pick(seq, cum_weights):
    return rng.choices(seq, cum_weights=cum_weights)[0]


def stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def when():
    return T0 + rng.randrange(365 * 86400)


def write(path, text, t=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    t = t or when()
    os.utime(path, (t, t))
    return len(text)


def doc_size():
    # Log-uniform between 2 KiB and 400 KiB.
    return int(2048 * (200 ** rng.random()))


def text_doc(n):
    out, size = [], 0
    while size < n:
        p = paragraph()
        out.append(p)
        size += len(p) + 2
    return "\n\n".join(out) + "\n"


def md_doc(n):
    out, size = ["# " + title(), ""], 0
    while size < n:
        r = rng.random()
        if r < 0.15:
            part = ["## " + title(), ""]
        elif r < 0.3:
            part = ["- " + sentence() for _ in range(rng.randint(2, 6))] + [""]
        elif r < 0.35:
            part = ["```sh", "cd ~/" + "/".join(words.take(2)) + " && make " + words.take(1)[0], "```", ""]
        else:
            part = [paragraph(), ""]
        out += part
        size += sum(len(x) + 1 for x in part)
    return "\n".join(out)


def html_doc(n):
    t = title()
    out = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
           f"<title>{t}</title>", "<link rel=\"stylesheet\" href=\"/static/site.css\">",
           "</head>", "<body>", f"<h1>{t}</h1>"]
    size = 0
    while size < n:
        if rng.random() < 0.15:
            out.append(f"<h2>{title()}</h2>")
        out.append(f"<p>{paragraph()}</p>")
        size += len(out[-1])
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def csv_doc(n):
    out = ["id,date,customer,email,city,amount,quantity,status,comment"]
    size, i = 0, rng.randrange(1, 100000)
    while size < n:
        name, mail = person()
        i += rng.randint(1, 3)
        line = (f"{i},{stamp(when())[:10]},{name},{mail},{rng.choice(CITIES)},"
                f"{rng.uniform(2, 900):.2f},{rng.randint(1, 12)},{rng.choice(STATUS)},"
                f"\"{' '.join(words.take(rng.randint(0, 8)))}\"")
        out.append(line)
        size += len(line) + 1
    return "\n".join(out) + "\n"


def json_doc(n):
    recs, size = [], 0
    while size < n:
        name, mail = person()
        r = {"id": rng.randrange(10 ** 6), "name": name, "email": mail,
             "city": rng.choice(CITIES), "created": stamp(when()),
             "score": round(rng.gauss(50, 15), 2), "active": rng.random() < 0.8,
             "tags": words.take(rng.randint(0, 4)), "bio": sentence()}
        recs.append(r)
        size += 200 + len(r["bio"])
    return json.dumps(recs, indent=2) + "\n"


KINDS = [("txt", text_doc, 35), ("md", md_doc, 25), ("html", html_doc, 15),
         ("csv", csv_doc, 15), ("json", json_doc, 10)]


def documents(top, subdirs, budget, big=1):
    size, k = 0, 0
    kinds = [x for x in KINDS for _ in range(x[2])]
    while size < budget:
        ext, gen, _ = rng.choice(kinds)
        sub = rng.choice(subdirs)
        name = "-".join(words.take(rng.randint(1, 3))) + f"-{k}.{ext}"
        size += write(os.path.join(top, sub, name), gen(doc_size() * big))
        k += 1
    return size


def mbox(path, budget):
    out, size = [], 0
    t = T0 + rng.randrange(86400)
    while size < budget:
        t += int(rng.expovariate(1 / 5000))
        name, mail = person()
        d = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(t))
        body = "\n\n".join(paragraph() for _ in range(rng.randint(1, 6)))
        m = (f"From {mail} {time.asctime(time.gmtime(t))}\nFrom: {name} <{mail}>\n"
             f"To: Alice Martin <alice@example.org>\nSubject: {title()}\nDate: {d}\n"
             f"Message-ID: <{t}.{rng.randrange(10 ** 9)}@example.org>\n"
             f"Content-Type: text/plain; charset=utf-8\n\n{body}\n\n")
        out.append(m)
        size += len(m)
    return write(path, "".join(out), t)


CLIENTS = [f"{rng.choice([81, 82, 86, 90, 91, 176, 185, 203])}.{rng.randrange(256)}."
           f"{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(3000)]
# A few clients make most requests (cumulative weights, computed once).
CLIENT_CW = list(accumulate(1 / (i + 1) for i in range(len(CLIENTS))))
PAGES = (["/", "/index.html", "/favicon.ico", "/robots.txt", "/static/site.css",
          "/static/app.js", "/static/logo.png", "/login", "/api/v1/items", "/api/v1/orders",
          "/docs/", "/feed.xml", "/wp-login.php", "/.env", "/search"])
PAGE_CW = list(accumulate([30, 10, 12, 3, 15, 15, 12, 4, 20, 10, 6, 3, 1, 1, 8]))
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
          "curl/7.88.1", "Googlebot/2.1 (+http://www.google.com/bot.html)", "python-requests/2.31.0"]
CODES = [200] * 40 + [304] * 6 + [301, 302, 404, 404, 404, 403, 500]


def access_log(path, budget, t):
    out, size, sec, ts = [], 0, -1, ""
    while size < budget:
        t += rng.expovariate(4.0)
        if int(t) != sec:
            sec = int(t)
            ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(sec))
        page = pick(PAGES, PAGE_CW)
        if page in ("/api/v1/items", "/search"):
            page += f"?{'q' if page == '/search' else 'id'}={rng.randrange(10000)}"
        code = rng.choice(CODES)
        n = 0 if code == 304 else rng.randint(150, 60000)
        method = "POST" if page == "/login" and rng.random() < 0.5 else "GET"
        line = (f'{pick(CLIENTS, CLIENT_CW)} - - [{ts}] "{method} {page} HTTP/1.1" '
                f'{code} {n} "{rng.choice(["-", "https://www.example.org/"])}" "{rng.choice(AGENTS)}"\n')
        out.append(line)
        size += len(line)
    return write(path, "".join(out), int(t)), t


def error_log(path, budget, t):
    out, size = [], 0
    while size < budget:
        t += rng.expovariate(1 / 40)
        ip = pick(CLIENTS, CLIENT_CW)
        page = rng.choice(["/favicon.ico", "/wp-login.php", "/.env", "/static/old.css"])
        line = (time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(t)) +
                f' [error] {rng.randint(1000, 1200)}#{rng.randint(1000, 1200)}: *{rng.randrange(10 ** 6)} '
                f'open() "/var/www/html{page}" failed (2: No such file or directory), client: {ip}, '
                f'server: files01.example.org, request: "GET {page} HTTP/1.1", host: "files01.example.org"\n')
        out.append(line)
        size += len(line)
    return write(path, "".join(out), int(t)), t


SYSLOG = [
    (30, lambda: f"CRON[{rng.randint(1000, 60000)}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"),
    (20, lambda: f"systemd[1]: Started {rng.choice(['session-' + str(rng.randint(1, 900)) + '.scope', 'logrotate.service', 'apt-daily.service', 'man-db.service', 'phpsessionclean.service'])}."),
    (15, lambda: f"sshd[{rng.randint(1000, 60000)}]: Accepted publickey for alice from {pick(CLIENTS, CLIENT_CW)} port {rng.randint(32768, 60999)} ssh2: ED25519 SHA256:{rng.randbytes(12).hex()}"),
    (10, lambda: f"sshd[{rng.randint(1000, 60000)}]: Invalid user {rng.choice(words.take(1) + ['admin', 'test', 'oracle'])} from {rng.choice(CLIENTS)} port {rng.randint(32768, 60999)}"),
    (10, lambda: f"kernel: [{rng.uniform(1, 9e6):.6f}] {rng.choice(['EXT4-fs (vda1): re-mounted. Quota mode: none.', 'TCP: request_sock_TCP: Possible SYN flooding on port 80. Sending cookies.', 'virtio_net virtio0 eth0: link up'])}"),
    (10, lambda: f"nginx[{rng.randint(1000, 1200)}]: worker process {rng.randint(1000, 1200)} exited on signal 1"),
    (5, lambda: f"systemd-timesyncd[412]: Contacted time server {rng.choice(CLIENTS)}:123 (2.debian.pool.ntp.org)."),
]
SYS_CW = list(accumulate(w for w, _ in SYSLOG))


def syslog(path, budget, t):
    out, size = [], 0
    while size < budget:
        t += rng.expovariate(1 / 6)
        line = time.strftime("%b %e %H:%M:%S", time.gmtime(t)) + " files01 " + pick(SYSLOG, SYS_CW)[1]() + "\n"
        out.append(line)
        size += len(line)
    return write(path, "".join(out), int(t)), t


MEDIA = {"mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41",
         "jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x48\x00\x48\x00\x00",
         "mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00"}


def media(path, n):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    head = MEDIA[path.rsplit(".", 1)[1]]
    with open(path, "wb") as f:
        f.write(head)
        left = n - len(head)
        while left > 0:
            k = min(left, 1 << 20)
            f.write(rng.randbytes(k))
            left -= k
    t = when()
    os.utime(path, (t, t))
    return n


def sql_script(path, budget):
    """The database as SQL (customers, orders, notes); sqlite3 runs it."""
    with open(path, "w") as f:
        f.write("PRAGMA page_size = 4096;\nBEGIN;\n"
                "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, email TEXT, city TEXT, created INTEGER, balance REAL);\n"
                "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, at INTEGER, amount REAL, quantity INTEGER, status TEXT, sku TEXT);\n"
                "CREATE TABLE notes(id INTEGER PRIMARY KEY, customer INTEGER, at INTEGER, subject TEXT, body TEXT);\n")
        ncust = max(1000, budget // 2000)
        size = 0

        def rows(table, gen, n):
            nonlocal size
            for i in range(0, n, 500):
                vals = ",".join(gen(j) for j in range(i + 1, min(n, i + 500) + 1))
                f.write(f"INSERT INTO {table} VALUES {vals};\n")

        def cust(j):
            name, mail = person()
            return f"({j},'{name}','{mail}','{rng.choice(CITIES)}',{when()},{rng.uniform(-50, 5000):.2f})"

        def order(j):
            return (f"({j},{rng.randint(1, ncust)},{when()},{rng.uniform(2, 900):.2f},{rng.randint(1, 12)},"
                    f"'{rng.choice(STATUS)}','SKU-{rng.randrange(10 ** 5):05d}')")

        def note(j):
            return f"({j},{rng.randint(1, ncust)},{when()},'{title()}','{paragraph()}')"

        rows("customers", cust, ncust)
        # Orders ~ 45% of the file, notes (text) the rest.
        rows("orders", order, budget * 45 // 100 // 50)
        rows("notes", note, budget * 40 // 100 // 500)
        f.write("CREATE INDEX orders_customer ON orders(customer);\n"
                "CREATE INDEX notes_customer ON notes(customer);\nCOMMIT;\n")


started = time.time()
pct = lambda p: total * p // 100
sizes = {}
docs = os.path.join(home, "Documents")
sizes["Documents"] = documents(docs, ["reports", "notes", "letters", "web", "exports", "."], pct(12))
sizes["projects"] = documents(os.path.join(home, "projects"), ["shop/data", "shop/docs", "thesis", "blog"], pct(10), big=3)
sizes["mail"] = sum(mbox(os.path.join(home, "mail", b), pct(8) // 3) for b in ("inbox", "sent", "archive"))
logs = os.path.join(root, "var/log")
# Each log and its rotated .1 (older lines) are one continuous period.
sizes["nginx"] = sizes["syslog"] = 0
for name, gen, budget, t0 in (("nginx/access", access_log, pct(4) + pct(1) // 2, 330),
                              ("nginx/error", error_log, pct(1) // 4, 330),
                              ("syslog", syslog, pct(3), 320)):
    t = T0 + t0 * 86400
    for suffix in (".1", ""):
        n, t = gen(os.path.join(logs, name + (".log" if "/" in name else "") + suffix), budget, t)
        sizes[name.split("/")[0]] += n
m, k = 0, 0
for kind, share, lo, hi, d in (("mp4", 50, 8, 32, "Videos/VID"), ("jpg", 30, 1, 6, "Pictures/IMG"),
                               ("mp3", 20, 3, 9, "Music/track")):
    left = pct(25) * share // 100
    while left > 0:
        n = min(left, rng.randint(lo << 20, hi << 20))
        m += media(os.path.join(home, f"{d}_{20260000 + k}.{kind}"), n)
        left -= n
        k += 1
sizes["media"] = m
sql_script(sql_out, pct(10))
print("make-debian-images: user data: " + " ".join(f"{k}={v >> 20}MiB" for k, v in sizes.items()) + f" in {time.time() - started:.0f}s", file=sys.stderr)
PY
    rm -f "$home/db/shop.sqlite"
    sqlite3 "$home/db/shop.sqlite" <"$sql"
    rm -f "$sql"
    touch -d '2026-11-30 18:00:00Z' "$home/db/shop.sqlite"
    # The logs owned as nginx and rsyslog leave them (www-data:adm, root:adm).
    local nginx_owner=0:4
    [ -f "$root/var/log/nginx/access.log" ] && nginx_owner=$(stat -c %u:%g "$root/var/log/nginx/access.log")
    chown "$nginx_owner" "$root/var/log/nginx/"*.log*
    chown 0:4 "$root/var/log/syslog"*
    chmod 640 "$root/var/log/nginx/"*.log* "$root/var/log/syslog"*
    # Backups: duplicated content.
    cp -a "$home/Documents" "$home/backup/docs-2026-11-30"
    tar --sort=name --mtime='2026-11-30 03:00:00Z' --owner=0 --group=0 --numeric-owner \
        -C "$root/var/log" -cf "$home/backup/nginx-logs-2026-11-30.tar" nginx
    edit_etc "$root" files01 /home/alice/Documents
    if [ -f "$root/etc/logrotate.d/nginx" ]; then
        sed -i 's/rotate 14/rotate 52/' "$root/etc/logrotate.d/nginx"
    fi
    echo '30 3 * * * alice cp -a /home/alice/Documents /home/alice/backup/docs-$(date +\%F)' >"$root/etc/cron.d/backup-docs"
    echo "Europe/Paris" >"$root/etc/timezone"
    chown -R 1000:1000 "$home"
    log "user data: generated in $((SECONDS - t0)) s"
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

if [ ! -f "$OUT/rootfs/$R1-user/.ok" ]; then
    rm -rf "$OUT/rootfs/$R1-user" "$OUT/rootfs/$R1-user.partial"
    cp -a "$OUT/rootfs/$R1-web" "$OUT/rootfs/$R1-user.partial"
    rm -f "$OUT/rootfs/$R1-user.partial/.ok"
    add_mixed_user_data "$OUT/rootfs/$R1-user.partial"
    mv "$OUT/rootfs/$R1-user.partial" "$OUT/rootfs/$R1-user"
    touch "$OUT/rootfs/$R1-user/.ok"
fi

if [ -n "$R2" ]; then
    bootstrap "$R2" "$OUT/rootfs/$R2-min" || {
        log "skipping $R2"
        R2=""
    }
fi

# --- Images -------------------------------------------------------------------
mkimage() { # mkimage NAME [SIZE]
    local name=$1 size=${2:-$SIZE}
    [ -f "$OUT/$name.raw" ] && return 0
    log "mkfs.ext4 -d -> $name.raw ($size)"
    rm -f "$OUT/$name.raw.tmp"
    mkfs.ext4 -q -F -b 4096 -L "$name" -d "$OUT/rootfs/$name" "$OUT/$name.raw.tmp" "$size"
    mv "$OUT/$name.raw.tmp" "$OUT/$name.raw"
}
for n in "$R1-min" "$R1-web" "$R1-data" ${R2:+"$R2-min"}; do mkimage "$n"; done
mkimage "$R1-user" 3G

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
