//! `cbt demo`: placeholder.
use std::path::Path;
use crate::cli::Config;
pub fn run(_config: &Config, _dir: Option<&Path>, _size_mib: u64) -> anyhow::Result<()> {
    anyhow::bail!("demo not yet written")
}
