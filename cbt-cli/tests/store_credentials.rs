//! End-to-end tests of the block store's credentials (docs/STORE.md):
//! where keys may come from, that none appears in any output, and that
//! cbt contacts no host the user did not name (no cloud metadata service
//! unless `--credentials instance`). Against moto's S3 server
//! (`common::s3`), and listeners that record who connects.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::ffi::OsString;
use std::fs;
use std::process::Output;

use serde_json::Value;

use common::s3::{cbt_command_as, cbt_command_with, run, Tap, REGION};
use common::store_world::*;
use common::{assert_clean_failure, assert_code, closed_port, json_u64, stderr, TestEnv};

#[test]
fn no_credential_appears_in_any_output() {
    const ACCESS: &str = "AKIACBTLEAKPROBE7Q2Z";
    const SECRET: &str = "cbtLeakProbeSecret+9f8e7d6c5b4a3210";
    let st = Store::new("creds-bucket", "c");
    let env = TestEnv::new();
    let data = blocks(512, 50, |i| i % 16 == 0);
    let img = write_image(&env, "disk.raw", &data);
    let run_as = |args: &[OsString], log: bool| {
        let mut cmd = cbt_command_as(&env, ACCESS, SECRET, args);
        if log {
            cmd.env("CBT_LOG", "trace");
        }
        run(cmd, &common::proc::show(args))
    };
    let mut runs: Vec<(String, Output)> = Vec::new();

    let a = args![
        "store",
        "push",
        img,
        st.url("disk"),
        "--endpoint",
        st.endpoint(),
        "--json"
    ];
    let out = run_as(&a, false);
    common::assert_success(&out, "cbt", &a);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json_u64(&v, "blocks_uploaded"), nonzero(&data), "{v:#}");
    runs.push(("push --json".into(), out));

    let a = args![
        "store",
        "push",
        img,
        st.url("logged"),
        "--endpoint",
        st.endpoint()
    ];
    let out = run_as(&a, true);
    common::assert_success(&out, "cbt", &a);
    runs.push(("push with CBT_LOG=trace".into(), out));

    let a = args![
        "recv",
        st.url("missing"),
        env.path("out/missing.raw"),
        "--endpoint",
        st.endpoint()
    ];
    let out = run_as(&a, false);
    assert_clean_failure(&out, &a);
    assert!(stderr(&out).contains("images/missing.cbtm"), "{}", stderr(&out));
    runs.push(("recv of a missing image".into(), out));

    let closed = closed_port();
    let a = args![
        "store",
        "push",
        img,
        st.url("disk"),
        "--endpoint",
        format!("http://{closed}")
    ];
    let out = run_as(&a, false);
    assert_clean_failure(&out, &a);
    assert!(stderr(&out).contains(&closed), "{}", stderr(&out));
    // A store that cannot be reached is a failed connection: exit 4.
    assert_code(&out, 4);
    runs.push(("push to a closed port".into(), out));

    let a = args![
        "store",
        "ls",
        "s3://no-such-bucket/c",
        "--endpoint",
        st.endpoint()
    ];
    let out = run_as(&a, false);
    assert_clean_failure(&out, &a);
    assert!(stderr(&out).contains("no-such-bucket"), "{}", stderr(&out));
    runs.push(("ls of a missing bucket".into(), out));

    for (what, out) in &runs {
        for value in [ACCESS, SECRET] {
            assert!(
                !text(out).contains(value),
                "{what}: the output shows a credential:\n{}",
                text(out)
            );
        }
    }
}

#[test]
fn keys_can_come_from_a_private_credentials_file() {
    let st = Store::new("keyfile-bucket", "k");
    let env = TestEnv::new();
    let data = blocks(64, 31, |_| false);
    let img = write_image(&env, "disk.raw", &data);
    let file = env.path("credentials");
    let secret = "file-secret-9d1c7b";
    fs::write(
        &file,
        format!("[other]\naws_access_key_id = nope\n[default]\naws_access_key_id = file-key-4e2a\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    let push = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        let a = args![
            "store",
            "push",
            img,
            st.url("disk"),
            "--endpoint",
            st.endpoint(),
            "--credentials",
            file
        ];
        // The environment's keys are empty: only the file's can work.
        run(cbt_command_as(&env, "", "", &a), "store push --credentials")
    };
    let open = push(0o644);
    assert_code(&open, 2);
    assert!(stderr(&open).contains("mode 600"), "{}", stderr(&open));
    let ok = push(0o600);
    assert_code(&ok, 0);
    assert_eq!(st.names("images"), ["disk.cbtm"]);
    for out in [&open, &ok] {
        assert!(
            !text(out).contains(secret),
            "the secret was printed:\n{}",
            text(out)
        );
    }
}

/// What cbt says with no keys (issue 22, item 4).
const NO_CREDENTIALS: &str =
    "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --credentials FILE";

/// Issue 22, item 4: with no keys, the S3 client fell back to the
/// credential providers of object_store's environment (the instance
/// metadata service at 169.254.169.254, the ECS/EKS container endpoints,
/// STS for a web identity token), contacting hosts nobody named, and
/// failed with a 403 that never said "no credentials". Every variable
/// that could send it to one of them points here at a listener that
/// records connections, the endpoint is another: neither may be
/// contacted, and the command fails at once as a usage error.
#[test]
fn without_credentials_no_host_is_contacted() {
    let env = TestEnv::new();
    let img = write_image(&env, "disk.raw", &blocks(16, 70, |i| i == 0));
    let endpoint = Tap::start();
    let decoy = Tap::start();
    let token = env.path("token");
    fs::write(&token, "a-web-identity-token").unwrap();
    let token = token.to_str().unwrap().to_string();
    let metadata = decoy.url();
    let full_uri = format!("{}/v1/credentials", decoy.url());
    let sts = format!("https://{}", decoy.addr());
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "the metadata service moved (AWS_METADATA_ENDPOINT)",
            vec![("AWS_METADATA_ENDPOINT", &metadata), ("AWS_REGION", REGION)],
        ),
        (
            "an EKS pod identity endpoint",
            vec![
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &full_uri),
                ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token),
            ],
        ),
        (
            "a web identity token, an ECS task endpoint",
            vec![
                ("AWS_WEB_IDENTITY_TOKEN_FILE", &token),
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/cbt"),
                ("AWS_ENDPOINT_URL_STS", &sts),
                ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/cbt"),
            ],
        ),
        (
            "an empty access key, no secret",
            vec![("AWS_ACCESS_KEY_ID", ""), ("AWS_REGION", REGION)],
        ),
        ("no AWS variable at all", vec![]),
    ];
    let url = "s3://bucket/store";
    let image_url = format!("{url}/disk");
    let e = endpoint.url();
    let commands = [
        args!["store", "push", img, image_url, "--endpoint", e].to_vec(),
        args!["store", "ls", url, "--endpoint", e].to_vec(),
        args!["store", "verify", url, "--endpoint", e].to_vec(),
        args!["store", "gc", url, "--endpoint", e].to_vec(),
        args!["recv", image_url, env.path("out/disk.raw"), "--endpoint", e].to_vec(),
    ];
    for (what, vars) in &cases {
        for a in &commands {
            let out = run(cbt_command_with(&env, vars, a), &common::proc::show(a));
            let (contacted, asked) = (endpoint.seen(), decoy.seen());
            assert!(
                contacted.is_empty() && asked.is_empty(),
                "{what}: cbt {} contacted the endpoint {contacted:?} and the credential services {asked:?}\n{}",
                common::proc::show(a),
                text(&out)
            );
            assert_code(&out, 2);
            assert!(stderr(&out).contains(NO_CREDENTIALS), "{what}: {}", stderr(&out));
        }
    }
    assert!(!env.path("out/disk.raw").exists());
}

/// `--credentials instance` is the one way to the instance metadata
/// service (here at a listener named by AWS_EC2_METADATA_SERVICE_ENDPOINT,
/// which refuses): cbt asks it for a token and nothing else, and the
/// store is not contacted without keys. With the variables that would
/// make object_store exchange a web identity token instead, it refuses
/// before contacting anything.
#[test]
fn the_metadata_service_is_asked_only_with_credentials_instance() {
    let env = TestEnv::new();
    let endpoint = Tap::start();
    let imds = Tap::start();
    let a = args![
        "store",
        "ls",
        "s3://bucket/store",
        "--endpoint",
        endpoint.url(),
        "--credentials",
        "instance"
    ];
    let service = imds.url();
    let out = run(
        cbt_command_with(&env, &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &service)], &a),
        "store ls --credentials instance",
    );
    assert_clean_failure(&out, &a);
    let asked = imds.seen();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| r.starts_with("PUT /latest/api/token ")),
        "the metadata service was asked {asked:?}:\n{}",
        text(&out)
    );
    assert_eq!(endpoint.seen(), Vec::<String>::new(), "{}", text(&out));
    assert!(!stderr(&out).contains(NO_CREDENTIALS), "{}", stderr(&out));

    let token = env.path("token");
    fs::write(&token, "a-web-identity-token").unwrap();
    let out = run(
        cbt_command_with(
            &env,
            &[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &service),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", token.to_str().unwrap()),
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/cbt"),
            ],
            &a,
        ),
        "store ls --credentials instance (web identity set)",
    );
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{}",
        stderr(&out)
    );
    assert_eq!(imds.seen().len(), asked.len(), "{}", text(&out));
    assert_eq!(endpoint.seen(), Vec::<String>::new(), "{}", text(&out));
}
