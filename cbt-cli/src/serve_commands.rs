//! `cbt serve`: the daemon's settings, resolved by `serve_config`, turned
//! into `cbt_net::ServeOptions`, with the operator's extras around it:
//! a socket passed by systemd, readiness and watchdog notifications, the
//! metrics endpoint.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cbt_net::ServeOptions;

use crate::cli::Config;
use crate::net_commands::{
    announce, client_options, listen_error, net_error, runtime, send_options, signalled, warn_if_open,
    NetOpts, SendOpts, Tls, TlsServerOpts,
};
use crate::serve_config::ServeSettings;
use crate::teleport_commands::CliTeleporter;

/// `cbt serve`, with its settings resolved.
pub fn serve(config: &Config, s: ServeSettings) -> anyhow::Result<()> {
    let net = NetOpts {
        secret_file: s.secret_file.clone(),
        idle_timeout: Some(s.idle_timeout),
    };
    let tls = match &s.tls {
        Some((cert, key)) => TlsServerOpts {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key.clone()),
        },
        None => TlsServerOpts::default(),
    };
    let send = SendOpts {
        compress: Some(s.compress.clone()),
        bwlimit: s.bwlimit.clone(),
    };
    let client = client_options(&net, Some(&send), Tls::Server(&tls))?;
    let mut options = ServeOptions::new(s.data);
    options.seeds = s.seeds;
    options.export = s.export;
    options.secret = client.secret;
    options.max_connections = s.max_connections;
    options.timeouts = client.timeouts;
    options.preauth.total = s.max_unauthenticated;
    options.preauth.per_address = (s.max_unauthenticated / 4).max(1);
    options.preauth.deadline = Duration::from_secs(s.handshake_timeout);
    options.partials.max_bytes = s.max_partial_bytes;
    options.partials.max_age = Duration::from_secs(s.partial_max_age);
    options.allow_in_place = s.allow_inplace;
    options.overwrite = s.overwrite;
    options.bwlimit = client.bwlimit;
    options.send = send_options(config, Some(&s.compress))?;
    options.receive.format = s.format;
    options.receive.verify_readback = config.verify_readback;
    options.receive.index = config.index.clone();
    options.receive.index.extra_seeds = crate::cli::package_seeds(&s.package_cache);
    if let (Some(first), false) = (s.package_cache.first(), s.mirrors.is_empty()) {
        std::fs::create_dir_all(first)
            .with_context(|| format!("cannot create the package cache {}", first.display()))?;
    }
    options.receive.teleporter = Some(Arc::new(CliTeleporter {
        sources: crate::teleport_commands::package_sources(
            s.mirrors.clone(),
            &s.package_cache,
            s.mirror_timeout,
            s.mirror_jobs,
        )?,
        link_rate: None,
        echo: None,
    }));
    options.tls = client.tls_server;
    let metrics = s
        .metrics
        .map(|addr| (addr, Arc::new(crate::metrics::Metrics::new())));
    if let Some((_, m)) = &metrics {
        options.observer = Some(Arc::clone(m) as Arc<dyn cbt_net::DaemonObserver>);
    }
    // Taken before the runtime starts its threads (it edits the environment).
    let inherited = crate::systemd::inherited_listener()?;
    let listen = s.listen;
    let runtime = runtime()?;
    runtime.block_on(async move {
        let listener = match inherited {
            Some(l) => {
                tracing::info!("serving on the socket systemd passed; --listen and listen = are not used");
                tokio::net::TcpListener::from_std(l).context("cannot use the socket systemd passed")?
            }
            None => tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| net_error(listen_error(&listen, e)))?,
        };
        // Before the listening line, so that whoever waits for that line
        // has the warning too.
        warn_if_open(&listener, options.secret.is_some());
        announce(&listener);
        let _metrics_task = match metrics {
            Some((addr, m)) => {
                let l = tokio::net::TcpListener::bind(&addr)
                    .await
                    .map_err(|e| net_error(listen_error(&addr, e)))
                    .context("--metrics")?;
                if let Ok(a) = l.local_addr() {
                    // Scripts and tests read this line to learn the port.
                    eprintln!("cbt: metrics on {a}");
                }
                Some(AbortOnDrop(tokio::spawn(crate::metrics::serve_http(l, m))))
            }
            None => None,
        };
        let _watchdog = crate::systemd::watchdog_interval()
            .map(|every| AbortOnDrop(tokio::spawn(crate::systemd::watchdog(every))));
        let status = listener
            .local_addr()
            .map_or_else(|_| "serving".to_string(), |a| format!("serving on {a}"));
        crate::systemd::ready(&status);
        let served = cbt_net::serve(listener, options, signalled()).await;
        crate::systemd::stopping();
        served.map_err(net_error)
    })
}

/// Aborts a background task (metrics, watchdog) when the daemon returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
