//! End-to-end tests of `cbt completions SHELL` and `cbt man`: the scripts
//! name every subcommand and the bash one is valid bash; the man pages
//! (one per subcommand) render with groff.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::fs;
use std::process::{Command, Output};

use common::{assert_success, tool, TestEnv};

/// The subcommands every script and the page set must know.
const SUBCOMMANDS: [&str; 11] = [
    "copy",
    "estimate",
    "index",
    "send",
    "recv",
    "serve",
    "describe",
    "teleport",
    "demo",
    "completions",
    "man",
];

/// Runs `cbt ARGS...` with no `$HOME` or `$XDG_CACHE_HOME`, as in a
/// packaging chroot: these commands must not need a cache directory.
fn cbt_homeless(env: &TestEnv, args: &[std::ffi::OsString]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cbt"))
        .args(args)
        .current_dir(env.root())
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap()
}

#[test]
fn completion_scripts_name_every_subcommand() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let args = args!["completions", shell];
        let out = cbt_homeless(&env, &args);
        assert_success(&out, "cbt", &args);
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.len() > 1000, "{shell}: a short script:\n{script}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell}: no {sub:?} in:\n{script}");
        }
        // Options of subcommands too, not only the names.
        assert!(script.contains("inplace"), "{shell}: no --inplace");
    }

    // The bash script parses, and defines the function it registers.
    let args = args!["completions", "bash"];
    let out = cbt_homeless(&env, &args);
    let script = env.path("cbt.bash");
    fs::write(&script, &out.stdout).unwrap();
    let check = Command::new(tool("bash", "bash"))
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert_success(&check, "bash -n", &args![script]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("complete -F _cbt"), "{text}");

    // Sourced into bash, completing `cbt co` offers the subcommands
    // starting with "co".
    let probe = format!(
        "source {}; COMP_WORDS=(cbt co); COMP_CWORD=1; COMP_LINE='cbt co'; COMP_POINT=6; \
         _cbt cbt co cbt; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new(tool("bash", "bash"))
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    assert_success(&out, "bash -c", &args![probe]);
    let mut offered: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    offered.sort();
    assert_eq!(offered, ["completions", "copy"]);
}

#[test]
fn unknown_shell_is_a_usage_error() {
    let env = TestEnv::new();
    let out = cbt_homeless(&env, &args!["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_pages_for_every_subcommand_render() {
    let env = TestEnv::new();
    let dir = env.path("share/man/man1");
    let args = args!["man", "--dir", dir];
    let out = cbt_homeless(&env, &args);
    assert_success(&out, "cbt", &args);
    // The directory did not exist: cbt made it, and lists what it wrote.
    let listing = String::from_utf8(out.stdout).unwrap();
    let mut pages: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(listing.lines().count(), pages.len(), "{listing}");
    for sub in SUBCOMMANDS {
        let name = format!("cbt-{sub}.1");
        assert!(pages.contains(&name), "no {name} in {pages:?}");
    }
    // Nested subcommands get pages too; the generated `help` does not.
    for name in ["cbt.1", "cbt-teleport-plan.1", "cbt-teleport-fetch.1"] {
        assert!(pages.contains(&name.to_string()), "no {name} in {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("help")), "{pages:?}");

    let groff = tool("groff", "groff-base");
    for page in &pages {
        let path = dir.join(page);
        let roff = fs::read_to_string(&path).unwrap();
        assert!(roff.contains("\n.TH "), "{page}: no .TH header:\n{roff}");
        let out = Command::new(&groff)
            // Plain text: no overstrike or escapes for bold and underline.
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(&path)
            .output()
            .unwrap();
        assert_success(&out, "groff", &args![path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.trim().is_empty(), "{page}: groff warns:\n{err}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}:\n{text}"
        );
        assert!(
            text.contains(&format!("cbt {}", env!("CARGO_PKG_VERSION"))),
            "{page}:\n{text}"
        );
    }
    let copy = fs::read_to_string(dir.join("cbt-copy.1")).unwrap();
    assert!(copy.contains("inplace") && copy.contains("seed"), "{copy}");

    // Without --dir, cbt.1 goes to stdout.
    let out = cbt_homeless(&env, &args!["man"]);
    assert_success(&out, "cbt", &args!["man"]);
    assert_eq!(out.stdout, fs::read(dir.join("cbt.1")).unwrap());
}

/// The codes README's exit-code paragraph names ("Exit codes: 0 success,
/// 1 failure ..."): each digit followed by a word, in order, once.
fn readme_exit_codes() -> Vec<u32> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("Exit codes: ")
        .expect("README has an exit-code paragraph");
    let para = &readme[start..readme[start..].find("\n\n").map_or(readme.len(), |e| start + e)];
    let words: Vec<&str> = para.split_whitespace().collect();
    let mut codes: Vec<u32> = words
        .windows(2)
        .filter(|w| w[1].starts_with(|c: char| c.is_ascii_alphabetic()))
        .filter_map(|w| w[0].trim_start_matches('(').parse().ok())
        .filter(|c| *c < 10)
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

#[test]
fn the_manual_has_exit_status_as_readme_and_examples() {
    let env = TestEnv::new();
    let dir = env.path("man1");
    assert_success(
        &cbt_homeless(&env, &args!["man", "--dir", dir]),
        "cbt",
        &args!["man"],
    );
    let groff = tool("groff", "groff-base");
    let text = |page: &str| {
        let out = Command::new(&groff)
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(dir.join(page))
            .output()
            .unwrap();
        assert!(
            out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let main = text("cbt.1");
    let section = |t: &str, name: &str| -> String {
        let start = t
            .find(&format!("\n{name}\n"))
            .unwrap_or_else(|| panic!("no {name}:\n{t}"));
        let rest = &t[start + name.len() + 2..];
        // The next section heading starts a line in capitals.
        let end = rest
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .find(|&i| rest[i..].starts_with(|c: char| c.is_ascii_uppercase()))
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let exit = section(&main, "EXIT STATUS");
    // Each code starts an entry, indented less than its text.
    let codes: Vec<u32> = exit
        .lines()
        .filter(|l| l.len() - l.trim_start().len() < 10)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(codes, readme_exit_codes(), "EXIT STATUS:\n{exit}");
    assert_eq!(codes, (0..=6).collect::<Vec<u32>>());
    let examples = section(&main, "EXAMPLES");
    for cmd in [
        "cbt copy",
        "cbt serve",
        "cbt send",
        "cbt recv",
        "cbt teleport plan",
    ] {
        assert!(examples.contains(cmd), "no {cmd} in EXAMPLES:\n{examples}");
    }
    // Every page has the codes; only cbt(1) the examples.
    let copy = text("cbt-copy.1");
    assert!(
        copy.contains("\nEXIT STATUS\n") && !copy.contains("\nEXAMPLES\n"),
        "{copy}"
    );
}
