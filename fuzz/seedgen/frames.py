#!/usr/bin/env python3
"""Writes the frame_decoder seeds: one file per frame type, and whole
one-direction conversations, hand-encoded after cbt-net/src/frame.rs
(length u32 BE | type u8 | payload). Digests are stand-ins (BLAKE2s of a
label): the decoder never checks them. Block payloads are real zstd
frames made by the `zstd` CLI.

usage: frames.py OUTDIR
"""
import hashlib
import struct
import subprocess
import sys

out = sys.argv[1]


def frame(t, payload):
    return struct.pack('>IB', len(payload), t) + payload


def s(x):
    b = x.encode()
    return struct.pack('>H', len(b)) + b


def dg(label):
    return hashlib.blake2s(str(label).encode()).digest()


def zstd(data, *args):
    return subprocess.run(['zstd', '-q', '-c', *args], input=data, capture_output=True, check=True).stdout


nonce = bytes(range(32))
raw = bytes((i * 7) & 0xff for i in range(4096))
F = {
    'hello-push': frame(0x01, b'\x01' + s('vm/debian-12.qcow2') + nonce),
    'hello-pull': frame(0x01, b'\x02' + s('') + nonce),
    'challenge-auth': frame(0x02, nonce[::-1] + b'\x01'),
    'auth-proof': frame(0x03, b'\x01' + dg('p')),
    'auth-none': frame(0x03, b'\x00'),
    'accept-proof': frame(0x04, b'\x01' + dg('a')),
    'error': frame(0x05, s('image vm/x.qcow2 is busy: another transfer holds its lock')),
    'keepalive': frame(0x06, b''),
    'begin-2regions': frame(0x10, struct.pack('>QIHI', 10 << 30, 65536, 64, 2)
                            + struct.pack('>QQQ', 0, 1 << 20, 0)
                            + struct.pack('>QQQ', 1 << 20, 10 << 30, 1 << 20)
                            + s('disk.qcow2 (partition 1)')),
    'ready': frame(0x11, struct.pack('>I', 8)),
    'groups-mixed': frame(0x12, b'\x00' + dg(1) + b'\x01' + struct.pack('>Q', 12)
                          + b'\x00' + dg(2) + b'\x01' + struct.pack('>Q', 1)),
    'end': frame(0x13, dg('img') + struct.pack('>Q', 2560)),
    'need-digests': frame(0x14, struct.pack('>QQQ', 0, 5, 2559)),
    'digests-4': frame(0x15, struct.pack('>Q', 5) + b''.join(dg(i) for i in range(4))),
    'need-blocks': frame(0x16, struct.pack('>QI', 320, 3) + struct.pack('>QI', 4000, 1)),
    'block-raw': frame(0x17, struct.pack('>QB', 321, 0) + raw[:512]),
    'block-zstd': frame(0x17, struct.pack('>QB', 322, 1) + zstd(raw, '-19')),
    'block-zstdstream': frame(0x17, struct.pack('>QB', 323, 2) + zstd(raw[:2048], '--no-check')),
    'credit': frame(0x18, struct.pack('>Q', 7)),
    'done': frame(0x19, struct.pack('>QQQQ', 1000, 1400, 150, 2)),
}
for k, v in F.items():
    with open(f'{out}/frame-{k}.bin', 'wb') as f:
        f.write(v)
# Whole conversations, as the decoder sees one direction of a connection
# after the preamble.
convs = {
    'stream-sender-to-receiver': ['hello-push', 'auth-proof', 'begin-2regions', 'groups-mixed',
                                  'digests-4', 'block-raw', 'block-zstd', 'keepalive', 'end'],
    'stream-receiver-to-sender': ['challenge-auth', 'accept-proof', 'ready', 'need-digests',
                                  'need-blocks', 'credit', 'done'],
}
for name, keys in convs.items():
    with open(f'{out}/{name}.bin', 'wb') as f:
        f.write(b''.join(F[k] for k in keys))
# A whole frame, then a partial one: the decoder must report Incomplete.
with open(f'{out}/stream-partial-tail.bin', 'wb') as f:
    f.write(F['ready'] + F['block-raw'][:100])
