//! `cbt completions SHELL` and `cbt man`: shell completion scripts and
//! manual pages generated from the clap definitions in [`crate::cli`], so
//! they can never drift from the options the binary really takes.
//!
//! Both are produced by the installed binary rather than at build time:
//! packagers run `cbt completions bash > ...` and `cbt man --dir ...` after
//! `cargo install`, and nothing generated is kept in the tree to go stale.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Opts;

/// The name the scripts complete and the pages are titled with: the name
/// the binary is installed under, whatever `argv[0]` was.
const BIN: &str = "cbt";

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Opts::command();
    // clap_complete panics on a write error; generating into memory first
    // lets `cbt completions bash | head` end quietly like any other output.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut script);
    out.write_all(&script)?;
    out.flush()?;
    Ok(())
}

/// `cbt man`: without a directory, prints cbt.1 to `out`; with one, writes
/// cbt.1 and a page per subcommand (cbt-copy.1, cbt-teleport-plan.1, ...)
/// there, creating it if needed, and lists the files written on `out`.
pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<()> {
    // The generated `help` subcommand has no page of its own.
    let mut cmd = Opts::command().disable_help_subcommand(true);
    // Building fills in the display names ("cbt-copy") the page titles
    // and file names are made from.
    cmd.build();
    let Some(dir) = dir else {
        page(&cmd).render(out)?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Writes the page of `cmd` and of each of its visible subcommands, depth
/// first, pushing each path written onto `written`.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let page = page(cmd);
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)?;
    std::fs::write(&path, roff).with_context(|| format!("{}: cannot write", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The page of `cmd`, its footer naming cbt and its version (clap_mangen
/// would put the subcommand's name and no version there).
fn page(cmd: &clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd.clone())
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .manual("cbt manual")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let mut listing = Vec::new();
        man(Some(dir.path()), &mut listing).unwrap();
        let listing = String::from_utf8(listing).unwrap();
        for name in ["cbt.1", "cbt-copy.1", "cbt-recv.1", "cbt-completions.1"] {
            let page = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(page.contains(".TH"), "{name}: {page}");
            assert!(listing.contains(name), "{listing}");
        }
        assert!(!dir.path().join("cbt-help.1").exists());
    }

    #[test]
    fn bash_script_names_the_binary() {
        let mut script = Vec::new();
        completions(Shell::Bash, &mut script).unwrap();
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("complete -F _cbt"), "{script}");
    }
}
