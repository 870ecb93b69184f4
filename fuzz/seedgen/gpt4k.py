#!/usr/bin/env python3
# Writes to stdout the first 8 sectors (4096-byte sectors) of a GPT disk with two
# partitions: protective MBR, header at LBA 1, 128-entry array at LBA 2.
import struct, zlib, uuid, sys
S = 4096
disk_sectors = 1 << 20  # 4 GiB disk
linux = uuid.UUID('0FC63DAF-8483-4772-8E79-3D69B8477DE4').bytes_le
ents = bytearray(128 * 128)
for i, (first, last, name) in enumerate([(6, 261, 'boot'), (262, 100000, 'root')]):
    e = linux + uuid.UUID(int=i + 1).bytes_le + struct.pack('<QQQ', first, last, 0) + name.encode('utf-16-le').ljust(72, b'\0')
    ents[i*128:(i+1)*128] = e
hdr = bytearray(S)
h = struct.pack('<8sIII I QQQQ 16s QIII', b'EFI PART', 0x10000, 92, 0, 0,
                1, disk_sectors - 1, 6, disk_sectors - 6, uuid.UUID(int=0xabc).bytes_le,
                2, 128, 128, zlib.crc32(ents))
h = bytearray(h)
h[16:20] = struct.pack('<I', zlib.crc32(h))
hdr[:92] = h
mbr = bytearray(S)
mbr[446:462] = bytes([0, 0, 2, 0, 0xEE, 0xff, 0xff, 0xff]) + struct.pack('<II', 1, 0xffffffff)
mbr[510:512] = b'\x55\xaa'
sys.stdout.buffer.write(bytes(mbr) + bytes(hdr) + bytes(ents) + bytes(S * 2))
