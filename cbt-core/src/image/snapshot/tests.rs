#![allow(clippy::unwrap_used)]
use super::*;
use std::os::unix::fs::FileExt;
use std::process::Command;

// ---- parse_snapshot_table on hand-built bytes ----

fn entry(l1_offset: u64, l1_size: u32, id: &str, name: &str, disk_size: Option<u64>) -> Vec<u8> {
    let extra: Vec<u8> = match disk_size {
        Some(d) => [0u64.to_be_bytes(), d.to_be_bytes()].concat(),
        None => Vec::new(),
    };
    let mut e = Vec::new();
    e.extend_from_slice(&l1_offset.to_be_bytes());
    e.extend_from_slice(&l1_size.to_be_bytes());
    e.extend_from_slice(&(id.len() as u16).to_be_bytes());
    e.extend_from_slice(&(name.len() as u16).to_be_bytes());
    e.extend_from_slice(&[0u8; 20]); // date, vm clock, vm_state_size
    e.extend_from_slice(&(extra.len() as u32).to_be_bytes());
    e.extend_from_slice(&extra);
    e.extend_from_slice(id.as_bytes());
    e.extend_from_slice(name.as_bytes());
    e
}

fn padded(mut e: Vec<u8>) -> Vec<u8> {
    e.resize(e.len().next_multiple_of(8), 0);
    e
}

#[test]
fn snapshot_table_parses_hand_built_entries() {
    let p = Path::new("t.qcow2");
    let mut table = padded(entry(65536, 16, "1", "first", Some(1 << 30)));
    let second = entry(131072, 2, "2", "zweite snapshot", None);
    table.extend_from_slice(&second);
    let snaps = parse_snapshot_table(&table, 2, 12345, p).unwrap();
    assert_eq!(
        snaps,
        vec![
            SnapshotInfo {
                id: "1".into(),
                name: "first".into(),
                l1_table_offset: 65536,
                l1_size: 16,
                disk_size: 1 << 30
            },
            SnapshotInfo {
                id: "2".into(),
                name: "zweite snapshot".into(),
                l1_table_offset: 131072,
                l1_size: 2,
                disk_size: 12345
            },
        ]
    );
    // Trailing bytes are ignored; fewer entries than present is fine.
    table.extend_from_slice(&[0xff; 100]);
    assert_eq!(parse_snapshot_table(&table, 1, 0, p).unwrap().len(), 1);
    assert!(parse_snapshot_table(&table, 0, 0, p).unwrap().is_empty());
}

#[test]
fn snapshot_table_rejects_truncated_and_absurd() {
    let p = Path::new("t.qcow2");
    let mut table = padded(entry(65536, 16, "1", "first", Some(1 << 30)));
    table.extend_from_slice(&entry(131072, 2, "2", "second", None));
    for cut in 0..table.len() {
        let e = parse_snapshot_table(&table[..cut], 2, 0, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.qcow2") && e.contains("truncated"), "{cut}: {e}");
    }
    let e = parse_snapshot_table(&table, 3, 0, p).unwrap_err().to_string();
    assert!(e.contains("entry 2"), "{e}");
    let e = parse_snapshot_table(&table, MAX_SNAPSHOTS + 1, 0, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absurd snapshot count"), "{e}");

    let mut big_extra = entry(0, 0, "1", "x", None);
    big_extra[36..40].copy_from_slice(&2000u32.to_be_bytes());
    big_extra.resize(4000, 0);
    let e = parse_snapshot_table(&big_extra, 1, 0, p).unwrap_err().to_string();
    assert!(e.contains("extra data size 2000"), "{e}");

    let e = parse_snapshot_table(&entry(0, u32::MAX, "1", "x", None), 1, 0, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absurd L1"), "{e}");
    let e = parse_snapshot_table(&entry(0, 1, "1", "x", Some(u64::MAX)), 1, 0, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absurd disk size"), "{e}");

    // Non-UTF-8 names are kept, lossily.
    let mut odd = entry(0, 0, "1", "ab", None);
    let n = odd.len();
    odd[n - 1] = 0xff;
    assert_eq!(parse_snapshot_table(&odd, 1, 7, p).unwrap()[0].name, "a\u{fffd}");
}

#[test]
fn snapshot_cache_evicts_least_recently_used() {
    let mut c: Cache<[u8]> = Cache::new(3, 1, 1, 10);
    for k in 0..3 {
        c.insert(k, Arc::from(vec![k as u8]));
    }
    assert!(c.get(0).is_some());
    c.insert(3, Arc::from(vec![3]));
    assert!(c.get(1).is_none());
    assert!(c.get(0).is_some() && c.get(2).is_some() && c.get(3).is_some());
}

// ---- against real qemu-img images ----

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img(dir: &Path, args: &[&str]) {
    run(dir, "qemu-img", args);
}

/// Runs qemu-io commands (`write -P 0x55 0 64k`, ...) on a qcow2 image.
fn qemu_io(dir: &Path, image: &str, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(image);
    run(dir, "qemu-io", &args);
}

/// Deterministic data: compressible text that differs per 512-byte line
/// block (`compressible`), or pseudo-random bytes.
fn data(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut line = 0u64;
    while out.len() < len {
        if compressible {
            out.extend_from_slice(format!("seed {seed} line {line:>12} of the test image\n").as_bytes());
            line += 1;
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// The snapshot's contents as qemu sees them: reverted to on a copy (in the
/// same directory, so a relative backing name still resolves), which also
/// gives the disk its size at snapshot time, then exported.
fn qemu_export(dir: &Path, image: &str, snapshot: &str) -> Vec<u8> {
    let copy = format!("reverted-{snapshot}-{image}");
    std::fs::copy(dir.join(image), dir.join(&copy)).unwrap();
    qemu_img(dir, &["snapshot", "-a", snapshot, &copy]);
    let out = format!("reverted-{snapshot}.raw");
    qemu_img(dir, &["convert", "-f", "qcow2", "-O", "raw", &copy, &out]);
    let reverted = std::fs::read(dir.join(&out)).unwrap();

    // A temporary load (`-l`) reads the same clusters but keeps the current
    // disk size, so it must agree on the common part.
    let out = format!("loaded-{snapshot}.raw");
    let opt = format!("snapshot.name={snapshot}");
    qemu_img(
        dir,
        &["convert", "-f", "qcow2", "-O", "raw", "-l", &opt, image, &out],
    );
    let loaded = std::fs::read(dir.join(&out)).unwrap();
    let common = reverted.len().min(loaded.len());
    assert!(
        reverted[..common] == loaded[..common],
        "qemu disagrees with itself on {image}@{snapshot}"
    );
    reverted
}

/// Reads the whole snapshot in 4 KiB blocks and with odd, cluster-crossing
/// reads, compares with qemu's export, and checks that its data extents
/// cover every non-zero byte.
fn check_against_qemu(dir: &Path, image: &str, snapshot: &str) -> SnapshotImage {
    let expected = qemu_export(dir, image, snapshot);
    let snap = SnapshotImage::open(&dir.join(image), snapshot).unwrap();
    assert_eq!(snap.len(), expected.len() as u64);
    assert!(snap.label().ends_with(&format!("{image}@{snapshot}")));

    let mut got = vec![0u8; expected.len()];
    for (i, block) in got.chunks_mut(4096).enumerate() {
        snap.read_at(block, i as u64 * 4096).unwrap();
    }
    assert!(got == expected, "{image}@{snapshot} differs from qemu's export");
    let mut odd = vec![0u8; 100_003];
    for offset in [0u64, 65_000, 1_000_001, expected.len() as u64 - 100_003] {
        snap.read_at(&mut odd, offset).unwrap();
        assert!(odd[..] == expected[offset as usize..offset as usize + odd.len()]);
    }
    assert!(snap.read_at(&mut [0u8; 2], expected.len() as u64 - 1).is_err());

    let extents = snap.data_extents(0, snap.len(), ExtentScope::All).unwrap();
    let mut pos = 0;
    for e in &extents {
        assert!(
            e.start >= pos && e.start < e.end && (e.start > pos || pos == 0),
            "{extents:?}"
        );
        assert!(expected[pos as usize..e.start as usize].iter().all(|&b| b == 0));
        pos = e.end;
    }
    assert!(pos <= snap.len());
    assert!(expected[pos as usize..].iter().all(|&b| b == 0));
    // A window not on cluster boundaries is clipped to the window.
    let inner = snap.data_extents(1000, 3_000_000, ExtentScope::All).unwrap();
    assert!(inner.iter().all(|e| e.start >= 1000 && e.end <= 3_000_000));
    snap
}

const MIB: usize = 1 << 20;

#[test]
fn snapshot_matches_qemu_for_plain_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.raw"), data(8 * MIB, 1, false)).unwrap();
    qemu_img(d, &["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"]);
    // A zeroed range and a discarded one before the snapshot.
    qemu_io(d, "a.qcow2", &["write -z 2M 192k", "discard 4M 1M"]);
    qemu_img(d, &["snapshot", "-c", "snap1", "a.qcow2"]);
    qemu_io(
        d,
        "a.qcow2",
        &["write -P 0x55 0 64k", "write -P 0x66 5M 1M", "write -z 6M 512k"],
    );

    let snap = check_against_qemu(d, "a.qcow2", "snap1");
    assert_eq!(snap.info().name, "snap1");
    assert_eq!(snap.info().id, "1");
    assert_eq!(snap.info().disk_size, 8 << 20);
    let extents = snap.data_extents(0, snap.len(), ExtentScope::All).unwrap();
    assert_eq!(extents.first().map(|e| e.start), Some(0));
    assert!(!extents
        .iter()
        .any(|e| e.start < (2 << 20) + 192 * 1024 && e.end > 2 << 20));
    assert!(!extents.iter().any(|e| e.start < 5 << 20 && e.end > 4 << 20));
    // Same result for the id, and for the top layer (there is no backing file).
    let by_id = SnapshotImage::open(&d.join("a.qcow2"), "1").unwrap();
    assert_eq!(by_id.info(), snap.info());
    assert_eq!(
        snap.data_extents(0, snap.len(), ExtentScope::TopLayer).unwrap(),
        extents
    );
    // And through the generic entry point.
    let spec = ImageSpec {
        path: d.join("a.qcow2"),
        snapshot: Some("snap1".into()),
        backing: Default::default(),
    };
    let generic = open_image(&spec).unwrap();
    let mut a = vec![0u8; 4096];
    generic.read_at(&mut a, 0).unwrap();
    assert_ne!(a, vec![0x55; 4096]);
}

#[test]
fn snapshot_matches_qemu_for_compressed_images() {
    for cluster_size in ["512", "4096", "65536", "2M"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut raw = data(8 * MIB, 2, true);
        raw[3 * MIB..4 * MIB].fill(0);
        std::fs::write(d.join("c.raw"), raw).unwrap();
        let opt = format!("cluster_size={cluster_size}");
        qemu_img(
            d,
            &[
                "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", &opt, "c.raw", "c.qcow2",
            ],
        );
        // The clusters really were compressed.
        let map = Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(d.join("c.qcow2"))
            .output();
        assert!(String::from_utf8_lossy(&map.unwrap().stdout).contains("\"compressed\": true"));
        qemu_img(d, &["snapshot", "-c", "before", "c.qcow2"]);
        qemu_io(d, "c.qcow2", &["write -P 0x55 0 1M", "write -P 0x77 7M 1M"]);
        let snap = check_against_qemu(d, "c.qcow2", "before");
        let mut probe = vec![0u8; 64];
        snap.read_at(&mut probe, 0).unwrap();
        assert!(probe.starts_with(b"seed 2 line"), "cluster size {cluster_size}");
    }
}

#[test]
fn snapshot_reads_backing_file_for_unallocated_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.raw"), data(8 * MIB, 3, false)).unwrap();
    qemu_img(
        d,
        &["convert", "-f", "raw", "-O", "qcow2", "base.raw", "base.qcow2"],
    );
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "8M",
        ],
    );
    qemu_io(d, "top.qcow2", &["write -P 0x11 1M 256k", "write -z 3M 64k"]);
    qemu_img(d, &["snapshot", "-c", "s", "top.qcow2"]);
    qemu_io(d, "top.qcow2", &["write -P 0x22 0 8M"]);

    let snap = check_against_qemu(d, "top.qcow2", "s");
    let all = snap.data_extents(0, snap.len(), ExtentScope::All).unwrap();
    let top = snap.data_extents(0, snap.len(), ExtentScope::TopLayer).unwrap();
    assert_eq!(
        top,
        vec![Extent {
            start: 1 << 20,
            end: (1 << 20) + (256 << 10)
        }]
    );
    assert_eq!(
        all,
        vec![
            Extent {
                start: 0,
                end: 3 << 20
            },
            Extent {
                start: (3 << 20) + (64 << 10),
                end: 8 << 20
            },
        ]
    );

    // A raw backing file, named relative to the image, with a snapshot
    // larger than the backing file: the rest reads as zeros.
    std::fs::write(d.join("small.raw"), data(2 * MIB, 4, false)).unwrap();
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "small.raw",
            "-F",
            "raw",
            "r.qcow2",
            "4M",
        ],
    );
    qemu_io(d, "r.qcow2", &["write -P 0x33 64k 64k"]);
    qemu_img(d, &["snapshot", "-c", "s", "r.qcow2"]);
    let snap = check_against_qemu(d, "r.qcow2", "s");
    let all = snap.data_extents(0, snap.len(), ExtentScope::All).unwrap();
    assert_eq!(
        all,
        vec![Extent {
            start: 0,
            end: 2 << 20
        }]
    );
}

#[test]
fn snapshot_two_snapshots_and_listing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qemu_img(d, &["create", "-f", "qcow2", "t.qcow2", "8M"]);
    qemu_io(d, "t.qcow2", &["write -P 0xaa 0 1M"]);
    qemu_img(d, &["snapshot", "-c", "one", "t.qcow2"]);
    qemu_io(d, "t.qcow2", &["write -P 0xbb 512k 1M"]);
    qemu_img(d, &["resize", "t.qcow2", "12M"]);
    qemu_io(d, "t.qcow2", &["write -P 0xcc 10M 64k"]);
    qemu_img(d, &["snapshot", "-c", "two", "t.qcow2"]);
    qemu_io(d, "t.qcow2", &["write -P 0xdd 0 12M"]);

    let list = list_snapshots(&d.join("t.qcow2")).unwrap();
    let names: Vec<_> = list
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str(), s.disk_size))
        .collect();
    assert_eq!(names, vec![("1", "one", 8 << 20), ("2", "two", 12 << 20)]);
    let one = check_against_qemu(d, "t.qcow2", "one");
    let two = check_against_qemu(d, "t.qcow2", "two");
    let mut b = [0u8; 1];
    one.read_at(&mut b, 600 << 10).unwrap();
    assert_eq!(b[0], 0xaa);
    two.read_at(&mut b, 600 << 10).unwrap();
    assert_eq!(b[0], 0xbb);
    assert_eq!(
        SnapshotImage::open(&d.join("t.qcow2"), "2").unwrap().info().name,
        "two"
    );

    let e = SnapshotImage::open(&d.join("t.qcow2"), "three").unwrap_err();
    assert!(
        matches!(e, Error::NoSuchSnapshot { ref name, .. } if name == "three"),
        "{e}"
    );
    assert!(list_snapshots(&d.join("nonexistent.qcow2")).is_err());
}

/// Copies `image` to `name` and applies `edit` to the copy's bytes.
fn corrupt(dir: &Path, image: &str, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(dir.join(image)).unwrap();
    edit(&mut bytes);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn assert_fails(p: &Path, snapshot: &str, words: &str) {
    let e = SnapshotImage::open(p, snapshot)
        .and_then(|s| {
            let mut buf = vec![0u8; s.len() as usize];
            s.read_at(&mut buf, 0)?;
            s.data_extents(0, s.len(), ExtentScope::All)
        })
        .unwrap_err()
        .to_string();
    let file = p.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(file) && e.contains(words), "{e}");
}

#[test]
fn snapshot_corrupt_tables_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.raw"), data(2 * MIB, 5, false)).unwrap();
    qemu_img(d, &["convert", "-f", "raw", "-O", "qcow2", "a.raw", "a.qcow2"]);
    qemu_img(d, &["snapshot", "-c", "snap1", "a.qcow2"]);
    let (header, len) = {
        let f = File::open(d.join("a.qcow2")).unwrap();
        read_header(&f, &d.join("a.qcow2")).unwrap()
    };
    let table = header.snapshots_offset as usize;
    let snaps = list_snapshots(&d.join("a.qcow2")).unwrap();
    let l1 = snaps[0].l1_table_offset as usize;

    let p = corrupt(d, "a.qcow2", "l1-past-end.qcow2", |b| {
        b[table..table + 8].copy_from_slice(&(len.next_multiple_of(65536) + 65536).to_be_bytes());
    });
    assert_fails(&p, "snap1", "past the end");
    let p = corrupt(d, "a.qcow2", "l1-huge.qcow2", |b| {
        b[table + 8..table + 12].copy_from_slice(&u32::MAX.to_be_bytes());
    });
    assert_fails(&p, "snap1", "absurd L1");
    let p = corrupt(d, "a.qcow2", "count.qcow2", |b| {
        b[60..64].copy_from_slice(&u32::MAX.to_be_bytes());
    });
    assert_fails(&p, "snap1", "snapshot count");
    let p = corrupt(d, "a.qcow2", "count-big.qcow2", |b| {
        b[60..64].copy_from_slice(&1000u32.to_be_bytes());
    });
    assert_fails(&p, "snap1", "snapshot table");
    let p = corrupt(d, "a.qcow2", "name-size.qcow2", |b| {
        b[table + 14..table + 16].copy_from_slice(&60_000u16.to_be_bytes());
    });
    assert_fails(
        &p,
        "snap1",
        "snapshot table entry 0 runs past the end of the file",
    );
    let p = corrupt(d, "a.qcow2", "misaligned.qcow2", |b| {
        b[64..72].copy_from_slice(&4u64.to_be_bytes());
    });
    assert_fails(&p, "snap1", "misaligned");
    let p = corrupt(d, "a.qcow2", "extra.qcow2", |b| {
        b[table + 36..table + 40].copy_from_slice(&100_000u32.to_be_bytes());
    });
    assert_fails(&p, "snap1", "extra data size");
    let p = corrupt(d, "a.qcow2", "table-offset.qcow2", |b| {
        b[64..72].copy_from_slice(&(len - 8).to_be_bytes());
    });
    assert_fails(&p, "snap1", "snapshot table");
    let p = corrupt(d, "a.qcow2", "truncated.qcow2", |b| b.truncate(table + 20));
    assert_fails(&p, "snap1", "past the end");

    // An L1 entry pointing past the end, and an L2 entry pointing past the end.
    let p = corrupt(d, "a.qcow2", "l2-past-end.qcow2", |b| {
        b[l1..l1 + 8].copy_from_slice(&((len + (1 << 20)) | (1 << 63)).to_be_bytes());
    });
    assert_fails(&p, "snap1", "L1 entry for guest offset 0 points past the end");
    let l2 = (u64::from_be_bytes(
        std::fs::read(d.join("a.qcow2")).unwrap()[l1..l1 + 8]
            .try_into()
            .unwrap(),
    ) & OFFSET_MASK) as usize;
    let p = corrupt(d, "a.qcow2", "data-past-end.qcow2", |b| {
        b[l2 + 16..l2 + 24].copy_from_slice(&((len + (1 << 20)) | (1 << 63)).to_be_bytes());
    });
    assert_fails(
        &p,
        "snap1",
        "L2 entry for guest offset 131072 points past the end",
    );
    let p = corrupt(d, "a.qcow2", "compressed-garbage.qcow2", |b| {
        b[l2 + 16..l2 + 24].copy_from_slice(&((1u64 << 62) | 512).to_be_bytes());
    });
    assert_fails(&p, "snap1", "does not inflate");

    // The unmodified image still reads, the error left no state behind.
    let f = File::open(d.join("a.qcow2")).unwrap();
    let mut b = [0u8; 8];
    f.read_at(&mut b, 0).unwrap();
    assert_eq!(&b[..4], b"QFI\xfb");
    check_against_qemu(d, "a.qcow2", "snap1");
}
