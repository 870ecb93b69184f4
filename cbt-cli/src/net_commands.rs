//! The network commands (`cbt send`, `cbt recv`, `cbt serve`): thin
//! wrappers that resolve options, start a tokio runtime, install the
//! SIGTERM / ctrl-c handler and call `cbt-net`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use cbt_core::{open_image, ImageSpec, OutputFormat};
use cbt_net::{
    parse_target, ClientOptions, Compression, Progress, ReceiveOptions, Secret, SendOptions, Shutdown,
    Timeouts, TlsClient, TlsServer, TransferReport,
};

use crate::cli::{Command, Config};
use crate::exit_codes::usage;
use crate::progress::{self, Bar};
use crate::serve_config::{ServeFile, ServeFlags, ServeSettings, DEFAULT_COMPRESS, DEFAULT_IDLE_TIMEOUT};
use crate::teleport_commands::CliTeleporter;

/// Runs `cbt send`, `cbt recv` or `cbt serve`.
pub fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Send {
            image,
            dest,
            snapshot,
            send: s,
            net,
            tls,
            inplace,
            force,
            allow_inconsistent,
            json,
            ..
        } => {
            crate::commands::check_source(&image, allow_inconsistent)?;
            let mut client = client_options(&net, Some(&s), Tls::Client(&tls))?;
            client.push_in_place = inplace;
            client.push_replace = force;
            send(config, &image, snapshot, &dest, client, &s, json)
        }
        Command::Recv {
            args,
            listen,
            seeds,
            format,
            net,
            tls,
            tls_server,
            mirror,
            store,
            inplace,
            json,
            ..
        } => {
            if let [source, out] = args.as_slice() {
                if source.starts_with("s3://") {
                    if listen.is_some() || inplace || !mirror.mirrors.is_empty() {
                        crate::bail_usage!(
                            "a pull from a block store takes no --listen, --inplace or --mirror"
                        );
                    }
                    return crate::store_commands::recv(
                        config,
                        source,
                        std::path::Path::new(out),
                        &seeds,
                        format,
                        &store,
                        json,
                    );
                }
            }
            let tls = match listen {
                Some(_) if tls.given() => crate::bail_usage!(
                    "--tls, --tls-ca and --tls-server-name are for the connecting side; with --listen, give --tls-cert FILE --tls-key FILE"
                ),
                Some(_) => Tls::Server(&tls_server),
                None if tls_server.given() => crate::bail_usage!(
                    "--tls-cert and --tls-key are for the listening side (cbt serve, cbt recv --listen); connect with --tls [--tls-ca FILE]"
                ),
                None => Tls::Client(&tls),
            };
            let client = client_options(&net, None, tls)?;
            let sources = mirror.sources(&config.package_caches)?;
            recv(
                config,
                &args,
                listen.as_deref(),
                (seeds, sources),
                (format.into(), inplace),
                client,
                json,
            )
        }
        Command::Serve {
            config: config_file,
            listen,
            data,
            seeds,
            export,
            max_connections,
            metrics,
            format,
            send: s,
            net,
            tls_server,
            mirror,
            ..
        } => {
            let flags = ServeFlags {
                listen,
                data,
                seeds,
                export,
                secret_file: net.secret_file,
                max_connections,
                idle_timeout: net.idle_timeout,
                metrics,
                package_cache: config.package_caches.clone(),
                tls_cert: tls_server.tls_cert,
                tls_key: tls_server.tls_key,
                format,
                compress: s.compress,
                bwlimit: s.bwlimit,
                mirrors: mirror.mirrors,
                mirror_timeout: mirror.mirror_timeout,
                mirror_jobs: mirror.mirror_jobs,
            };
            let file = match &config_file {
                Some(p) => Some((p.as_path(), ServeFile::load(p)?)),
                None => None,
            };
            let settings = ServeSettings::resolve(flags, file, env_secret_file())?;
            crate::serve_commands::serve(config, settings)
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
    /// Give up on a peer silent for this many seconds [default: 120].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
}

/// TLS options of a connecting side.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsClientOpts {
    /// Connect with TLS (the other end runs with --tls-cert and --tls-key).
    #[arg(long)]
    pub tls: bool,
    /// Trust this PEM certificate (a CA, or the server's self-signed
    /// certificate) instead of the system's CA bundle; implies --tls.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of
    /// the address]; implies --tls.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsClientOpts {
    fn given(&self) -> bool {
        self.tls || self.tls_ca.is_some() || self.tls_server_name.is_some()
    }
}

/// TLS options of a listening side.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsServerOpts {
    /// Listening side (`serve`, `recv --listen`): accept only TLS clients,
    /// with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsServerOpts {
    fn given(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some()
    }
}

/// Options of a sending side.
#[derive(Debug, Clone, Args)]
pub struct SendOpts {
    /// Compression of the blocks sent: auto (level chosen from the measured link and CPU speed), none, zstd or zstd:LEVEL (1-19) [default: auto].
    #[arg(long, value_name = "METHOD")]
    pub compress: Option<String>,
    /// Limit the sending rate: bytes per second (a bare number: bytes, not
    /// rsync's KiB), K, M, G = KiB, MiB, GiB (powers of 1024), or bits with
    /// kbit, Mbit, Gbit (powers of 1000); e.g. 500K, 10M, 100Mbit.
    #[arg(long, value_name = "RATE")]
    pub bwlimit: Option<String>,
}

/// The TLS options of the end of a connection a command is.
#[derive(Debug, Clone, Copy)]
pub enum Tls<'a> {
    /// It connects (`send`, `recv HOST:PORT/NAME`).
    Client(&'a TlsClientOpts),
    /// It listens (`serve`, `recv --listen`).
    Server(&'a TlsServerOpts),
}

/// `cbt send IMAGE HOST:PORT[/NAME]`.
pub fn send(
    config: &Config,
    image: &Path,
    snapshot: Option<String>,
    dest: &str,
    client: ClientOptions,
    s: &SendOpts,
    json: bool,
) -> anyhow::Result<()> {
    let target = parse_target(dest).map_err(anyhow::Error::msg)?;
    let send_options = send_options(config, s.compress.as_deref())?;
    let spec = ImageSpec {
        path: image.to_path_buf(),
        snapshot,
        backing: Default::default(),
    };
    let image = open_image(&spec)?;
    let report = push(
        &target,
        image,
        send_options,
        client,
        progress::wanted(config.progress, json),
    )?;
    print_report(&report, json)
}

/// Pushes `image` to `target` showing progress as `show` says, until done
/// or a signal.
pub(crate) fn push(
    target: &cbt_net::Target,
    image: Arc<dyn cbt_core::Image>,
    mut send_options: SendOptions,
    client: ClientOptions,
    show: progress::Show,
) -> anyhow::Result<TransferReport> {
    let counters = Arc::new(Progress::default());
    send_options.progress = Some(Arc::clone(&counters));
    let bar = Bar::start(show, move || progress::sending(&counters.snapshot()));
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
    drop(bar);
    Ok(report)
}

/// `cbt recv HOST:PORT/NAME OUT` or `cbt recv --listen ADDR OUT`.
pub fn recv(
    config: &Config,
    args: &[String],
    listen: Option<&str>,
    (seeds, sources): (Vec<PathBuf>, cbt_teleport::PackageSources),
    (format, in_place): (OutputFormat, bool),
    client: ClientOptions,
    json: bool,
) -> anyhow::Result<()> {
    let (source, out) = recv_endpoints(args, listen)?;
    crate::cli::warn_format_mismatch(format, &out);
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
    options.verify_readback = config.verify_readback;
    options.in_place = in_place;
    options.teleporter = Some(Arc::new(CliTeleporter {
        sources,
        link_rate: None,
        echo: None,
    }));
    let counters = Arc::new(Progress::default());
    options.progress = Some(Arc::clone(&counters));
    let bar = Bar::start(progress::wanted(config.progress, json), move || {
        progress::receiving(&counters.snapshot())
    });
    // A pull names its source as the user did (the daemon's own name for
    // it is a path relative to its export directory).
    let pulled_from = source.as_ref().map(|(addr, name)| format!("{addr}/{name}"));
    let mut report = match (source, listen) {
        (Some((addr, name)), _) => run_with_signals(|shutdown| async move {
            cbt_net::pull(&addr, &name, options, &client, shutdown).await
        })?,
        (None, Some(listen)) => {
            let listen = listen.to_string();
            run_with_signals(|shutdown| async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| listen_error(&listen, e))?;
                warn_if_open(&listener, client.secret.is_some());
                announce(&listener);
                cbt_net::receive_once(listener, options, &client, shutdown).await
            })?
        }
        (None, None) => bail!("no source given"),
    };
    drop(bar);
    if let Some(from) = pulled_from {
        if !json {
            report.source = from;
        }
    }
    print_report(&report, json)
}

/// `recv`'s positional arguments: the daemon and image name to pull from
/// (none with `--listen`) and the output path. Every mistake is a usage
/// error; arguments given the wrong way round are named as such, since
/// taken literally they fail later with a puzzling name-lookup error.
fn recv_endpoints(
    args: &[String],
    listen: Option<&str>,
) -> anyhow::Result<(Option<(String, String)>, PathBuf)> {
    match (listen, args) {
        (Some(_), [out]) => Ok((None, PathBuf::from(out))),
        (Some(_), _) => Err(usage("with --listen, give only the output path")),
        (None, [src, out]) if names_daemon_image(out) && !names_daemon_image(src) => Err(usage(format!(
            "the arguments look swapped: the source comes first: cbt recv {out} {src}"
        ))),
        (None, [src, out]) => {
            let target = parse_target(src).map_err(usage)?;
            let Some(name) = target.name.clone() else {
                return Err(usage(format!(
                    "{src}: give the image's name at the daemon (HOST:PORT/NAME), or use --listen ADDR"
                )));
            };
            Ok((Some((target.addr, name)), PathBuf::from(out)))
        }
        (None, [src]) if names_daemon_image(src) => {
            Err(usage(format!("give the output path too: cbt recv {src} OUT")))
        }
        (None, _) => Err(usage(
            "give HOST:PORT/NAME and the output path, or --listen ADDR and the output path",
        )),
    }
}

/// True for `HOST:PORT/NAME` with an explicit numeric port: a shape no
/// sensible output path has (`out/x.raw` has no port).
fn names_daemon_image(s: &str) -> bool {
    let Some((addr, name)) = s.split_once('/') else {
        return false;
    };
    !name.is_empty()
        && addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Binding `--listen ADDR` failed: a malformed address is a usage error,
/// anything else (in use, not ours, no permission) an I/O error.
pub(crate) fn listen_error(listen: &str, e: std::io::Error) -> cbt_net::Error {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        cbt_net::Error::Config(format!("cannot listen on {listen}: {e}"))
    } else {
        cbt_net::Error::Io {
            peer: listen.to_string(),
            op: "listen",
            source: e,
        }
    }
}

/// Warns when a listener without a secret can be reached from other hosts.
pub(crate) fn warn_if_open(listener: &tokio::net::TcpListener, has_secret: bool) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    match (has_secret, addr.ip().is_loopback()) {
        (true, _) => {}
        (false, false) => tracing::warn!(
            "listening on {addr}, reachable from other hosts, without a secret: anyone who can \
             connect may send images (and pull exports); give --secret-file FILE"
        ),
        (false, true) => tracing::info!("no secret file: any local user may connect"),
    }
}

pub(crate) fn announce(listener: &tokio::net::TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        // Scripts and tests read this line to learn the port.
        eprintln!("cbt: listening on {addr}");
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cbt-net")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a transfer; the first SIGTERM or ctrl-c cancels it.
pub(crate) fn run_with_signals<F, Fut>(f: F) -> anyhow::Result<TransferReport>
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
pub(crate) async fn signalled() {
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
pub(crate) fn net_error(e: cbt_net::Error) -> anyhow::Error {
    match e {
        cbt_net::Error::Core(c) => c.into(),
        other => other.into(),
    }
}

/// `CBT_SECRET_FILE`, when set and not empty.
fn env_secret_file() -> Option<PathBuf> {
    std::env::var_os("CBT_SECRET_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub(crate) fn client_options(
    net: &NetOpts,
    send: Option<&SendOpts>,
    tls: Tls<'_>,
) -> anyhow::Result<ClientOptions> {
    let secret_file = net.secret_file.clone().or_else(env_secret_file);
    let secret = secret_file
        .as_deref()
        .map(Secret::from_file)
        .transpose()
        .map_err(net_error)?;
    let idle_secs = net.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT);
    if idle_secs < 5 {
        crate::bail_usage!("--idle-timeout must be at least 5 seconds");
    }
    let idle = Duration::from_secs(idle_secs);
    let bwlimit = send
        .and_then(|s| s.bwlimit.as_deref())
        .map(crate::rates::parse_bwlimit)
        .transpose()?;
    let (tls, tls_server) = match tls {
        Tls::Client(o) if o.given() => {
            let c = match &o.tls_ca {
                Some(ca) => TlsClient::from_ca_file(ca),
                None => TlsClient::from_system_roots(),
            }
            .map_err(net_error)?;
            let c = match &o.tls_server_name {
                Some(n) => c.with_server_name(n).map_err(net_error)?,
                None => c,
            };
            (Some(c), None)
        }
        Tls::Client(_) => (None, None),
        Tls::Server(o) => match (&o.tls_cert, &o.tls_key) {
            (Some(c), Some(k)) => (None, Some(TlsServer::from_pem_files(c, k).map_err(net_error)?)),
            (None, None) => (None, None),
            (Some(_), None) => crate::bail_usage!("--tls-cert needs its key: --tls-key FILE"),
            (None, Some(_)) => crate::bail_usage!("--tls-key needs its certificate: --tls-cert FILE"),
        },
    };
    Ok(ClientOptions {
        secret,
        timeouts: Timeouts {
            idle,
            keepalive: (idle / 4).min(Duration::from_secs(10)),
        },
        handshake_timeout: idle.min(Duration::from_secs(30)),
        bwlimit,
        tls,
        tls_server,
        push_in_place: false,
        push_replace: false,
    })
}

pub(crate) fn send_options(config: &Config, compress: Option<&str>) -> anyhow::Result<SendOptions> {
    let compression: Compression = compress
        .unwrap_or(DEFAULT_COMPRESS)
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--compress: {e}"))?;
    Ok(SendOptions {
        block_size: config.index.block_size,
        threads: config.threads,
        compression,
        progress: None,
        description: None,
        on_teleport: None,
    })
}

pub(crate) fn print_report(r: &TransferReport, json: bool) -> anyhow::Result<()> {
    let mut out = crate::stdout::stdout();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a TransferReport,
        }
        return Ok(crate::stdout::print_json(&Out { report: r })?);
    }
    let pct = |n: u64| {
        if r.blocks_total > 0 {
            n as f64 * 100.0 / r.blocks_total as f64
        } else {
            0.0
        }
    };
    match &r.output {
        Some(o) if r.source.starts_with(&r.peer) => writeln!(
            out,
            "received {} into {} in {:.2}s",
            r.source,
            o.display(),
            r.seconds
        )?,
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
    if let Some(n) = r.blocks_unchanged.filter(|n| *n > 0) {
        writeln!(out, "  unchanged:    {n:>14} ({:.1}%, already in place)", pct(n))?;
    }
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
    use crate::exit_codes::Exit;

    fn endpoints(args: &[&str], listen: Option<&str>) -> anyhow::Result<(Option<(String, String)>, PathBuf)> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        recv_endpoints(&args, listen)
    }

    #[test]
    fn recv_takes_source_then_output() {
        let (src, out) = endpoints(&["host:4730/disk.img", "out/x.raw"], None).unwrap();
        assert_eq!(src, Some(("host:4730".to_string(), "disk.img".to_string())));
        assert_eq!(out, PathBuf::from("out/x.raw"));
        let (src, out) = endpoints(&["out.raw"], Some("127.0.0.1:0")).unwrap();
        assert_eq!((src, out), (None, PathBuf::from("out.raw")));
    }

    #[test]
    fn recv_mistakes_are_usage_errors_with_hints() {
        let e = endpoints(&["out/x.raw", "127.0.0.1:4730/x.raw"], None).unwrap_err();
        assert_eq!(Exit::of(&e), Exit::Usage);
        assert!(
            e.to_string().contains("swapped")
                && e.to_string().contains("cbt recv 127.0.0.1:4730/x.raw out/x.raw"),
            "{e}"
        );
        let e = endpoints(&["127.0.0.1:4730/x.raw"], None).unwrap_err();
        assert_eq!(Exit::of(&e), Exit::Usage);
        assert!(e.to_string().contains("output path"), "{e}");
        let e = endpoints(&["host:4730", "out.raw"], None).unwrap_err();
        assert_eq!(Exit::of(&e), Exit::Usage);
        let e = endpoints(&["a", "b"], Some("127.0.0.1:0")).unwrap_err();
        assert_eq!(Exit::of(&e), Exit::Usage);
    }

    #[test]
    fn daemon_images_have_a_port_and_a_name() {
        assert!(names_daemon_image("host:4730/disk.img"));
        assert!(names_daemon_image("[::1]:4730/disk.img"));
        assert!(!names_daemon_image("out/x.raw"));
        assert!(!names_daemon_image("host:4730"));
        assert!(!names_daemon_image("host:4730/"));
        assert!(!names_daemon_image("dir:name/x.raw"));
    }
}
