#!/usr/bin/env bash
# Rebuilds testdata/fixtures with qemu-img (qemu-utils) and python3.
set -euo pipefail
cd "$(dirname "$0")/fixtures"
rm -f ./*.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 qcow2-v3-c512-1MiB-empty.qcow2 1M
qemu-img create -q -f qcow2 -o cluster_size=512,compression_type=zstd qcow2-zstd-c512-1MiB.qcow2 1M
qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on qcow2-extl2-c16k-1MiB.qcow2 1M
cp qcow2-v3-c512-1MiB-empty.qcow2 qcow2-dirty-c512-1MiB.qcow2
printf '\x01' | dd of=qcow2-dirty-c512-1MiB.qcow2 bs=1 seek=79 conv=notrunc status=none
head -c 100 qcow2-v3-c512-1MiB-empty.qcow2 > qcow2-truncated-100b.qcow2
cp qcow2-v3-c512-1MiB-empty.qcow2 qcow2-l1-past-eof-c512.qcow2
python3 - <<'PY'
import struct
p = 'qcow2-l1-past-eof-c512.qcow2'
b = bytearray(open(p, 'rb').read())
b[40:48] = struct.pack('>Q', 1 << 40)
open(p, 'wb').write(b)
PY
