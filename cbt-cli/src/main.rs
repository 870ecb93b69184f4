//! The `cbt` command-line tool: parses options, calls the libraries
//! (`cbt-core`, `cbt-teleport`, `cbt-net`), prints results for people or
//! as JSON.

mod cli;
mod commands;
mod completions;
mod demo;
mod describe_commands;
mod exit_codes;
mod metrics;
mod mirror_commands;
mod net_commands;
mod progress;
mod rates;
mod rebuild_commands;
mod serve_commands;
mod serve_config;
mod stdout;
mod store_commands;
mod systemd;
mod teleport_commands;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use exit_codes::Exit;

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    init_logging(opts.verbose, matches!(opts.command, cli::Command::Serve { .. }));
    match commands::run(opts) {
        Ok(()) => Exit::Ok.into(),
        Err(err) => {
            if stdout::is_stdout_closed(&err) {
                return Exit::Ok.into();
            }
            let mut stderr = std::io::stderr().lock();
            let mut shown = err.to_string();
            let _ = write!(stderr, "cbt: error: {shown}");
            for cause in err.chain().skip(1) {
                // Library errors already end with their cause; do not say it twice.
                let text = cause.to_string();
                if !shown.ends_with(&text) {
                    let _ = write!(stderr, "\n  caused by: {text}");
                }
                shown = text;
            }
            let _ = writeln!(stderr);
            Exit::of(&err).into()
        }
    }
}

fn init_logging(verbose: u8, daemon: bool) {
    let default = match verbose {
        // An operator wants every transfer of the daemon in its log.
        0 if daemon => "warn,cbt=info,cbt_net=info,cbt_core=info,cbt_teleport=info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CBT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
