//! Committed tiny fixtures: every defect and unsupported feature gets an
//! error that names the file and the problem.

use std::path::PathBuf;

use cbt_core::{open_image, ImageSpec};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/fixtures")
        .join(name)
}

fn open_err(name: &str) -> String {
    match open_image(&ImageSpec::file(fixture(name))) {
        Ok(img) => panic!("{name} opened: {img:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "error does not name the file: {msg}");
            msg
        }
    }
}

#[test]
fn valid_empty_qcow2_reads_as_zeros() {
    let img = open_image(&ImageSpec::file(fixture("qcow2-v3-c512-1MiB-empty.qcow2"))).unwrap();
    assert_eq!(img.len(), 1 << 20);
    let mut buf = vec![1u8; 4096];
    img.read_at(&mut buf, 8192).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert!(img
        .data_extents(0, 1 << 20, cbt_core::ExtentScope::All)
        .unwrap()
        .is_empty());
}

#[test]
fn unsupported_features_are_named() {
    assert!(open_err("qcow2-dirty-c512-1MiB.qcow2").contains("dirty"));
    assert!(open_err("qcow2-zstd-c512-1MiB.qcow2").contains("zstd"));
    assert!(open_err("qcow2-extl2-c16k-1MiB.qcow2").contains("extended L2"));
}

#[test]
fn defects_are_described() {
    let e = open_err("qcow2-l1-past-eof-c512.qcow2");
    assert!(e.contains("L1 table") && e.contains("past the end"), "{e}");
    let e = open_err("qcow2-truncated-100b.qcow2");
    assert!(e.contains("truncated") || e.contains("header"), "{e}");
}
