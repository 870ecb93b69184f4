//! Command-line conventions, from the real binary (issue 11, item 5):
//! options before or after positionals, one value per `--seed`, a hint for
//! swapped `recv` arguments, image formats cbt cannot read refused by
//! magic (and skipped with a warning among seeds), a warning when
//! `--format` and the output's name disagree, one rate syntax for
//! `--bwlimit` and `--link`, and no colour codes when stderr is not a
//! terminal.

#[macro_use]
mod common;

use std::fs;
use std::path::PathBuf;

use common::{assert_code, assert_no_output, closed_port, json_u64, random_image, stderr, TestEnv, MIB};

/// Exit code for a bad command line (README, "Exit codes").
const EXIT_USAGE: i32 = 2;
/// Exit code for malformed or unsupported input.
const EXIT_BAD_INPUT: i32 = 3;
/// Exit code for an I/O error, a failed connection included.
const EXIT_IO: i32 = 4;

#[test]
fn copy_takes_options_before_positionals_and_repeated_seeds() {
    let env = TestEnv::new();
    let src = random_image(&env, "img/b.raw", 2, 1);
    let seeds = env.dir("seeds");
    fs::copy(&src, seeds.join("a.raw")).expect("copy seed");
    let other = env.dir("other");
    random_image(&env, "other/c.raw", 1, 2);
    env.dir("out");

    // The form from the issue: the option first, both positionals after it.
    let v = env.cbt_json(&args!["copy", "--seed", &seeds, "img/b.raw", "out/x.raw"]);
    assert_eq!(json_u64(&v, "blocks_missing"), 0, "{v:#}");
    env.assert_identical(&src, &env.root().join("out/x.raw"));

    // Repeated, around the positionals.
    let v = env.cbt_json(&args![
        "copy",
        "--seed",
        &other,
        "img/b.raw",
        "out/y.raw",
        "--seed",
        &seeds
    ]);
    assert_eq!(json_u64(&v, "blocks_missing"), 0, "{v:#}");
    assert_eq!(
        json_u64(&v, "index.images"),
        2,
        "both seed roots are indexed: {v:#}"
    );
}

#[test]
fn estimate_and_recv_take_options_first() {
    let env = TestEnv::new();
    let src = random_image(&env, "src.raw", 1, 3);
    let seeds = env.dir("seeds");
    fs::copy(&src, seeds.join("a.raw")).expect("copy seed");
    let v = env.cbt_json(&args!["estimate", "--against", &seeds, &src]);
    assert_eq!(json_u64(&v, "union.bytes_missing"), 0, "{v:#}");

    // Parsed as meant: the error is the refused connection, not clap's
    // "required arguments were not provided".
    let target = format!("{}/disk.img", closed_port());
    let out = env.cbt(&args!["recv", "--seed", &seeds, &target, "out.raw"]);
    assert_code(&out, EXIT_IO);
    assert!(!stderr(&out).contains("required"), "{}", stderr(&out));
    assert_no_output(&env.root().join("out.raw"));

    // teleport plan: the image named after --candidates is the source.
    let out = env.cbt(&args!["teleport", "plan", "--candidates", &seeds, "missing.img"]);
    assert!(stderr(&out).contains("missing.img"), "{}", stderr(&out));
    assert_ne!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
}

#[test]
fn swapped_recv_arguments_get_a_hint() {
    let env = TestEnv::new();
    let target = format!("{}/disk.img", closed_port());
    let out = env.cbt(&args!["recv", "out/x.raw", &target]);
    assert_code(&out, EXIT_USAGE);
    let err = stderr(&out);
    assert!(
        err.contains("swapped") && err.contains(&format!("cbt recv {target} out/x.raw")),
        "{err}"
    );
    assert!(!err.contains("lookup"), "{err}");
}

/// Images in formats cbt does not read, made the way users make them.
fn foreign_images(env: &TestEnv) -> Vec<(PathBuf, &'static str)> {
    let mut made = Vec::new();
    let cases: [(&str, &str, &[&str], &str); 8] = [
        ("vmdk", "sparse.vmdk", &[], "VMDK"),
        ("vmdk", "flat.vmdk", &["-o", "subformat=monolithicFlat"], "VMDK"),
        ("vpc", "dynamic.vhd", &[], "VHD"),
        ("vpc", "fixed.vhd", &["-o", "subformat=fixed"], "VHD"),
        ("vhdx", "disk.vhdx", &[], "VHDX"),
        ("vdi", "disk.vdi", &[], "VDI"),
        ("qed", "disk.qed", &[], "QED"),
        ("parallels", "disk.hdd", &[], "Parallels"),
    ];
    for (format, name, extra, label) in cases {
        let path = env.path(&format!("foreign/{name}"));
        let mut a = args!["create", "-f", format].to_vec();
        a.extend(extra.iter().map(Into::into));
        a.extend(args![&path, "4M"]);
        env.qemu_img(&a);
        made.push((path, label));
    }
    // cryptsetup is seldom installed: the LUKS header's magic by hand.
    let luks = env.path("foreign/disk.luks");
    let mut bytes = vec![0u8; MIB as usize];
    bytes[..8].copy_from_slice(b"LUKS\xba\xbe\x00\x02");
    fs::write(&luks, bytes).expect("write LUKS header");
    made.push((luks, "LUKS"));
    made
}

#[test]
fn foreign_formats_are_refused_with_a_hint() {
    let env = TestEnv::new();
    let empty = env.dir("empty");
    for (image, label) in foreign_images(&env) {
        let name = image
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let out_path = env.path(&format!("out/{name}.raw"));
        let out = env.cbt(&args!["copy", &image, &out_path, "--seed", &empty]);
        assert_code(&out, EXIT_BAD_INPUT);
        let err = stderr(&out);
        assert!(err.contains(label) && err.contains(&name), "{name}: {err}");
        assert!(
            err.contains("qemu-img convert"),
            "{name}: no conversion hint: {err}"
        );
        assert_no_output(&out_path);
    }
}

#[test]
fn foreign_seeds_are_skipped_with_a_warning() {
    let env = TestEnv::new();
    let src = random_image(&env, "src.raw", 1, 4);
    let seeds = env.dir("seeds");
    fs::copy(&src, seeds.join("good.raw")).expect("copy seed");
    env.qemu_img(&args!["create", "-f", "vmdk", seeds.join("looks-raw.img"), "1M"]);
    env.qemu_img(&args!["create", "-f", "vpc", seeds.join("disk.vhd"), "1M"]);
    let out = env.cbt_ok(&args!["copy", &src, "out.raw", "--seed", &seeds, "--json"]);
    let err = stderr(&out);
    for name in ["looks-raw.img", "disk.vhd"] {
        assert!(err.contains("skipping") && err.contains(name), "{name}: {err}");
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json_u64(&v, "blocks_missing"), 0, "{v:#}");
    assert_eq!(
        json_u64(&v, "index.images"),
        1,
        "only the raw seed is indexed: {v:#}"
    );
}

#[test]
fn format_and_output_name_disagreeing_is_warned() {
    let env = TestEnv::new();
    let src = random_image(&env, "src.raw", 1, 5);
    let out = env.cbt_ok(&args!["copy", "--format", "qcow2", &src, "out.raw"]);
    assert!(stderr(&out).contains("the name says raw"), "{}", stderr(&out));
    let out = env.cbt_ok(&args!["copy", "--format", "qcow2", &src, "out.qcow2"]);
    assert!(!stderr(&out).contains("the name says"), "{}", stderr(&out));
}

#[test]
fn bwlimit_takes_the_rate_syntax_of_link() {
    let env = TestEnv::new();
    let img = random_image(&env, "src.raw", 1, 6);
    let dest = format!("{}/x.raw", closed_port());
    // Accepted: the command gets as far as connecting.
    for rate in ["100Mbit", "10M", "500K", "1Gbit/s"] {
        let out = env.cbt(&args!["send", "--bwlimit", rate, &img, &dest]);
        assert_code(&out, EXIT_IO);
    }
    // Refused before connecting, as a usage error.
    for rate in ["100Mb", "fast", "10"] {
        let out = env.cbt(&args!["send", "--bwlimit", rate, &img, &dest]);
        assert_code(&out, EXIT_USAGE);
        assert!(stderr(&out).contains(rate), "{rate}: {}", stderr(&out));
    }
    let help = env.cbt_ok(&args!["send", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("powers of 1024") && help.contains("rsync"),
        "{help}"
    );
}

#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    let env = TestEnv::new();
    let src = random_image(&env, "src.raw", 1, 7);
    let out = env.cbt_ok(&args!["-vv", "copy", &src, "out.raw"]);
    let err = stderr(&out);
    assert!(
        err.contains("INFO") || err.contains("DEBUG"),
        "no log lines to check: {err}"
    );
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape codes on a non-terminal: {err:?}"
    );
}
