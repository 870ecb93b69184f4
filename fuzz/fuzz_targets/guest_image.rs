//! Fuzzes guest inspection: the input is a whole disk image (partition
//! table, ext2/3/4 filesystem, and the files cbt reads from the guest:
//! os-release, hostname, the dpkg status and diversions files, apt
//! `sources.list` and deb822 `.sources`, yum `.repo` files, key files).
//!
//! The disk is held in memory behind the public [`Image`] trait and
//! described with [`DescribeOptions::packages_only`] (no user-data
//! manifest: a hostile filesystem may declare sparse files of any size,
//! and hashing them all would only measure the fuzzer's patience).
//!
//! Besides "no panic", the target checks that every filesystem reported
//! lies inside the disk, at most one is the root, and every error names
//! the image.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cbt_core::{Extent, ExtentScope, Image};
use cbt_teleport::{describe_image, DescribeOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Debug)]
struct MemImage {
    path: PathBuf,
    data: Vec<u8>,
}

impl Image for MemImage {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> cbt_core::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.data.len());
        match start.and_then(|s| Some((s, s.checked_add(buf.len())?))) {
            Some((s, e)) if e <= self.data.len() => {
                buf.copy_from_slice(&self.data[s..e]);
                Ok(())
            }
            _ => panic!(
                "read of {} bytes at {offset} past the image ({} bytes)",
                buf.len(),
                self.data.len()
            ),
        }
    }

    fn data_extents(&self, start: u64, end: u64, _scope: ExtentScope) -> cbt_core::Result<Vec<Extent>> {
        let end = end.min(self.len());
        Ok(if start < end { vec![Extent { start, end }] } else { Vec::new() })
    }
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let image = Arc::new(MemImage {
        path: PathBuf::from("fuzz.img"),
        data: data.to_vec(),
    });
    match describe_image(image, &DescribeOptions::packages_only()) {
        Ok(d) => {
            assert!(d.filesystems.iter().filter(|f| f.root).count() <= 1);
            for f in &d.filesystems {
                assert!(
                    f.offset.checked_add(f.len).is_some_and(|e| e <= len),
                    "filesystem {f:?} past the disk ({len} bytes)"
                );
            }
        }
        Err(e) => assert!(
            e.to_string().starts_with("fuzz.img"),
            "error does not name the image: {e}"
        ),
    }
});
