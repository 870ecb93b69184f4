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
        out.write_all(&render(&cmd)?)?;
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
    let path = dir.join(page(cmd).get_filename());
    std::fs::write(&path, render(cmd)?).with_context(|| format!("{}: cannot write", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The page of `cmd` as roff: clap_mangen's sections, then EXIT STATUS
/// (every page: the codes are the same for every command) and, on cbt(1),
/// EXAMPLES, before VERSION as man-pages(7) orders them.
fn render(cmd: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut roff = Vec::new();
    page(cmd).render(&mut roff)?;
    let roff = String::from_utf8(roff).context("clap_mangen wrote a page that is not UTF-8")?;
    let mut extra = String::from(EXIT_STATUS);
    if cmd.get_name() == BIN {
        extra.push_str(EXAMPLES);
    }
    let at = roff.find("\n.SH VERSION").map_or(roff.len(), |i| i + 1);
    Ok([&roff[..at], &extra, &roff[at..]].concat().into_bytes())
}

/// README's exit-code table ("Exit codes"), as a man page section.
const EXIT_STATUS: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success. A transfer exits 0 only when the receiver verified and published the image.
.TP
\fB1\fR
Failure, among them a peer that refuses the secret or breaks the protocol.
.TP
\fB2\fR
Usage: a bad option or value, missing or swapped arguments, an unknown key or bad value in \fBcbt serve \-\-config\fR.
.TP
\fB3\fR
Malformed or unsupported input (among them a device, fifo or socket given as an image, and image formats cbt does not read).
.TP
\fB4\fR
I/O error, among them a symbolic link where cbt writes a file and a failed connection (refused, unreachable, reset, timed out or closed midway).
.TP
\fB5\fR
Verification failure.
.TP
\fB6\fR
A functional copy (\fBcbt teleport \-\-functional\fR) rebuilt and verified with other package versions than the source's or with user-data entries it could not carry.
.PP
A closed standard output (\fBcbt ... | head\fR) is the only broken pipe that is not an error.
"#;

/// cbt(1)'s EXAMPLES.
const EXAMPLES: &str = r#".SH EXAMPLES
.PP
Rebuild a new image from the blocks of older ones, reading only what they lack from the source:
.PP
.RS 4
.nf
cbt copy new.qcow2 out.raw \-\-seed /var/lib/libvirt/images
.fi
.RE
.PP
How much of a source the images under a directory already hold:
.PP
.RS 4
.nf
cbt estimate new.raw \-\-against /var/lib/libvirt/images
.fi
.RE
.PP
Run a daemon that takes pushed images and seeds from its images, then push to it and pull from it:
.PP
.RS 4
.nf
cbt serve \-\-listen 0.0.0.0:4730 \-\-data /srv/cbt \-\-export /srv/cbt \-\-secret\-file /etc/cbt/secret
cbt send vm.qcow2 backup.example:4730/vm.raw \-\-secret\-file /etc/cbt/secret
cbt recv backup.example:4730/vm.raw vm.raw \-\-seed /var/lib/libvirt/images \-\-secret\-file /etc/cbt/secret
.fi
.RE
.PP
Describe the guest on an image, then plan a teleport over a 100 Mbit/s link:
.PP
.RS 4
.nf
cbt describe vm.raw \-\-packages
cbt teleport plan vm.raw \-\-candidates /var/lib/libvirt/images \-\-link 100Mbit
.fi
.RE
"#;

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
