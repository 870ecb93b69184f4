//! qcow2 internal snapshots (placeholder: being written).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::qcow2_header::Qcow2Header;
use super::{Extent, ExtentScope, Image};
use crate::error::{Error, Result};

/// One entry of a qcow2 snapshot table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's unique id string.
    pub id: String,
    /// The snapshot's name.
    pub name: String,
    /// File offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries in that L1 table.
    pub l1_size: u32,
    /// Virtual disk size when the snapshot was taken.
    pub disk_size: u64,
}

/// Parses `count` snapshot-table entries from `bytes`.
pub fn parse_snapshot_table(bytes: &[u8], count: u32, default_disk_size: u64, path: &Path) -> Result<Vec<SnapshotInfo>> {
    let _ = (bytes, count, default_disk_size);
    Err(Error::malformed(path, "snapshot tables are not supported yet"))
}

/// Reads the snapshot table of an open qcow2 file.
pub fn read_snapshot_table(file: &File, path: &Path, header: &Qcow2Header, file_len: u64) -> Result<Vec<SnapshotInfo>> {
    let _ = (file, header, file_len);
    Err(Error::malformed(path, "snapshot tables are not supported yet"))
}

/// An internal snapshot of a qcow2 image, read through its own L1/L2 tables.
#[derive(Debug)]
pub struct SnapshotImage {
    path: PathBuf,
    info: SnapshotInfo,
}

impl SnapshotImage {
    /// Opens the snapshot named (or with id) `name` of the qcow2 image at `path`.
    pub fn open(path: &Path, name: &str) -> Result<Self> {
        Err(Error::NoSuchSnapshot { path: path.into(), name: name.into() })
    }

    /// The snapshot-table entry.
    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }
}

impl Image for SnapshotImage {
    fn len(&self) -> u64 {
        self.info.disk_size
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn label(&self) -> String {
        format!("{}@{}", self.path.display(), self.info.name)
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(Error::malformed(&self.path, "not yet"))
    }
    fn data_extents(&self, _start: u64, _end: u64, _scope: ExtentScope) -> Result<Vec<Extent>> {
        Err(Error::malformed(&self.path, "not yet"))
    }
}
