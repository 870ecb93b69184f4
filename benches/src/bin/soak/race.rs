//! The clone race as a soak kind: `cbt copy` from a seed that a writer
//! thread keeps rewriting (64 KiB at random offsets, as a running VM's
//! disk), alternately into a new file and in place over an older version
//! of the image. An exit 0 must come with exactly the source at the final
//! path; a failed copy must leave no new file there.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cbt_benches::{random_bytes, splitmix64};

use super::{Result, Soak, Stats};

/// Bytes per rewrite, and the pause between rewrites.
const CHUNK: u64 = 64 << 10;
const PAUSE: Duration = Duration::from_millis(2);

pub(super) fn seed_rewritten(s: &mut Soak, st: &mut Stats, run: u64) -> Result<()> {
    let (src, want) = s.image("race-src.img", run)?;
    let seeds = s.dir.join("race-seeds");
    fs::create_dir_all(&seeds)?;
    let seed = seeds.join("seed.img");
    fs::copy(&src, &seed)?;
    let out = s.dir.join("race-out.img");
    let _ = fs::remove_file(&out);
    let in_place = run % 2 == 1;
    if in_place {
        // An older version: the first half differs.
        let mut old = want.as_ref().clone();
        let half = old.len() / 2;
        old[..half].copy_from_slice(&random_bytes(half, s.rand(), run));
        fs::write(&out, old)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, seed, len, x) = (Arc::clone(&stop), seed.clone(), want.len() as u64, s.rand());
        std::thread::spawn(move || -> std::io::Result<()> {
            let f = fs::OpenOptions::new().write(true).open(&seed)?;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let off = splitmix64(x, 2 * i) % (len / CHUNK) * CHUNK;
                f.write_all_at(&random_bytes(CHUNK as usize, x, 2 * i + 1), off)?;
                std::thread::sleep(PAUSE);
                i += 1;
            }
            Ok(())
        })
    };
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"copy", &src, &out, &"--seed", &seeds];
    if in_place {
        args.push(&"--inplace");
    }
    let copied = s.spawn(&args).and_then(|p| p.finish());
    stop.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "the seed writer panicked")??;
    let (status, _, err) = copied?;
    check(st, status.success(), &out, &want, in_place, &err);
    Ok(())
}

fn check(st: &mut Stats, ok: bool, out: &Path, want: &[u8], in_place: bool, err: &str) {
    let got = fs::read(out).ok();
    if ok {
        if got.as_deref() != Some(want) {
            st.false_successes += 1;
            st.wrong_images += 1;
            st.note(format!("exit 0 but {} is not the source", out.display()));
        }
    } else {
        st.failures += 1;
        // In place, the old image stays (marked by its journal); else nothing.
        if !in_place && got.is_some() {
            st.wrong_images += 1;
            st.note(format!(
                "a failed copy left {}: {}",
                out.display(),
                super::tail(err)
            ));
        }
    }
}
