// A failed unwrap in a test is a test failure with its cause printed.
#![allow(clippy::unwrap_used)]
use super::*;
use std::cell::RefCell;

const MIB: u64 = 1 << 20;
const LINUX_GUID: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];

/// A sparse in-memory disk: a length and the few regions written.
/// Lets tests use realistic sizes (and huge ones) without allocating them.
struct TestDisk {
    len: u64,
    regions: Vec<(u64, Vec<u8>)>,
    /// Size of the largest single read asked for.
    max_read: RefCell<usize>,
    /// Number of reads asked for.
    reads: RefCell<usize>,
}

impl TestDisk {
    fn new(len: u64) -> Self {
        TestDisk {
            len,
            regions: Vec::new(),
            max_read: RefCell::new(0),
            reads: RefCell::new(0),
        }
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        self.regions.push((offset, bytes.to_vec()));
    }

    /// Reads like an image: later writes win, unwritten bytes are zero,
    /// and a read past the end is an error (the parser must never ask).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        *self.reads.borrow_mut() += 1;
        let mut max = self.max_read.borrow_mut();
        *max = (*max).max(buf.len());
        let end = offset + buf.len() as u64;
        if end > self.len {
            return Err(Error::Config(format!("read {offset}..{end} past {}", self.len)));
        }
        buf.fill(0);
        for (at, bytes) in &self.regions {
            let r_end = at + bytes.len() as u64;
            let lo = offset.max(*at);
            let hi = end.min(r_end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
            }
        }
        Ok(())
    }

    fn parse(&self) -> Result<Vec<Partition>> {
        parse_partitions(
            self.len,
            &mut |off, buf| self.read(off, buf),
            Path::new("test.img"),
        )
    }
}

/// An MBR or EBR sector with `entries` as (slot, boot, type, start, sectors).
fn mbr(entries: &[(usize, u8, u8, u32, u32)]) -> [u8; 512] {
    let mut s = [0u8; 512];
    for &(slot, boot, kind, start, sectors) in entries {
        let e = MBR_ENTRIES_AT + slot * MBR_ENTRY_LEN;
        s[e] = boot;
        s[e + 4] = kind;
        s[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn part(start_sector: u64, sectors: u64) -> Partition {
    Partition {
        start: start_sector * 512,
        len: sectors * 512,
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(bytes);
    c.sum()
}

/// A GPT entry array of `count` entries of `size` bytes holding
/// `parts` as (first, last) sectors.
fn gpt_array(parts: &[(u64, u64)], count: u32, size: u32) -> Vec<u8> {
    let mut a = vec![0u8; count as usize * size as usize];
    for (i, &(first, last)) in parts.iter().enumerate() {
        let e = i * size as usize;
        a[e..e + 16].copy_from_slice(&LINUX_GUID);
        a[e + 16] = i as u8 + 1; // unique partition GUID
        a[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
        a[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
    }
    a
}

/// A GPT header sector with a correct header CRC.
fn gpt_header(sector: u64, my_lba: u64, entries_lba: u64, count: u32, size: u32, array_crc: u32) -> Vec<u8> {
    let mut h = vec![0u8; sector as usize];
    h[0..8].copy_from_slice(GPT_SIGNATURE);
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&count.to_le_bytes());
    h[84..88].copy_from_slice(&size.to_le_bytes());
    h[88..92].copy_from_slice(&array_crc.to_le_bytes());
    let crc = crc32(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A GPT disk with protective MBR, primary and backup headers and arrays.
fn gpt_disk(sector: u64, len: u64, parts: &[(u64, u64)]) -> TestDisk {
    let mut d = TestDisk::new(len);
    let last = len / sector - 1;
    d.write(
        0,
        &mbr(&[(0, 0, 0xEE, 1, u32::try_from(last).unwrap_or(u32::MAX))]),
    );
    let array = gpt_array(parts, 128, 128);
    let array_crc = crc32(&array);
    let array_sectors = array.len() as u64 / sector;
    d.write(sector, &gpt_header(sector, 1, 2, 128, 128, array_crc));
    d.write(2 * sector, &array);
    let backup_array = last - array_sectors;
    d.write(
        last * sector,
        &gpt_header(sector, last, backup_array, 128, 128, array_crc),
    );
    d.write(backup_array * sector, &array);
    d
}

#[test]
fn partition_mbr_at_sector_63_and_2048() {
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &mbr(&[(0, 0x80, 0x83, 63, 1985), (1, 0, 0x83, 2048, 8192)]));
    assert_eq!(d.parse().unwrap(), vec![part(63, 1985), part(2048, 8192)]);
    assert_eq!(part(63, 1).start % 4096, 3584);
}

#[test]
fn partition_mbr_entries_out_of_order_come_out_sorted() {
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &mbr(&[(0, 0, 0x83, 40960, 100), (3, 0, 0x07, 2048, 100)]));
    assert_eq!(d.parse().unwrap(), vec![part(2048, 100), part(40960, 100)]);
}

#[test]
fn partition_extended_chain_lists_logical_partitions() {
    let mut d = TestDisk::new(64 * MIB);
    // Primary at 2048, extended container at 8192.
    d.write(0, &mbr(&[(0, 0, 0x83, 2048, 2048), (1, 0, 0x0F, 8192, 20000)]));
    // First EBR: logical at 8192 + 2048, next EBR at 8192 + 6144.
    d.write(
        8192 * 512,
        &mbr(&[(0, 0, 0x83, 2048, 2048), (1, 0, 0x05, 6144, 6000)]),
    );
    // Second EBR: logical at 14336 + 63, end of chain.
    d.write(14336 * 512, &mbr(&[(0, 0, 0x83, 63, 4000)]));
    assert_eq!(
        d.parse().unwrap(),
        vec![part(2048, 2048), part(10240, 2048), part(14399, 4000)]
    );
}

#[test]
fn partition_ebr_loop_terminates() {
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &mbr(&[(0, 0, 0x05, 8192, 20000)]));
    // First EBR links to the second, which links back to the first.
    d.write(
        8192 * 512,
        &mbr(&[(0, 0, 0x83, 2048, 2048), (1, 0, 0x05, 6144, 6000)]),
    );
    d.write(
        14336 * 512,
        &mbr(&[(0, 0, 0x83, 63, 4000), (1, 0, 0x05, 0, 6000)]),
    );
    assert_eq!(d.parse().unwrap(), vec![part(10240, 2048), part(14399, 4000)]);
    assert!(*d.reads.borrow() <= 3);

    // An EBR linking to itself.
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &mbr(&[(0, 0, 0x85, 8192, 20000)]));
    d.write(
        8192 * 512,
        &mbr(&[(0, 0, 0x83, 2048, 2048), (1, 0, 0x05, 0, 20000)]),
    );
    assert_eq!(d.parse().unwrap(), vec![part(10240, 2048)]);
}

#[test]
fn partition_long_ebr_chain_is_bounded() {
    let mut d = TestDisk::new(1 << 40);
    d.write(0, &mbr(&[(0, 0, 0x05, 2048, u32::MAX)]));
    for i in 0..1000u32 {
        let ebr = 2048 + i * 100;
        d.write(
            u64::from(ebr) * 512,
            &mbr(&[(0, 0, 0x83, 1, 99), (1, 0, 0x05, (i + 1) * 100, 100)]),
        );
    }
    let parts = d.parse().unwrap();
    assert_eq!(parts.len(), MAX_EBRS);
    assert!(*d.reads.borrow() <= MAX_EBRS + 1);
}

#[test]
fn partition_ebr_past_end_or_unsigned_stops_chain() {
    let mut d = TestDisk::new(8 * MIB);
    d.write(0, &mbr(&[(0, 0, 0x83, 2048, 100), (1, 0, 0x05, 1 << 30, 100)]));
    assert_eq!(d.parse().unwrap(), vec![part(2048, 100)]);

    let mut d = TestDisk::new(8 * MIB);
    d.write(0, &mbr(&[(0, 0, 0x05, 4096, 8192)]));
    let mut ebr = mbr(&[(0, 0, 0x83, 63, 100)]);
    ebr[510] = 0;
    d.write(4096 * 512, &ebr);
    assert_eq!(d.parse().unwrap(), vec![]);
}

#[test]
fn partition_gpt_two_entries() {
    let d = gpt_disk(512, 64 * MIB, &[(2048, 22527), (34816, 43007)]);
    assert_eq!(d.parse().unwrap(), vec![part(2048, 20480), part(34816, 8192)]);
}

#[test]
fn partition_gpt_4096_byte_sectors() {
    let d = gpt_disk(4096, 64 * MIB, &[(256, 2815), (4352, 5375)]);
    assert_eq!(
        d.parse().unwrap(),
        vec![
            Partition {
                start: 256 * 4096,
                len: 2560 * 4096
            },
            Partition {
                start: 4352 * 4096,
                len: 1024 * 4096
            },
        ]
    );
}

#[test]
fn partition_gpt_bad_primary_uses_backup() {
    let mut d = gpt_disk(512, 64 * MIB, &[(2048, 4095)]);
    // Corrupt a byte covered by the primary header's CRC.
    let mut h = gpt_header(512, 1, 2, 128, 128, 0);
    h[40] = 1;
    d.write(512, &h);
    assert_eq!(d.parse().unwrap(), vec![part(2048, 2048)]);

    // Corrupt the primary entry array: its CRC no longer matches.
    let mut d = gpt_disk(512, 64 * MIB, &[(2048, 4095)]);
    d.write(2 * 512 + 32, &[9]);
    assert_eq!(d.parse().unwrap(), vec![part(2048, 2048)]);

    // Both headers bad: no partitions, no error.
    let last = 64 * MIB / 512 - 1;
    d.write(512, &[0; 8]);
    d.write(last * 512, &[0; 8]);
    assert_eq!(d.parse().unwrap(), vec![]);
}

#[test]
fn partition_gpt_absurd_fields_give_no_partitions() {
    let cases: [(u64, u32, u32); 6] = [
        (2, u32::MAX, 128),            // entry count
        (2, GPT_MAX_ENTRIES + 1, 128), // entry count just over
        (2, 128, u32::MAX),            // entry size
        (2, 128, 64),                  // entry size below 128
        (2, 128, 132),                 // entry size not a multiple of 8
        (u64::MAX / 256, 128, 128),    // array far past the end, LBA * 512 overflows
    ];
    for (entries_lba, count, size) in cases {
        let mut d = TestDisk::new(1 << 40);
        d.write(0, &mbr(&[(0, 0, 0xEE, 1, u32::MAX)]));
        d.write(512, &gpt_header(512, 1, entries_lba, count, size, 0));
        assert_eq!(d.parse().unwrap(), vec![], "{entries_lba} {count} {size}");
        // Only sectors were read, never an array sized from the header.
        assert!(*d.max_read.borrow() <= 4096);
    }
}

#[test]
fn partition_gpt_large_valid_array_is_read_in_chunks() {
    let count = GPT_MAX_ENTRIES;
    let size = 256;
    let mut d = TestDisk::new(1 << 30);
    d.write(0, &mbr(&[(0, 0, 0xEE, 1, u32::MAX)]));
    let array = gpt_array(&[(16384, 20479)], count, size);
    d.write(512, &gpt_header(512, 1, 2, count, size, crc32(&array)));
    d.write(1024, &array);
    assert_eq!(d.parse().unwrap(), vec![part(16384, 4096)]);
    assert!(*d.max_read.borrow() <= GPT_READ_CHUNK);
}

#[test]
fn partition_gpt_weird_entries_are_dropped() {
    // Reversed range, huge LBAs that overflow bytes, an overlap.
    let d = gpt_disk(
        512,
        64 * MIB,
        &[
            (4096, 2048),
            (u64::MAX - 1, u64::MAX),
            (0, u64::MAX),
            (2048, 4095),
            (3000, 5000),
        ],
    );
    // (0, MAX) is clipped to the disk and then wins: it starts first.
    assert_eq!(
        d.parse().unwrap(),
        vec![Partition {
            start: 0,
            len: 64 * MIB
        }]
    );

    let d = gpt_disk(
        512,
        64 * MIB,
        &[(4096, 2048), (u64::MAX - 1, u64::MAX), (2048, 4095), (3000, 5000)],
    );
    assert_eq!(d.parse().unwrap(), vec![part(2048, 2048)]);
}

#[test]
fn partition_protective_mbr_without_gpt_is_empty() {
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &mbr(&[(0, 0, 0xEE, 1, 131071)]));
    assert_eq!(d.parse().unwrap(), vec![]);
}

#[test]
fn partition_no_signature_or_tiny_disk_is_empty() {
    let mut d = TestDisk::new(64 * MIB);
    let mut s = mbr(&[(0, 0, 0x83, 2048, 100)]);
    s[511] = 0;
    d.write(0, &s);
    assert_eq!(d.parse().unwrap(), vec![]);

    assert_eq!(TestDisk::new(0).parse().unwrap(), vec![]);
    let mut d = TestDisk::new(511);
    d.write(0, &mbr(&[(0, 0, 0x83, 1, 1)])[..511]);
    assert_eq!(d.parse().unwrap(), vec![]);
}

#[test]
fn partition_truncated_disk_clips_and_drops() {
    // The table describes a 64 MiB disk; only 4 MiB are there.
    let mut d = TestDisk::new(4 * MIB);
    d.write(
        0,
        &mbr(&[(0, 0, 0x83, 2048, 100_000), (1, 0, 0x83, 102_400, 20_000)]),
    );
    assert_eq!(
        d.parse().unwrap(),
        vec![Partition {
            start: 2048 * 512,
            len: 4 * MIB - 2048 * 512
        }]
    );

    // A GPT whose entry array is cut off, and no backup: nothing.
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &mbr(&[(0, 0, 0xEE, 1, 131071)]));
    d.write(512, &gpt_header(512, 1, 131000, 128, 128, 0));
    assert_eq!(d.parse().unwrap(), vec![]);
}

#[test]
fn partition_filesystem_boot_sectors_are_not_tables() {
    // A FAT32 boot sector whose boot message runs over the entries.
    let mut s = [0u8; 512];
    s[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    s[3..11].copy_from_slice(b"MSDOS5.0");
    s[11..13].copy_from_slice(&512u16.to_le_bytes());
    s[13] = 8;
    s[0x52..0x5A].copy_from_slice(b"FAT32   ");
    s[446..462].copy_from_slice(&[0, 0, 0, 0, 0x83, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0]);
    s[510] = 0x55;
    s[511] = 0xAA;
    let mut d = TestDisk::new(64 * MIB);
    d.write(0, &s);
    assert_eq!(d.parse().unwrap(), vec![]);

    // NTFS.
    s[3..11].copy_from_slice(b"NTFS    ");
    s[0x52..0x5A].fill(0);
    d.write(0, &s);
    assert_eq!(d.parse().unwrap(), vec![]);

    // Unknown boot code with text where the boot flags are.
    let mut s = mbr(&[(0, 0, 0x83, 2048, 100)]);
    s[446 + 16..446 + 32].copy_from_slice(b"Press any key...");
    d.write(0, &s);
    assert_eq!(d.parse().unwrap(), vec![]);

    // An entry claiming sector 0.
    d.write(0, &mbr(&[(0, 0, 0x83, 0, 100)]));
    assert_eq!(d.parse().unwrap(), vec![]);
}

#[test]
fn partition_overlaps_and_empty_entries_are_dropped() {
    let mut d = TestDisk::new(64 * MIB);
    d.write(
        0,
        &mbr(&[
            (0, 0, 0x83, 4096, 4096),
            (1, 0, 0x83, 2048, 4096),
            (2, 0, 0x83, 20000, 0),
            (3, 0, 0x83, 6144, 10),
        ]),
    );
    assert_eq!(d.parse().unwrap(), vec![part(2048, 4096), part(6144, 10)]);
}

#[test]
fn partition_read_errors_are_returned() {
    let mut fail = |_: u64, _: &mut [u8]| -> Result<()> { Err(Error::malformed("x", "boom")) };
    let err = parse_partitions(MIB, &mut fail, Path::new("x")).unwrap_err();
    assert!(err.to_string().contains("boom"));
}

#[test]
fn partition_read_partitions_on_raw_image() {
    use crate::image::RawImage;
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&mbr(&[(0, 0, 0x83, 63, 1000)])).unwrap();
    f.set_len(MIB).unwrap();
    drop(f);
    let image = RawImage::open(&path).unwrap();
    assert_eq!(read_partitions(&image).unwrap(), vec![part(63, 1000)]);
}

/// Partitions `path` with `sfdisk`, feeding it `script`. Returns false
/// (after saying why) when `sfdisk` is not installed.
fn sfdisk(path: &Path, script: &str) -> bool {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping: cannot run sfdisk ({e}); install util-linux's fdisk package");
            return false;
        }
    };
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn sparse_disk(dir: &Path, name: &str, len: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

#[test]
fn partition_sfdisk_mbr_with_logical_partitions() {
    use crate::image::RawImage;
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_disk(dir.path(), "mbr.img", 64 * MIB);
    let script = "start=63, size=40000, type=83\n\
                  start=40960, size=60000, type=5\n\
                  start=43008, size=8192, type=83\n\
                  start=53248, size=8192, type=83\n";
    if !sfdisk(&path, script) {
        return;
    }
    let parts = read_partitions(&RawImage::open(&path).unwrap()).unwrap();
    assert_eq!(parts, vec![part(63, 40000), part(43008, 8192), part(53248, 8192)]);
    assert_eq!(parts[0].start, 63 * 512);
}

#[test]
fn partition_sfdisk_gpt() {
    use crate::image::RawImage;
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_disk(dir.path(), "gpt.img", 64 * MIB);
    let script = "label: gpt\nstart=2048, size=20480\nstart=34816, size=8192\n";
    if !sfdisk(&path, script) {
        return;
    }
    let parts = read_partitions(&RawImage::open(&path).unwrap()).unwrap();
    assert_eq!(parts, vec![part(2048, 20480), part(34816, 8192)]);

    // Wipe the primary header: the backup at the end still works.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0u8; 512], 512).unwrap();
    drop(f);
    let parts = read_partitions(&RawImage::open(&path).unwrap()).unwrap();
    assert_eq!(parts, vec![part(2048, 20480), part(34816, 8192)]);
}
