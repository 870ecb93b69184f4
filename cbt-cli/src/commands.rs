//! The commands: each resolves its inputs, calls the library and prints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use anyhow::{bail, Context};
use crossbeam_channel::bounded;
use serde::Serialize;

use cbt_core::{
    estimate, hash_image, open_image, reconstruct, BlockRecord, HashOptions, Image, ImageBlockSource,
    ImageSpec, Index, IndexStats, Layout, Progress, ReconstructOptions, Report,
};

use crate::cli::{Command, Config, Opts};

/// Runs the command given on the command line.
pub fn run(opts: Opts) -> anyhow::Result<()> {
    // These read only the clap definitions: they must work where no cache
    // directory can be found (a packaging chroot without $HOME).
    match &opts.command {
        Command::Completions { shell } => {
            return crate::completions::completions(*shell, &mut crate::stdout::stdout())
        }
        Command::Man { dir } => return crate::completions::man(dir.as_deref(), &mut crate::stdout::stdout()),
        _ => {}
    }
    let config = opts.resolve()?;
    match opts.command {
        Command::Copy {
            src,
            dst,
            snapshot,
            seeds,
            format,
            no_readback,
            inplace,
            allow_inconsistent,
            json,
            ..
        } => {
            check_source(&src, allow_inconsistent)?;
            let spec = ImageSpec {
                path: src,
                snapshot,
                backing: Default::default(),
            };
            crate::cli::warn_format_mismatch(format.into(), &dst);
            let options = ReconstructOptions {
                format: format.into(),
                threads: config.threads,
                verify_readback: config.verify_readback && !no_readback,
                in_place: inplace,
            };
            let show = crate::progress::wanted(config.progress, json);
            let (report, stats) = copy(&config, &spec, &dst, &seeds, &options, show)?;
            print_copy(&report, &stats, json)
        }
        Command::Estimate {
            src,
            snapshot,
            against,
            json,
            ..
        } => {
            if against.is_empty() && config.package_caches.is_empty() {
                crate::bail_usage!("estimate needs candidates: give --against ROOT or --package-cache DIR");
            }
            let spec = ImageSpec {
                path: src,
                snapshot,
                backing: Default::default(),
            };
            if !config.package_caches.is_empty() {
                return crate::describe_commands::estimate(&config, &spec, &against, json);
            }
            let image = open_image(&spec)?;
            let mut options = config.index.clone();
            options.exclude = canonical(&spec.path).into_iter().collect();
            let index = Index::build_with_per_image(&against, &options)?;
            let est = estimate(image.as_ref(), &spec, &index, config.threads)?;
            if json {
                println_json(&est)
            } else {
                let mut out = crate::stdout::stdout();
                writeln!(
                    out,
                    "{}: {} bytes, {} non-zero blocks ({} bytes), {} zero blocks",
                    est.source, est.image_bytes, est.blocks_nonzero, est.bytes_nonzero, est.blocks_zero
                )?;
                // Each candidate alone (an overlay: its own layer), unlike
                // `teleport plan`, which counts whole backing chains.
                writeln!(
                    out,
                    "{:>8}  {:>14}  candidate (its own layer only, backing files counted separately)",
                    "found", "bytes to send"
                )?;
                writeln!(
                    out,
                    "{:>7.2}%  {:>14}  (union of all {})",
                    est.union.found_fraction * 100.0,
                    est.union.bytes_missing,
                    crate::stdout::counted(est.candidates.len() as u64, "candidate", "candidates")
                )?;
                for c in &est.candidates {
                    writeln!(
                        out,
                        "{:>7.2}%  {:>14}  {}",
                        c.found_fraction * 100.0,
                        c.bytes_missing,
                        c.path.as_deref().unwrap_or("")
                    )?;
                }
                Ok(())
            }
        }
        Command::Index { roots, json, .. } => {
            let index = Index::build(&roots, &config.index)?;
            let stats = index.stats();
            if json {
                #[derive(Serialize)]
                struct Out<'a> {
                    #[serde(flatten)]
                    stats: &'a IndexStats,
                    images_list: &'a [cbt_core::IndexedImage],
                }
                println_json(&Out {
                    stats,
                    images_list: index.images(),
                })
            } else {
                let mut out = crate::stdout::stdout();
                for img in index.images() {
                    writeln!(
                        out,
                        "{:>10} blocks {:>10} zero {}{}{}",
                        img.blocks,
                        img.zero_blocks,
                        img.spec,
                        if img.top_layer_only { " (own layer)" } else { "" },
                        if img.from_cache { " [cached]" } else { "" }
                    )?;
                }
                print_index_stats(&mut out, stats)?;
                Ok(())
            }
        }
        Command::Describe(args) => crate::describe_commands::describe(&config, args),
        Command::Teleport(args) => crate::describe_commands::teleport(&config, args),
        Command::Store { command, .. } => crate::store_commands::run(&config, command),
        Command::Demo { dir, size_mib, .. } => crate::demo::run(&config, dir.as_deref(), size_mib),
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
        cmd @ (Command::Send { .. } | Command::Recv { .. } | Command::Serve { .. }) => {
            crate::net_commands::run(&config, cmd)
        }
    }
}

/// Before reading `src` as a source: refuses an image whose in-place
/// update was interrupted (unless `allow_inconsistent`), and says which
/// backing files it follows (a local command follows them wherever they
/// are, as qemu-img does).
pub fn check_source(src: &Path, allow_inconsistent: bool) -> anyhow::Result<()> {
    if let Err(e) = cbt_core::check_consistent(src) {
        if !allow_inconsistent {
            return Err(e.into());
        }
        eprintln!("warning: {e}");
    }
    // Only regular files have backing files (opening a fifo would block).
    let chain = match std::fs::metadata(src) {
        Ok(m) if m.is_file() => cbt_core::backing_chain(src, &cbt_core::Backing::Anywhere).ok(),
        _ => None,
    };
    if let Some(chain) = chain {
        for b in chain {
            eprintln!("cbt: {}: reading its backing file {}", src.display(), b.display());
        }
    }
    Ok(())
}

fn canonical(p: &Path) -> Option<PathBuf> {
    p.canonicalize().ok()
}

fn print_index_stats(out: &mut impl Write, s: &IndexStats) -> std::io::Result<()> {
    let per_block = if s.unique_blocks > 0 {
        s.memory_bytes as f64 / s.unique_blocks as f64
    } else {
        0.0
    };
    writeln!(
        out,
        "images: {}  blocks: {}  unique blocks: {}  zero blocks: {}  RAM: {} bytes ({per_block:.1} per unique block)  cached: {}  hashed: {} bytes",
        s.images, s.blocks, s.unique_blocks, s.zero_blocks, s.memory_bytes, s.from_cache, s.bytes_hashed
    )
}

/// `cbt copy`: index the seeds, hash the source in a pipeline, and
/// reconstruct it with missing blocks read from the source itself (with a
/// progress on stderr as `show_progress` says).
pub fn copy(
    config: &Config,
    spec: &ImageSpec,
    dst: &Path,
    seeds: &[PathBuf],
    options: &ReconstructOptions,
    show_progress: crate::progress::Show,
) -> anyhow::Result<(Report, IndexStats)> {
    let image: Arc<dyn Image> = open_image(spec)?;
    if dst.is_dir() {
        bail!(
            "{}: is a directory; give the path of the image to write",
            dst.display()
        );
    }
    let mut index_options = config.index.clone();
    // The source stands for a remote image: it must not seed itself.
    index_options.exclude = canonical(&spec.path).into_iter().collect();
    // Updated in place, the output is compared block by block as the copy
    // goes; indexing it too would read and hash it a second time.
    if options.in_place {
        index_options.exclude.extend(canonical(dst));
    }
    let index = Index::build(seeds, &index_options).context("building the seed index")?;
    let layout = Layout::detect(image.as_ref(), config.index.block_size)?;
    let mut source = ImageBlockSource::new(Arc::clone(&image));
    let hash_options = HashOptions {
        threads: config.threads,
        ..Default::default()
    };

    let progress = Arc::new(Progress::default());
    let bar = {
        let (p, total, bs) = (
            Arc::clone(&progress),
            layout.len(),
            u64::from(layout.block_size()),
        );
        crate::progress::Bar::start(show_progress, move || crate::progress::copying(&p, total, bs))
    };
    let (tx, rx) = bounded::<Vec<BlockRecord>>(64);
    let report = thread::scope(|s| -> anyhow::Result<Report> {
        let hasher = s.spawn(|| {
            // On error the channel just closes; the error itself is reported below.
            let summary = hash_image(image.as_ref(), &layout, &hash_options, |records| {
                tx.send(records.to_vec())
                    .map_err(|_| cbt_core::Error::Stopped("copy stopped".into()))
            });
            drop(tx);
            summary
        });
        // The records own the receiving end: when the reconstruction stops
        // early (an unwritable output, a full disk), dropping them wakes the
        // hashing thread instead of leaving it blocked on a full channel.
        let records = rx.into_iter().flat_map(|batch| batch.into_iter().map(Ok));
        let result = reconstruct(
            &layout,
            records,
            &index,
            &mut source,
            dst,
            options,
            Some(&progress),
        );
        let summary = hasher
            .join()
            .map_err(|_| anyhow::anyhow!("hashing thread panicked"))?;
        // A failure to read the source explains any failure of the
        // reconstruction; a hasher that only stopped because the
        // reconstruction failed explains nothing.
        let report = match (summary, result) {
            (Err(e), _) if !matches!(e, cbt_core::Error::Stopped(_)) => {
                return Err(anyhow::Error::new(e).context(format!("reading {spec}")))
            }
            (_, Err(e)) => return Err(e.into()),
            (Err(e), Ok(_)) => return Err(anyhow::Error::new(e).context(format!("reading {spec}"))),
            (Ok(summary), Ok(report)) => (summary, report),
        };
        let (summary, report) = report;
        if summary.image_digest.to_hex() != report.image_digest {
            bail!("internal error: source digest changed during the copy");
        }
        Ok(report)
    })?;
    drop(bar);
    Ok((report, index.stats().clone()))
}

fn print_copy(report: &Report, stats: &IndexStats, json: bool) -> anyhow::Result<()> {
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a Report,
            index: &'a IndexStats,
        }
        return println_json(&Out { report, index: stats });
    }
    let mut out = crate::stdout::stdout();
    let pct = |n: u64| {
        if report.blocks_total > 0 {
            n as f64 * 100.0 / report.blocks_total as f64
        } else {
            0.0
        }
    };
    writeln!(
        out,
        "wrote {} ({} bytes) in {:.2}s",
        report.output.display(),
        report.image_bytes,
        report.seconds
    )?;
    if report.blocks_unchanged > 0 {
        writeln!(
            out,
            "  unchanged:      {:>10} ({:.1}%), already in place",
            report.blocks_unchanged,
            pct(report.blocks_unchanged)
        )?;
    }
    writeln!(
        out,
        "  zero blocks:    {:>10} ({:.1}%)",
        report.blocks_zero,
        pct(report.blocks_zero)
    )?;
    writeln!(
        out,
        "  local blocks:   {:>10} ({:.1}%), {} bytes",
        report.blocks_local,
        pct(report.blocks_local),
        report.bytes_local
    )?;
    writeln!(
        out,
        "  missing blocks: {:>10} ({:.1}%), {} bytes read from the source",
        report.blocks_missing,
        pct(report.blocks_missing),
        report.bytes_missing
    )?;
    if report.local_rejected > 0 {
        writeln!(
            out,
            "  seed blocks that no longer matched (fetched instead): {}",
            report.local_rejected
        )?;
    }
    writeln!(out, "  verified: image digest {}", &report.image_digest[..16])?;
    Ok(())
}

fn println_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    Ok(crate::stdout::print_json(v)?)
}
