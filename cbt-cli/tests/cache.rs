//! The persistent digest cache seen from the command line: a second
//! `cbt index` reads nothing, and a corrupt cache is rebuilt, not trusted.

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{json_u64, TestEnv};

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("list cache directory") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn second_index_is_served_from_cache_and_corrupt_cache_is_rebuilt() {
    let env = TestEnv::new();
    let a = env.ext4(&env.tree("ta", 1, 20), "src/a.img", 16);
    let b = env.ext4(&env.tree("tb", 2, 20), "work/b.img", 16);
    let seeds = env.dir("seeds");
    fs::copy(&a, seeds.join("a.img")).expect("copy A");
    // A qcow2 image with an internal snapshot: three image views in all.
    let vm = env.to_qcow2(&b, "seeds/vm.qcow2", &[]);
    env.qemu_img(&args!["snapshot", "-c", "s1", &vm]);

    let first = env.cbt_json(&args!["index", &seeds]);
    assert_eq!(json_u64(&first, "images"), 3, "{first:#}");
    assert_eq!(json_u64(&first, "from_cache"), 0, "{first:#}");
    let hashed = json_u64(&first, "bytes_hashed");
    assert!(hashed > 0, "{first:#}");

    let second = env.cbt_json(&args!["index", &seeds]);
    assert_eq!(json_u64(&second, "images"), 3, "{second:#}");
    assert_eq!(json_u64(&second, "from_cache"), 3, "{second:#}");
    assert_eq!(json_u64(&second, "bytes_hashed"), 0, "{second:#}");
    assert_eq!(
        json_u64(&second, "unique_blocks"),
        json_u64(&first, "unique_blocks"),
        "{second:#}"
    );

    // Flip one byte in the middle of every cache file.
    let files = files_under(&env.cache_dir());
    assert!(
        !files.is_empty(),
        "no cache files in {}",
        env.cache_dir().display()
    );
    for f in &files {
        let mut data = fs::read(f).expect("read cache file");
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        fs::write(f, &data).expect("write cache file");
    }

    let third = env.cbt_json(&args!["index", &seeds]);
    assert_eq!(json_u64(&third, "images"), 3, "{third:#}");
    assert_eq!(
        json_u64(&third, "from_cache"),
        0,
        "a corrupt cache must not be used:\n{third:#}"
    );
    assert_eq!(json_u64(&third, "bytes_hashed"), hashed, "{third:#}");
    assert_eq!(
        json_u64(&third, "unique_blocks"),
        json_u64(&first, "unique_blocks"),
        "{third:#}"
    );

    // The rebuilt cache is good again, and a copy works from it.
    let out = env.path("out/a.img");
    let r = env.cbt_json(&args!["copy", &a, &out, "--seed", &seeds]);
    assert_eq!(json_u64(&r, "index.from_cache"), 3, "{r:#}");
    assert_eq!(json_u64(&r, "index.bytes_hashed"), 0, "{r:#}");
    assert_eq!(json_u64(&r, "blocks_missing"), 0, "{r:#}");
    env.assert_identical(&a, &out);
}
