//! Tests of finding sources and preparing blobs (the sidecar's are in `blob.rs`).

use std::time::Duration;

use super::deb::tests::deb;
use super::*;

#[test]
fn sources_are_recognised_and_one_compression_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let touch = |rel: &str| {
        let p = d.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"x").unwrap();
    };
    for rel in [
        "archives/a_1_amd64.deb",
        "archives/b.udeb",
        "archives/lock",
        "archives/partial/c.deb.FAILED",
        "dists/x/InRelease",
        "dists/x/Release",
        "dists/x/Release.gpg",
        "dists/x/main/binary-amd64/Packages.gz",
        "dists/x/main/binary-amd64/Packages.xz",
        "dists/x/main/binary-amd64/Packages.diff/Index",
        "dists/x/main/i18n/Translation-en.bz2",
        "dists/x/main/i18n/Translation-de.zst",
        "dists/x/main/source/Sources.gz",
        "lists/m_dists_x_main_binary-amd64_Packages",
        "lists/m_dists_x_main_binary-amd64_Packages.xz",
        "acng/debrep/dists/x/main/Contents-amd64.gz.head",
    ] {
        touch(rel);
    }
    let mut found = Vec::new();
    find_sources(d, &mut found).unwrap();
    let picked: Vec<(String, BlobSource)> = pick_sources(found)
        .into_iter()
        .map(|(p, k)| {
            (
                p.strip_prefix(d.canonicalize().unwrap())
                    .unwrap()
                    .display()
                    .to_string(),
                k,
            )
        })
        .collect();
    let index = BlobSource::AptIndex;
    assert_eq!(
        picked,
        [
            ("archives/a_1_amd64.deb", BlobSource::Archive),
            ("archives/b.udeb", BlobSource::Archive),
            ("dists/x/InRelease", index(IndexCompression::Plain)),
            ("dists/x/Release", index(IndexCompression::Plain)),
            (
                "dists/x/main/binary-amd64/Packages.xz",
                index(IndexCompression::Xz)
            ),
            (
                "dists/x/main/i18n/Translation-de.zst",
                index(IndexCompression::Zstd)
            ),
            ("dists/x/main/source/Sources.gz", index(IndexCompression::Gzip)),
            (
                "lists/m_dists_x_main_binary-amd64_Packages",
                index(IndexCompression::Plain)
            ),
        ]
        .map(|(p, k)| (p.to_string(), k))
    );
    // A file given directly is an index file by its name, else an archive.
    let mut one = Vec::new();
    find_sources(&d.join("dists/x/Release.gpg"), &mut one).unwrap();
    find_sources(&d.join("dists/x/Release"), &mut one).unwrap();
    let kinds: Vec<BlobSource> = one.iter().map(|s| s.1).collect();
    assert_eq!(kinds, [BlobSource::Archive, index(IndexCompression::Plain)]);
}

#[test]
fn index_files_become_padded_blobs() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mirror/dists/x/main/binary-amd64");
    fs::create_dir_all(&m).unwrap();
    let text: Vec<u8> = (0..20_000u32)
        .flat_map(|i| format!("Package: p{i}\nVersion: {}\n\n", i % 13).into_bytes())
        .collect();
    let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(&text).unwrap();
    let xz = e.finish().unwrap();
    fs::write(m.join("Packages.xz"), &xz).unwrap();
    // A truncated one beside a good one: skipped, named, the rest kept.
    let bad = dir.path().join("mirror/dists/y/main/binary-amd64");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("Packages.xz"), &xz[..xz.len() / 2]).unwrap();
    fs::write(dir.path().join("mirror/dists/x/Release"), b"Suite: x\n").unwrap();
    let cache = dir.path().join("cache");
    let roots = [dir.path().join("mirror")];
    let b = prepare_package_blobs(&roots, Some(&cache), 4096, 2).unwrap();
    assert_eq!((b.archives(), b.index_files()), (0, 2));
    assert_eq!((b.archives_skipped(), b.index_files_skipped()), (0, 1));
    assert!(
        b.skipped[0]
            .reason
            .contains("dists/y/main/binary-amd64/Packages.xz")
            && b.skipped[0].reason.contains("xz stream"),
        "{:?}",
        b.skipped
    );
    let p = b
        .blobs
        .iter()
        .find(|x| x.source.ends_with("Packages.xz"))
        .unwrap();
    assert_eq!(p.kind, BlobSource::AptIndex(IndexCompression::Xz));
    assert_eq!(
        (p.files, p.data_bytes, p.capped, p.reused),
        (1, text.len() as u64, false, false)
    );
    let blob = fs::read(&p.blob).unwrap();
    let padded = (text.len() as u64).div_ceil(4096) * 4096;
    assert_eq!(blob.len() as u64, 4096 + padded);
    assert!(blob[..4096].iter().all(|&x| x == 0));
    assert!(blob[4096..4096 + text.len()] == text[..]);
    assert!(blob[4096 + text.len()..].iter().all(|&x| x == 0));
    let r = b.blobs.iter().find(|x| x.source.ends_with("Release")).unwrap();
    assert_eq!(fs::read(&r.blob).unwrap().len(), 2 * 4096);
    let first = p.blob.clone();
    drop(b);

    let again = prepare_package_blobs(&roots, Some(&cache), 4096, 1).unwrap();
    assert!(again.blobs.iter().all(|x| x.reused));
    assert_eq!(again.index_files_skipped(), 1);
    drop(again);

    // Once the plain file is there too, it is used instead of the .xz.
    fs::write(m.join("Packages"), &text).unwrap();
    let plain = prepare_package_blobs(&roots, Some(&cache), 4096, 1).unwrap();
    let p = plain
        .blobs
        .iter()
        .find(|x| x.source.ends_with("main/binary-amd64/Packages"))
        .unwrap();
    assert_eq!(p.kind, BlobSource::AptIndex(IndexCompression::Plain));
    assert_eq!(plain.index_files(), 2);
    assert!(fs::read(&p.blob).unwrap() == fs::read(&first).unwrap());
    assert!(!plain.blobs.iter().any(|x| x.blob == first));
}

#[test]
fn blobs_are_padded_reused_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    fs::create_dir_all(&debs).unwrap();
    let a: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
    fs::write(debs.join("p.deb"), deb(&[("./usr/a", &a), ("./usr/b", b"xyz")])).unwrap();
    fs::write(debs.join("broken.deb"), b"!<arch>\nnonsense").unwrap();
    let cache = dir.path().join("cache");
    let b = prepare_package_blobs(std::slice::from_ref(&debs), Some(&cache), 4096, 1).unwrap();
    assert_eq!(b.blobs.len(), 1);
    assert_eq!(b.skipped.len(), 1);
    assert!(b.skipped[0].reason.contains("broken.deb"), "{:?}", b.skipped);
    let blob = fs::read(&b.blobs[0].blob).unwrap();
    assert_eq!(blob.len(), 4096 * 4);
    assert!(blob[..4096].iter().all(|&x| x == 0));
    assert_eq!(&blob[4096..4096 + 5000], &a[..]);
    assert!(blob[4096 + 5000..3 * 4096].iter().all(|&x| x == 0));
    assert_eq!(&blob[3 * 4096..3 * 4096 + 3], b"xyz");
    assert!(!b.blobs[0].reused);
    let first = b.blobs[0].blob.clone();
    drop(b);

    let again = prepare_package_blobs(std::slice::from_ref(&debs), Some(&cache), 4096, 1).unwrap();
    assert!(again.blobs[0].reused);
    assert_eq!(again.blobs[0].control.as_ref().unwrap().package, "t");

    // A changed archive gets a new blob; the old one is collected.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(debs.join("p.deb"), deb(&[("./usr/a", b"other")])).unwrap();
    let changed = prepare_package_blobs(&[debs], Some(&cache), 4096, 1).unwrap();
    assert!(!changed.blobs[0].reused);
    assert_ne!(changed.blobs[0].blob, first);
    assert!(!first.exists());
}

#[test]
fn scratch_directory_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.deb"), deb(&[("./x", b"1")])).unwrap();
    let b = prepare_package_blobs(&[dir.path().to_path_buf()], None, 4096, 0).unwrap();
    let blob = b.blobs[0].blob.clone();
    assert!(blob.exists());
    drop(b);
    assert!(!blob.exists());
}
