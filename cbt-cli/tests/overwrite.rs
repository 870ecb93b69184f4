//! The daemon's overwrite policy, end to end: a push never silently
//! replaces an existing image; `cbt send --force` (or `cbt teleport
//! --force`) asks to, and a daemon with `overwrite = true` allows it
//! without being asked. Replacements are logged at the daemon's default
//! level.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::proc::{daemon, noise_image, Proc, HANG};
use common::{cbt_json, TestEnv};

#[test]
fn a_second_push_to_a_name_needs_force_unless_the_daemon_allows_overwriting() {
    let env = TestEnv::new();
    let a = noise_image(&env, "a.img", 2, 11);
    let b = noise_image(&env, "b.img", 2, 12);
    let data = env.dir("data");
    let (d, addr) = daemon(&env, &data, &[]);
    let target = format!("{addr}/vm.img");

    cbt_json(&env, &args!["send", a, target]);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&a).unwrap()
    );

    // Refused: the message names the image and the way out; nothing changed.
    let (status, _, err) = Proc::spawn(&env, &args!["send", b, target]).finish(HANG);
    assert!(!status.success() && status.code() != Some(101), "{status}\n{err}");
    assert!(err.contains("vm.img") && err.contains("exists"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&a).unwrap()
    );

    // The same with --force replaces it; the teleport command has the flag too.
    cbt_json(&env, &args!["send", b, target, "--force"]);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&b).unwrap()
    );
    let (status, _, err) = Proc::spawn(&env, &args!["teleport", a, target]).finish(HANG);
    assert!(!status.success() && err.contains("--force"), "{status}\n{err}");
    cbt_json(&env, &args!["teleport", a, target, "--force"]);
    assert_eq!(
        std::fs::read(data.join("vm.img")).unwrap(),
        std::fs::read(&a).unwrap()
    );

    // A first push with --force is just a push.
    cbt_json(&env, &args!["send", b, format!("{addr}/new.img"), "--force"]);
    assert_eq!(
        std::fs::read(data.join("new.img")).unwrap(),
        std::fs::read(&b).unwrap()
    );

    // Every outcome is in the daemon's log at its default level.
    let log = d.log();
    assert!(log.contains("replacing the existing image"), "{log}");
    assert!(
        log.contains("refused: vm.img: an image of this name exists"),
        "{log}"
    );
    assert!(log.matches(" received").count() >= 4, "{log}");

    // overwrite = true: a plain push replaces.
    let data2 = env.dir("data2");
    let conf = env.path("cbt.toml");
    std::fs::write(&conf, "overwrite = true\n").unwrap();
    let (_d2, addr2) = daemon(&env, &data2, &args!["--config", conf]);
    cbt_json(&env, &args!["send", a, format!("{addr2}/vm.img")]);
    cbt_json(&env, &args!["send", b, format!("{addr2}/vm.img")]);
    assert_eq!(
        std::fs::read(data2.join("vm.img")).unwrap(),
        std::fs::read(&b).unwrap()
    );

    // An in-place push targets the existing image by definition.
    cbt_json(&env, &args!["send", a, format!("{addr}/new.img"), "--inplace"]);
    assert_eq!(
        std::fs::read(data.join("new.img")).unwrap(),
        std::fs::read(&a).unwrap()
    );
}
