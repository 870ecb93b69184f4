//! The network commands (`cbt send`, `cbt recv`, `cbt serve`): thin
//! wrappers that resolve options, start a tokio runtime, install the
//! SIGTERM / ctrl-c handler and call `cbt-net`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use cbt_core::{open_image, ImageSpec, OutputFormat};
use cbt_net::{
    parse_target, ClientOptions, Compression, ReceiveOptions, Secret, SendOptions, ServeOptions, Shutdown,
    Timeouts, TransferReport,
};

use crate::cli::{Command, Config};

/// Runs `cbt send`, `cbt recv` or `cbt serve`.
pub fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Send {
            image,
            dest,
            snapshot,
            send: s,
            net,
            json,
        } => send(config, &image, snapshot, &dest, &net, &s, json),
        Command::Recv {
            args,
            listen,
            seeds,
            format,
            net,
            json,
        } => recv(config, &args, listen.as_deref(), seeds, format.into(), &net, json),
        Command::Serve {
            listen,
            data,
            seeds,
            export,
            max_connections,
            format,
            send: s,
            net,
        } => {
            let args = ServeArgs {
                listen,
                data,
                seeds,
                export,
                max_connections,
                format: format.into(),
            };
            serve(config, args, &net, &s)
        }
        _ => bail!("not a network command"),
    }
}

/// Options shared by the network commands.
#[derive(Debug, Clone, Args)]
pub struct NetOpts {
    /// File holding the shared secret (default: $CBT_SECRET_FILE). Both
    /// ends must have the same secret; it never crosses the network.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Give up on a peer silent for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub idle_timeout: u64,
}

/// Options of a sending side.
#[derive(Debug, Clone, Args)]
pub struct SendOpts {
    /// Compression of the blocks sent: none, zstd or zstd:LEVEL (1-19).
    #[arg(long, value_name = "METHOD", default_value = "zstd")]
    pub compress: String,
    /// Limit the sending rate, in bytes per second (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
}

/// `cbt send IMAGE HOST:PORT[/NAME]`.
pub fn send(
    config: &Config,
    image: &Path,
    snapshot: Option<String>,
    dest: &str,
    net: &NetOpts,
    s: &SendOpts,
    json: bool,
) -> anyhow::Result<()> {
    let target = parse_target(dest).map_err(anyhow::Error::msg)?;
    let client = client_options(net, Some(s))?;
    let send_options = send_options(config, s)?;
    let spec = ImageSpec {
        path: image.to_path_buf(),
        snapshot,
    };
    let image = open_image(&spec)?;
    let report = run_with_signals(|shutdown| async move {
        cbt_net::push(
            &target.addr,
            target.name.as_deref(),
            image,
            &send_options,
            &client,
            shutdown,
        )
        .await
    })?;
    print_report(&report, json)
}

/// `cbt recv HOST:PORT/NAME OUT` or `cbt recv --listen ADDR OUT`.
pub fn recv(
    config: &Config,
    args: &[String],
    listen: Option<&str>,
    seeds: Vec<PathBuf>,
    format: OutputFormat,
    net: &NetOpts,
    json: bool,
) -> anyhow::Result<()> {
    let client = client_options(net, None)?;
    let (source, out) = match (listen, args) {
        (Some(_), [out]) => (None, PathBuf::from(out)),
        (Some(_), _) => bail!("with --listen, give only the output path"),
        (None, [src, out]) => {
            let target = parse_target(src).map_err(anyhow::Error::msg)?;
            let Some(name) = target.name.clone() else {
                bail!("{src}: give the image's name at the daemon (HOST:PORT/NAME), or use --listen ADDR");
            };
            (Some((target.addr, name)), PathBuf::from(out))
        }
        (None, _) => bail!("give HOST:PORT/NAME and the output path, or --listen ADDR and the output path"),
    };
    if out.is_dir() {
        bail!(
            "{}: is a directory; give the path of the image to write",
            out.display()
        );
    }
    for s in &seeds {
        if !s.exists() {
            bail!("{}: seed root does not exist", s.display());
        }
    }
    let mut options = ReceiveOptions::new(out);
    options.format = format;
    options.seeds = seeds;
    options.index = config.index.clone();
    let report = match (source, listen) {
        (Some((addr, name)), _) => run_with_signals(|shutdown| async move {
            cbt_net::pull(&addr, &name, options, &client, shutdown).await
        })?,
        (None, Some(listen)) => {
            let listen = listen.to_string();
            run_with_signals(|shutdown| async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| cbt_net::Error::Config(format!("cannot listen on {listen}: {e}")))?;
                announce(&listener);
                cbt_net::receive_once(listener, options, &client, shutdown).await
            })?
        }
        (None, None) => bail!("no source given"),
    };
    print_report(&report, json)
}

/// Everything `cbt serve` takes.
#[derive(Debug)]
pub struct ServeArgs {
    pub listen: String,
    pub data: PathBuf,
    pub seeds: Vec<PathBuf>,
    pub export: Option<PathBuf>,
    pub max_connections: usize,
    pub format: OutputFormat,
}

/// `cbt serve`.
pub fn serve(config: &Config, a: ServeArgs, net: &NetOpts, s: &SendOpts) -> anyhow::Result<()> {
    let client = client_options(net, Some(s))?;
    if !a.data.is_dir() {
        bail!("{}: the data directory does not exist", a.data.display());
    }
    let mut options = ServeOptions::new(a.data);
    options.seeds = a.seeds;
    options.export = a.export;
    options.secret = client.secret;
    options.max_connections = a.max_connections;
    options.timeouts = client.timeouts;
    options.handshake_timeout = client.handshake_timeout;
    options.bwlimit = client.bwlimit;
    options.send = send_options(config, s)?;
    options.receive.format = a.format;
    options.receive.index = config.index.clone();
    if options.secret.is_none() {
        tracing::warn!("no --secret-file: any client that can connect may push and pull");
    }
    let runtime = runtime()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("cannot listen on {}", a.listen))?;
        announce(&listener);
        cbt_net::serve(listener, options, signalled())
            .await
            .map_err(net_error)
    })
}

fn announce(listener: &tokio::net::TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        // Scripts and tests read this line to learn the port.
        eprintln!("cbt: listening on {addr}");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cbt-net")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a transfer; the first SIGTERM or ctrl-c cancels it.
fn run_with_signals<F, Fut>(f: F) -> anyhow::Result<TransferReport>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = cbt_net::Result<TransferReport>>,
{
    let runtime = runtime()?;
    runtime.block_on(async move {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            signalled().await;
            tracing::warn!("signal received: stopping");
            trigger.trigger();
        });
        f(shutdown).await.map_err(net_error)
    })
}

/// Resolves on SIGTERM or ctrl-c.
async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
}

/// Keeps engine errors recognisable for the exit code.
fn net_error(e: cbt_net::Error) -> anyhow::Error {
    match e {
        cbt_net::Error::Core(c) => c.into(),
        other => other.into(),
    }
}

fn client_options(net: &NetOpts, send: Option<&SendOpts>) -> anyhow::Result<ClientOptions> {
    let secret_file = net.secret_file.clone().or_else(|| {
        std::env::var_os("CBT_SECRET_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let secret = secret_file
        .as_deref()
        .map(Secret::from_file)
        .transpose()
        .map_err(net_error)?;
    if net.idle_timeout < 5 {
        bail!("--idle-timeout must be at least 5 seconds");
    }
    let idle = Duration::from_secs(net.idle_timeout);
    let bwlimit = send
        .and_then(|s| s.bwlimit.as_deref())
        .map(parse_rate)
        .transpose()?;
    Ok(ClientOptions {
        secret,
        timeouts: Timeouts {
            idle,
            keepalive: (idle / 4).min(Duration::from_secs(10)),
        },
        handshake_timeout: idle.min(Duration::from_secs(30)),
        bwlimit,
    })
}

fn send_options(config: &Config, s: &SendOpts) -> anyhow::Result<SendOptions> {
    let compression: Compression = s
        .compress
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--compress: {e}"))?;
    Ok(SendOptions {
        block_size: config.index.block_size,
        threads: config.threads,
        compression,
    })
}

/// `1000`, `64K`, `10M`, `1G` (per second; K/M/G are powers of 1024).
pub fn parse_rate(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().trim_end_matches("/s").trim_end_matches(['B', 'b']);
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = digits
        .trim()
        .parse()
        .with_context(|| format!("--bwlimit {s:?}: not a rate (e.g. 500K, 10M)"))?;
    let rate = n * mult as f64;
    if !(rate >= 1024.0 && rate.is_finite()) {
        bail!("--bwlimit {s:?}: at least 1K per second");
    }
    Ok(rate as u64)
}

fn print_report(r: &TransferReport, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a TransferReport,
        }
        serde_json::to_writer_pretty(&mut out, &Out { report: r })?;
        writeln!(out)?;
        return Ok(());
    }
    let pct = |n: u64| {
        if r.blocks_total > 0 {
            n as f64 * 100.0 / r.blocks_total as f64
        } else {
            0.0
        }
    };
    match &r.output {
        Some(o) => writeln!(
            out,
            "received {} from {} into {} in {:.2}s",
            r.source,
            r.peer,
            o.display(),
            r.seconds
        )?,
        None => writeln!(out, "sent {} to {} in {:.2}s", r.source, r.peer, r.seconds)?,
    }
    writeln!(
        out,
        "  image:        {:>14} bytes, {} blocks",
        r.image_bytes, r.blocks_total
    )?;
    writeln!(
        out,
        "  zero blocks:  {:>14} ({:.1}%)",
        r.blocks_zero,
        pct(r.blocks_zero)
    )?;
    writeln!(
        out,
        "  local blocks: {:>14} ({:.1}%)",
        r.blocks_local,
        pct(r.blocks_local)
    )?;
    writeln!(
        out,
        "  sent blocks:  {:>14} ({:.1}%)",
        r.blocks_sent,
        pct(r.blocks_sent)
    )?;
    let wire = r.wire_bytes_sent + r.wire_bytes_received;
    let saved = if r.image_bytes > 0 {
        100.0 - wire as f64 * 100.0 / r.image_bytes as f64
    } else {
        0.0
    };
    writeln!(
        out,
        "  on the wire:  {:>14} bytes sent, {} received ({saved:.1}% less than the image)",
        r.wire_bytes_sent, r.wire_bytes_received
    )?;
    writeln!(
        out,
        "  observed bandwidth: {:.1} MB/s",
        r.observed_bandwidth / 1e6
    )?;
    writeln!(
        out,
        "  verified: image digest {}",
        &r.image_digest[..16.min(r.image_digest.len())]
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("64K").unwrap(), 65536);
        assert_eq!(parse_rate("2M").unwrap(), 2 << 20);
        assert_eq!(parse_rate("1.5M/s").unwrap(), 3 << 19);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10").is_err());
    }
}
