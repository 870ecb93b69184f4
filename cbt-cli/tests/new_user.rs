//! End-to-end tests of what a new user reads: the words and numbers of
//! `recv`, `estimate`, `teleport plan` and `store verify` say what was
//! done and counted, in the right number, and agree with their JSON.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::fs;

use serde_json::Value;

use common::guest::{base_packages, make_guest};
use common::proc::{daemon, noise_image};
use common::store_world::Store;
use common::{json_u64, TestEnv};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn recv_names_what_it_pulled_and_counts_unchanged_blocks() {
    let env = TestEnv::new();
    let export = env.dir("export");
    let src = noise_image(&env, "export/vm.img", 8, 4);
    let (_daemon, addr) = daemon(&env, &env.dir("data"), &args!["--export", &export]);
    let out = env.path("vm.img");
    let from = format!("{addr}/vm.img");

    // The source as the user named it, and the local output; never the
    // daemon's own path for it.
    let o = env.cbt_ok(&args!["recv", &from, &out]);
    env.assert_identical(&src, &out);
    let text = stdout(&o);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("received {from} into {}", out.display())),
        "{text}"
    );

    // In place over an identical output: every non-zero block is kept,
    // and the JSON says so as `cbt copy --inplace` does.
    let v: Value = serde_json::from_slice(
        &env.cbt_ok(&args!["recv", &from, &out, "--inplace", "--json"])
            .stdout,
    )
    .unwrap();
    let nonzero = json_u64(&v, "blocks_total") - json_u64(&v, "blocks_zero");
    assert_eq!(json_u64(&v, "blocks_unchanged"), nonzero, "{v:#}");
    let v: Value = serde_json::from_slice(
        &env.cbt_ok(&args!["recv", &from, env.path("other.img"), "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(json_u64(&v, "blocks_unchanged"), 0, "{v:#}");
}

#[test]
fn estimate_says_it_counts_each_layer_alone_and_counts_in_the_right_number() {
    let env = TestEnv::new();
    let src = noise_image(&env, "src.img", 4, 5);
    let cands = env.dir("cands");
    fs::copy(&src, cands.join("copy.img")).unwrap();
    let text = stdout(&env.cbt_ok(&args!["estimate", &src, "--against", &cands]));
    assert!(text.contains("(union of all 1 candidate)"), "{text}");
    assert!(text.contains("own layer only"), "{text}");
    // With package caches, another printer: the same words.
    let debs = env.dir("debs");
    let text = stdout(&env.cbt_ok(&args![
        "--package-cache",
        &debs,
        "estimate",
        &src,
        "--against",
        &cands
    ]));
    assert!(text.contains("union of all 1 image and"), "{text}");
    assert!(text.contains("own layer only"), "{text}");
}

#[test]
fn teleport_plan_says_it_counts_the_chain_and_recommends_no_fetch_that_saves_nothing() {
    let env = TestEnv::new();
    // Packages that claim 10 GB installed: at 1 MB/s, fetching them from
    // a mirror would look worth it, were anything to move.
    let mut packages = base_packages("1.0-1");
    packages[0].installed_kib = 10_000_000;
    let source = make_guest(&env, "src", packages, true, "12");
    let src = env.ext4(&source.root, "src.img", 32);
    let cands = env.dir("cands");
    fs::copy(&src, cands.join("same.img")).unwrap();

    let a = args![
        "teleport",
        "plan",
        &src,
        "--candidates",
        &cands,
        "--link",
        "8Mbit"
    ];
    let v = env.cbt_json(&a);
    assert_eq!(json_u64(&v, "cbt.bytes"), 0, "{v:#}");
    assert_eq!(v["mirror_fetch"]["fetch"], false, "{v:#}");
    assert!(
        v["mirror_fetch"]["reason"]
            .as_str()
            .unwrap()
            .contains("nothing to save"),
        "{v:#}"
    );
    let text = stdout(&env.cbt_ok(&a));
    assert!(text.contains("not worth it"), "{text}");
    assert!(!text.contains("worth trying"), "{text}");
    assert!(text.contains("each with its backing chain"), "{text}");
}

#[test]
fn store_verify_says_what_it_checked() {
    let st = Store::new("verify-words", "w");
    let env = TestEnv::new();
    let img = noise_image(&env, "disk.img", 2, 6);
    st.push(&env, &img, "disk", &[]);
    let verify = |extra: &[&str]| {
        let mut a = args!["store", "verify", st.root(), "--endpoint", st.endpoint()].to_vec();
        a.extend(extra.iter().map(Into::into));
        stdout(&common::s3::cbt_ok(&env, &a))
    };
    let text = verify(&[]);
    assert!(text.contains(": 1 image: manifests checked"), "{text}");
    assert!(!text.contains("0 blocks checked"), "{text}");
    assert!(text.contains("block contents not read"), "{text}");
    assert!(text.contains("0 problems"), "{text}");
    let text = verify(&["--read"]);
    assert!(
        text.contains("1 pack read, ") && text.contains("blocks read and hashed"),
        "{text}"
    );
}

#[test]
fn each_help_lists_only_the_options_of_its_command() {
    let env = TestEnv::new();
    let help = |cmd: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = cmd.iter().map(Into::into).collect();
        a.push("--help".into());
        stdout(&env.cbt_ok(&a))
    };
    for (cmd, absent) in [
        (
            &["man"][..],
            &["--threads", "--cache", "--progress", "--verify-readback"][..],
        ),
        (&["completions"][..], &["--block-size", "--package-cache"][..]),
        (
            &["describe"][..],
            &["--progress", "--verify-readback", "--raw-ext"][..],
        ),
        (&["estimate"][..], &["--progress", "--verify-readback"][..]),
        (&["send"][..], &["--verify-readback"][..]),
        (&["serve"][..], &["--progress"][..]),
    ] {
        let text = help(cmd);
        for o in absent {
            assert!(!text.contains(o), "cbt {cmd:?} --help lists {o}:\n{text}");
        }
        assert!(text.contains("--verbose"), "{text}");
    }
    let text = help(&["copy"]);
    for o in [
        "--cache",
        "--threads",
        "--package-cache",
        "--verify-readback",
        "--progress",
    ] {
        assert!(text.contains(o), "cbt copy --help lacks {o}:\n{text}");
    }
    // A command's option is refused after a command it does not apply to,
    // and still taken before any command, as scripts write it.
    let o = env.cbt_bare(&args!["man", "--threads", "2"]);
    assert_eq!(o.status.code(), Some(2));
    env.cbt_ok(&args!["--threads", "2", "completions", "bash"]);
}
