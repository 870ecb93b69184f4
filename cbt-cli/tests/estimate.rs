//! End-to-end tests of `cbt estimate` (and the copies it predicts): blocks
//! spread over several seeds, and filesystems that sit in a partition at an
//! unaligned offset (MBR at sector 63, GPT at sector 2049) on one side and
//! unpartitioned on the other.

#[macro_use]
mod common;

use std::path::Path;

use common::{copy_into, json_f64, json_u64, sparse_file, write_tree, TestEnv, MIB};
use serde_json::Value;

fn candidates(est: &Value) -> &Vec<Value> {
    est["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("no candidates in:\n{est:#}"))
}

#[test]
fn blocks_spread_over_two_seeds() {
    let env = TestEnv::new();
    // Seed one: the shared files and the first half; seed two: the other
    // half; the source: everything, written in another order into a
    // filesystem of another size, so every file sits elsewhere.
    let (shared, half1, half2) = ((10, 10), (11, 15), (12, 15));
    let t1 = env.dir("t1");
    write_tree(&t1, shared.0, shared.1);
    write_tree(&t1, half1.0, half1.1);
    let t2 = env.dir("t2");
    write_tree(&t2, half2.0, half2.1);
    let ts = env.dir("tsrc");
    write_tree(&ts, half2.0, half2.1);
    write_tree(&ts, half1.0, half1.1);
    write_tree(&ts, shared.0, shared.1);
    let one = env.ext4(&t1, "seeds/one.img", 32);
    let two = env.ext4(&t2, "seeds/two.img", 32);
    let src = env.ext4(&ts, "src/all.img", 48);

    let est = env.cbt_json(&args!["estimate", &src, "--against", &one, "--against", &two]);
    let list = candidates(&est);
    assert_eq!(list.len(), 2, "{est:#}");
    let union = json_f64(&est, "union.found_fraction");
    for c in list {
        let f = json_f64(c, "found_fraction");
        assert!(f > 0.2, "each seed holds a good part of the source:\n{est:#}");
        assert!(
            union > f + 0.2,
            "the union must hold clearly more than any one seed:\n{est:#}"
        );
        assert!(
            json_u64(c, "bytes_missing") > json_u64(&est, "union.bytes_missing"),
            "{est:#}"
        );
    }
    assert!(
        union > 0.9,
        "the seeds together hold nearly all of the source:\n{est:#}"
    );
    let nonzero = json_u64(&est, "blocks_nonzero");
    assert_eq!(
        json_u64(&est, "blocks_zero") + nonzero,
        json_u64(&est, "blocks_total"),
        "{est:#}"
    );

    let out = env.path("out/all.img");
    let r = env.cbt_json(&args!["copy", &src, &out, "--seed", env.root().join("seeds")]);
    env.assert_identical(&src, &out);
    assert_eq!(
        json_u64(&r, "blocks_total") - json_u64(&r, "blocks_zero"),
        nonzero,
        "{r:#}"
    );
    let missing = json_u64(&r, "blocks_missing");
    assert!(
        missing * 10 < nonzero,
        "{missing} of {nonzero} non-zero blocks fetched:\n{r:#}"
    );
    // The copy fetches what the estimate predicted.
    assert_eq!(
        json_u64(&r, "bytes_missing"),
        json_u64(&est, "union.bytes_missing"),
        "estimate:\n{est:#}\ncopy:\n{r:#}"
    );
}

/// A disk of 40 MiB with a partition table written by `sfdisk` from
/// `script`, holding the 32 MiB filesystem `fs` in a partition at
/// `start_sector`. Checks it both ways against the bare filesystem.
/// `table_blocks` bounds the blocks the partition table itself occupies.
fn partitioned_vs_bare(env: &TestEnv, fs: &Path, script: &str, start_sector: u64, table_blocks: u64) {
    let start = start_sector * 512;
    assert_ne!(
        start % 4096,
        0,
        "the partition must not be 4 KiB-aligned for this test to mean something"
    );
    let disk = env.path("disk/disk.img");
    sparse_file(&disk, 40 * MIB);
    env.sfdisk(&disk, script);
    copy_into(fs, &disk, start);

    // The disk against the bare filesystem: only the table is missing.
    let est = env.cbt_json(&args!["estimate", &disk, "--against", fs]);
    let nonzero = json_u64(&est, "blocks_nonzero");
    let found = json_u64(&est, "union.blocks_found");
    assert!(json_f64(&est, "union.found_fraction") >= 0.95, "{est:#}");
    assert!(
        nonzero - found <= table_blocks,
        "more than the partition table is missing:\n{est:#}"
    );
    assert!(
        nonzero - found >= 1,
        "the partition table cannot be in the bare filesystem:\n{est:#}"
    );

    // The bare filesystem against the disk: all of it is there.
    let rev = env.cbt_json(&args!["estimate", fs, "--against", &disk]);
    assert_eq!(
        json_u64(&rev, "union.blocks_found"),
        json_u64(&rev, "blocks_nonzero"),
        "every block of the filesystem is in the partition:\n{rev:#}"
    );

    let out = env.path("out/disk.img");
    let r = env.cbt_json(&args!["copy", &disk, &out, "--seed", fs]);
    env.assert_identical(&disk, &out);
    let missing = json_u64(&r, "blocks_missing");
    assert!(
        (1..=table_blocks).contains(&missing),
        "{missing} blocks fetched:\n{r:#}"
    );

    let out2 = env.path("out/fs.img");
    let r2 = env.cbt_json(&args!["copy", fs, &out2, "--seed", &disk]);
    env.assert_identical(fs, &out2);
    assert_eq!(json_u64(&r2, "blocks_missing"), 0, "{r2:#}");
}

#[test]
fn mbr_partition_at_sector_63_matches_bare_filesystem() {
    let env = TestEnv::new();
    let fs = env.ext4(&env.tree("tree", 21, 30), "fs/fs.img", 32);
    partitioned_vs_bare(&env, &fs, "start=63, size=65536, type=83\n", 63, 2);
}

#[test]
fn gpt_partition_at_odd_sector_matches_bare_filesystem() {
    let env = TestEnv::new();
    let fs = env.ext4(&env.tree("tree", 22, 30), "fs/fs.img", 32);
    // Protective MBR, header and entries at the start, a backup table at the end.
    partitioned_vs_bare(&env, &fs, "label: gpt\nstart=2049, size=65536, type=L\n", 2049, 4);
}
