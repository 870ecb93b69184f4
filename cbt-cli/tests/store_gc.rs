//! End-to-end tests of the block store's garbage collection (docs/STORE.md,
//! "Garbage collection"): `cbt store gc` against pushes in progress, leases
//! and removed images, on a real S3 protocol server (moto's, `common::s3`);
//! the rest of the store's tests are in `store.rs`.
//!
//! The images are made of pseudo-random 4 KiB blocks (incompressible, so
//! stored raw, and all different) and zero blocks, so that every expected
//! number (blocks uploaded, already stored, missing at a seeded pull,
//! packs a gc deletes) is computed from the data the test wrote and from
//! the objects the server holds, read independently of cbt (listings and
//! the packs' own indexes). Where a push must be caught at an exact step
//! (some packs uploaded, its lease not yet written), a proxy in front of
//! the server holds the next request of that kind (`common::s3::Gate`).

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use common::proc::HANG;
use common::s3::{cbt, Gate};
use common::store_world::*;
use common::{json_u64, stderr, TestEnv};

#[test]
fn gc_deletes_only_the_packs_of_a_removed_image_that_no_other_uses() {
    let st = Store::new("gc-bucket", "gc");
    let env = TestEnv::new();
    // A: 16 MiB (four packs or so); B: A's first 800 blocks, then its own.
    let a = blocks(4096, 10, |i| i % 32 == 0);
    let mut b = a[..800 * B].to_vec();
    b.extend(blocks(2048, 11, |i| i % 32 == 5));
    let (ai, bi) = (write_image(&env, "a.raw", &a), write_image(&env, "b.raw", &b));
    st.push(&env, &ai, "a", &[]);
    let packs_a = st.packs();
    let vb = st.push(&env, &bi, "b", &[]);
    assert_eq!(
        json_u64(&vb, "blocks_already_stored"),
        nonzero(&a[..800 * B]),
        "{vb:#}"
    );
    let all = st.packs();

    // The packs of A that hold a block of B (from the packs' own indexes).
    let in_b = digests(&b);
    let (used, doomed): (Vec<&String>, Vec<&String>) = packs_a
        .keys()
        .partition(|id| st.pack_index(id).iter().any(|e| in_b.contains(&e.digest)));
    assert!(
        !used.is_empty() && !doomed.is_empty(),
        "used {used:?}, doomed {doomed:?}"
    );
    let doomed_bytes: u64 = doomed.iter().map(|id| packs_a[*id]).sum();

    st.delete("images/a.cbtm");
    // Every pack older than a grace of 0 (the store's times are in seconds).
    std::thread::sleep(Duration::from_millis(1100));
    let dry = st.gc(&env, 0, &["--dry-run"]);
    assert_eq!(json_u64(&dry, "deleted"), doomed.len() as u64, "{dry:#}");
    assert_eq!(st.packs(), all, "a dry run deleted packs");
    let gc = st.gc(&env, 0, &[]);
    assert_eq!(json_u64(&gc, "packs"), all.len() as u64, "{gc:#}");
    assert_eq!(json_u64(&gc, "deleted"), doomed.len() as u64, "{gc:#}");
    assert_eq!(json_u64(&gc, "deleted_bytes"), doomed_bytes, "{gc:#}");
    assert_eq!(
        json_u64(&gc, "referenced"),
        (all.len() - doomed.len()) as u64,
        "{gc:#}"
    );
    assert_eq!(json_u64(&gc, "kept_young"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
    let left = st.packs();
    let expected: BTreeMap<String, u64> = all
        .iter()
        .filter(|(id, _)| !doomed.contains(id))
        .map(|(id, size)| (id.clone(), *size))
        .collect();
    assert_eq!(left, expected, "gc deleted other packs than A's unshared ones");

    let out = env.path("out/b.raw");
    st.pull(&env, "b", &out, &[]);
    assert_same(&out, &b);
    st.verify_clean(&env, 1);
}

#[test]
fn gc_keeps_the_packs_a_lease_names() {
    let st = Store::new("lease-bucket", "l");
    let env = TestEnv::new();
    let c = blocks(1536, 12, |i| i % 16 == 0);
    let ci = write_image(&env, "c.raw", &c);
    st.push(&env, &ci, "c", &[]);
    let packs = st.packs();
    let n = packs.len() as u64;
    assert!(n >= 2, "{packs:?}");

    // The packs become older than a grace of 2 s; then a lease names
    // them, and no manifest does.
    std::thread::sleep(Duration::from_millis(3200));
    let ids: Vec<&String> = packs.keys().collect();
    st.s3.put(
        &st.bucket,
        &st.key("leases/test-lease"),
        &serde_json::to_vec(&ids).unwrap(),
    );
    st.delete("images/c.cbtm");

    let gc = st.gc(&env, 3600, &[]);
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), n, "{gc:#}");
    assert_eq!(json_u64(&gc, "kept_young"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
    // Older than the grace period, kept by the (young) lease alone.
    let gc = st.gc(&env, 2, &[]);
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), n, "{gc:#}");
    assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
    assert_eq!(st.packs(), packs);
    assert_eq!(st.names("leases"), ["test-lease"]);

    // Without the lease they go.
    st.delete("leases/test-lease");
    let gc = st.gc(&env, 2, &[]);
    assert_eq!(json_u64(&gc, "deleted"), n, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), 0, "{gc:#}");
    assert_eq!(st.packs(), BTreeMap::new());
}

#[test]
fn gc_during_a_push_deletes_nothing_it_needs() {
    let st = Store::new("live-bucket", "live");
    let env = TestEnv::new();
    let a = blocks(1024, 20, |i| i % 16 == 0);
    let ai = write_image(&env, "a.raw", &a);
    st.push(&env, &ai, "a", &[]);
    let packs_a = st.packs();
    // B: all of A, then 24 MiB of its own (six packs or so).
    let mut b = a.clone();
    b.extend(blocks(6144, 21, |i| i % 64 == 1));
    let bi = write_image(&env, "b.raw", &b);

    // B stops after two pack uploads.
    let gate = Gate::start(st.s3.addr());
    gate.hold("PUT", "/packs/", 2);
    let p = spawn_push(&env, &st, &bi, "b", &gate.endpoint(), "store push b");
    gate.wait_held(1, HANG);
    wait_until("two packs of B", HANG, || st.packs().len() >= packs_a.len() + 2);
    let uploaded = st.packs().len() - packs_a.len();
    // B's lease names the packs of A it reuses (all of them).
    let leases = st.names("leases");
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert!(leases[0].starts_with("b-"), "{leases:?}");
    let lease: Vec<String> = serde_json::from_slice(
        &st.s3
            .get(&st.bucket, &st.key(&format!("leases/{}", leases[0])))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(lease, packs_a.keys().cloned().collect::<Vec<_>>());

    for _ in 0..3 {
        let gc = st.gc(&env, 600, &[]);
        assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
        assert_eq!(json_u64(&gc, "stale_leases"), 0, "{gc:#}");
        assert_eq!(json_u64(&gc, "referenced"), packs_a.len() as u64, "{gc:#}");
        assert_eq!(json_u64(&gc, "kept_young"), uploaded as u64, "{gc:#}");
    }
    gate.open();
    let v = push_report(p, "push b");
    assert_eq!(json_u64(&v, "blocks_already_stored"), nonzero(&a), "{v:#}");
    assert_eq!(st.names("leases"), Vec::<String>::new(), "B left its lease");

    let gc = st.gc(&env, 600, &[]);
    assert_eq!(json_u64(&gc, "deleted"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "kept_young"), 0, "{gc:#}");
    assert_eq!(json_u64(&gc, "referenced"), st.packs().len() as u64, "{gc:#}");
    let out = env.path("out/b.raw");
    st.pull(&env, "b", &out, &[]);
    assert_same(&out, &b);
    st.verify_clean(&env, 2);
}

/// The steps of a push at which a gc runs in
/// [`gc_at_any_step_of_a_push_leaves_it_a_whole_image`]: what the gate
/// holds (method, a piece of the target, matching requests let through
/// first).
const PUSH_STEPS: [(&str, &str, &str, usize); 5] = [
    ("before its lease", "PUT", "/leases/", 0),
    ("at its second lease write", "PUT", "/leases/", 1),
    ("at its first pack upload", "PUT", "/packs/", 0),
    ("at its manifest", "PUT", "/images/", 0),
    ("at its lease's deletion", "DELETE", "/leases/", 0),
];

#[test]
fn gc_at_any_step_of_a_push_leaves_it_a_whole_image() {
    const GRACE: u64 = 3;
    let base = Store::new("race-bucket", "base");
    let env = TestEnv::new();
    let a = blocks(1024, 30, |i| i % 16 == 0);
    let ai = write_image(&env, "a.raw", &a);
    let mut b = a.clone();
    b.extend(blocks(256, 31, |i| i % 16 == 3));
    let bi = write_image(&env, "b.raw", &b);
    // One store per step, each holding A's packs and no manifest.
    let stores: Vec<Store> = (0..PUSH_STEPS.len())
        .map(|i| {
            let st = base.sibling(&format!("step{i}"));
            st.push(&env, &ai, "a", &[]);
            st.delete("images/a.cbtm");
            st
        })
        .collect();
    std::thread::sleep(Duration::from_millis(GRACE * 1000 + 1200));

    let mut failures = Vec::new();
    for ((step, method, needle, pass), st) in PUSH_STEPS.iter().zip(&stores) {
        let packs_a = st.packs();
        let gate = Gate::start(st.s3.addr());
        gate.hold(method, needle, *pass);
        let mut p = spawn(
            &env,
            &args![
                "store",
                "push",
                bi,
                st.url("b"),
                "--endpoint",
                gate.endpoint(),
                "--json"
            ],
            &format!("store push b (gc {step})"),
        );
        // The push waits at the step (or finished without reaching it).
        wait_until("the push at its step", HANG, || {
            gate.held() > 0 || matches!(p.child.try_wait(), Ok(Some(_)))
        });
        let reached = gate.held() > 0;
        let gc = cbt(
            &env,
            &args![
                "store",
                "gc",
                st.root(),
                "--grace",
                GRACE.to_string(),
                "--endpoint",
                st.endpoint(),
                "--json"
            ],
        );
        gate.open();
        let (status, out, err) = p.finish(HANG);
        let left = st.packs();
        let gone = packs_a.keys().filter(|id| !left.contains_key(*id)).count();
        let about = format!(
            "gc {step} (reached: {reached}; gc {}: {}; {gone} of A's {} packs deleted)",
            gc.status,
            text(&gc).trim(),
            packs_a.len()
        );
        eprintln!("{about}");
        if !status.success() {
            if !st.names("images").is_empty() {
                failures.push(format!("{about}: the push failed ({err}) but wrote a manifest"));
            }
            continue;
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        let pulled_out = env.path(&format!("out/{}.raw", st.prefix));
        let pulled = cbt(
            &env,
            &args!["recv", st.url("b"), pulled_out, "--endpoint", st.endpoint()],
        );
        if !pulled.status.success() {
            failures.push(format!(
                "{about}: the push succeeded ({} blocks already stored), but its image cannot be pulled: {}",
                json_u64(&v, "blocks_already_stored"),
                stderr(&pulled).trim()
            ));
            continue;
        }
        assert_same(&pulled_out, &b);
        st.verify_clean(&env, 1);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn gc_goes_on_when_a_lease_it_listed_is_gone() {
    let st = Store::new("vanish-bucket", "v");
    let env = TestEnv::new();
    let b = blocks(1024, 70, |i| i % 16 == 0);
    let bi = write_image(&env, "b.raw", &b);

    // The push waits at its first pack, its lease written.
    let to_push = Gate::start(st.s3.addr());
    to_push.hold("PUT", "/packs/", 0);
    let p = spawn_push(&env, &st, &bi, "b", &to_push.endpoint(), "store push b");
    to_push.wait_held(1, HANG);
    assert_eq!(st.names("leases").len(), 1);

    // The gc has listed the lease and is about to read it.
    let to_gc = Gate::start(st.s3.addr());
    to_gc.hold("GET", "/leases/", 0);
    let gc = spawn(
        &env,
        &args![
            "store",
            "gc",
            st.root(),
            "--grace",
            "600",
            "--endpoint",
            to_gc.endpoint(),
            "--json"
        ],
        "store gc",
    );
    to_gc.wait_held(1, HANG);

    // The push finishes meanwhile; then the gc reads.
    to_push.open();
    push_report(p, "push b");
    assert_eq!(st.names("leases"), Vec::<String>::new());
    to_gc.open();
    let (status, out, err) = gc.finish(HANG);
    assert!(
        status.success(),
        "gc failed because a lease it listed was deleted by its finished push: {status}\n{err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json_u64(&v, "deleted"), 0, "{v:#}");

    let out = env.path("out/b.raw");
    st.pull(&env, "b", &out, &[]);
    assert_same(&out, &b);
}
