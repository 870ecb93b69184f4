//! The `cbt` command-line tool: parses options, calls the libraries
//! (`cbt-core`, `cbt-teleport`, `cbt-net`), prints results for people or
//! as JSON.

mod cli;
mod commands;
mod demo;
mod describe_commands;
mod exit_codes;
mod mirror_commands;
mod net_commands;
mod progress;
mod serve_config;
mod stdout;
mod teleport_commands;

use std::io::Write;
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
    init_logging(opts.common.verbose);
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

fn init_logging(verbose: u8) {
    let default = match verbose {
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
        .try_init();
}
