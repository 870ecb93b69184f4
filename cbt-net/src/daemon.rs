//! The daemon (`cbt serve`): receives pushed images into its data directory
//! (seeding from its seed roots and from the data directory itself) and
//! serves pulls from its export directory.
//!
//! One task per connection. Until it authenticates, a connection holds only
//! a place in a small budget of unauthenticated connections, with a short
//! deadline (see `preauth`): silent clients can neither take transfer slots
//! nor keep a legitimate client out. After authentication it takes one of
//! `max_connections` transfer slots (a client over the cap is told the
//! server is busy). Names are checked by [`check_name`]; two transfers never
//! write the same name at once, but a push to a name whose earlier transfer
//! lost its peer takes over as soon as that transfer has noticed (at once,
//! whatever stage it is in). Before each push, kept partial outputs are
//! bounded ([`PartialLimits`]). A plain push never replaces an existing
//! image unless the daemon allows overwriting; a push that asks to replace
//! (`Mode::PushReplace`, `cbt send --force`) may. An optional
//! [`DaemonObserver`] hears of every transfer's start and end (the command
//! line's metrics). On shutdown the daemon stops accepting,
//! tells running transfers to stop (their partial outputs stay at hidden
//! temporary paths, never at a final path) and waits for them.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cbt_core::{open_image, Backing, Image, ImageSpec};
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Halves;
use crate::connection::{FrameWriter, Link, Shutdown, Timeouts};
use crate::error::{Error, Result};
use crate::frame::Mode;
use crate::handshake::{Request, Secret};
use crate::names::check_name;
use crate::observe::{DaemonObserver, Direction, PushDetails};
use crate::partials::PartialLimits;
use crate::preauth::{authenticate, PreAuth, PreAuthLimits, Ticket};
use crate::receiver::{receive, ReceiveOptions};
use crate::sender::{send, SendOptions};
use crate::tls::TlsServer;
use crate::Progress;

/// How long running transfers get to stop after a shutdown request.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long a push waits for an earlier transfer to the same name to
/// notice that its peer is gone and let go of the name.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Pushed images are written here.
    pub data_dir: PathBuf,
    /// Extra seed roots for pushed images (the data directory is always one).
    pub seeds: Vec<PathBuf>,
    /// Images that may be pulled, by file name; None: no pulls.
    pub export: Option<PathBuf>,
    /// Required shared secret.
    pub secret: Option<Secret>,
    /// Authenticated connections (transfers) served at once.
    pub max_connections: usize,
    /// Idle and keepalive timing.
    pub timeouts: Timeouts,
    /// Budget and deadline of connections that have not authenticated.
    pub preauth: PreAuthLimits,
    /// Bounds on partial outputs kept for resumes.
    pub partials: PartialLimits,
    /// Accept pushes that ask to update an existing image in place.
    pub allow_in_place: bool,
    /// Let a plain push replace an existing image; false: only a push that
    /// asks to (`Mode::PushReplace`) may.
    pub overwrite: bool,
    /// Told of every transfer's start and end.
    pub observer: Option<Arc<dyn DaemonObserver>>,
    /// Template for receiving (format, index settings, windows); the output
    /// and seeds are set per transfer.
    pub receive: ReceiveOptions,
    /// How to send pulled images.
    pub send: SendOptions,
    /// Bytes per second written per pull (`--bwlimit`).
    pub bwlimit: Option<u64>,
    /// Accept only TLS clients, with this certificate.
    pub tls: Option<TlsServer>,
}

impl ServeOptions {
    /// Where the images this daemon reads may have their backing files:
    /// inside its own directories (data, seeds, export), never through a
    /// link out of them.
    pub fn backing(&self) -> Backing {
        let mut roots = vec![self.data_dir.clone()];
        roots.extend(self.seeds.iter().cloned());
        roots.extend(self.export.iter().cloned());
        Backing::within(&roots)
    }

    /// Defaults for a daemon writing into `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        ServeOptions {
            data_dir,
            seeds: Vec::new(),
            export: None,
            secret: None,
            max_connections: 8,
            timeouts: Timeouts::default(),
            preauth: PreAuthLimits::default(),
            partials: PartialLimits::default(),
            allow_in_place: true,
            overwrite: false,
            observer: None,
            receive: ReceiveOptions::new(PathBuf::new()),
            send: SendOptions::default(),
            bwlimit: None,
            tls: None,
        }
    }
}

/// Shared by the connection tasks.
struct State {
    options: ServeOptions,
    /// Names being received right now.
    busy: Mutex<HashSet<String>>,
}

/// Releases a claimed name when the transfer ends.
struct Claim<'a> {
    state: &'a State,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.state.busy.lock() {
            b.remove(&self.name);
        }
    }
}

impl State {
    fn claim(&self, name: &str) -> Option<Claim<'_>> {
        let mut b = self.busy.lock().ok()?;
        b.insert(name.to_string()).then(|| Claim {
            state: self,
            name: name.to_string(),
        })
    }

    /// Claims `name`, waiting a little for a transfer that holds it: one
    /// whose peer died lets go as soon as it notices, so a retry right after
    /// a killed sender takes over instead of being refused.
    async fn claim_or_wait(&self, name: &str) -> Option<Claim<'_>> {
        let until = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            if let Some(c) = self.claim(name) {
                return Some(c);
            }
            if tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops
/// the running transfers and returns once they ended.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    if !options.data_dir.is_dir() {
        return Err(Error::Config(format!(
            "{}: the data directory does not exist",
            options.data_dir.display()
        )));
    }
    if let Some(e) = &options.export {
        if !e.is_dir() {
            return Err(Error::Config(format!(
                "{}: the export directory does not exist",
                e.display()
            )));
        }
    }
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let preauth = PreAuth::new(options.preauth);
    let state = Arc::new(State {
        options,
        busy: Mutex::new(HashSet::new()),
    });
    let (trigger, stop) = Shutdown::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let peer = addr.to_string();
                let ticket = preauth.admit(addr.ip());
                let (state, stop, limit) = (Arc::clone(&state), stop.clone(), Arc::clone(&limit));
                tasks.spawn(async move {
                    connection(stream, peer, &state, stop, ticket, limit).await;
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tracing::info!(running = tasks.len(), "shutting down");
    trigger.trigger();
    let drained =
        tokio::time::timeout(DRAIN_LIMIT, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("transfers did not stop in time; aborting them");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: String,
    state: &State,
    stop: Shutdown,
    ticket: Ticket,
    limit: Arc<Semaphore>,
) {
    let o = &state.options;
    let deadline = o.preauth.deadline;
    let ((reader, mut writer), request) =
        match authenticate(stream, &peer, o.tls.as_ref(), o.secret.as_ref(), ticket, deadline).await {
            Ok(a) => a,
            // Port probes, silent and evicted connections attempted nothing:
            // neither logged loudly nor counted as failed transfers.
            Err(e @ (Error::Timeout { .. } | Error::Refused(_) | Error::Closed { .. })) => {
                tracing::debug!(%peer, "turned away: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, "turned away: {e}");
                if let Some(ob) = &o.observer {
                    ob.connection_refused(&e);
                }
                return;
            }
        };
    let turn_away = Refusal {
        peer: &peer,
        request: &request,
        observer: o.observer.as_deref(),
    };
    // Authenticated: only now does the connection take a transfer slot.
    let Ok(_slot) = limit.try_acquire_owned() else {
        turn_away
            .refuse(&mut writer, "server busy: too many connections, try again later")
            .await;
        return;
    };
    let name = match check_name(&request.name) {
        Ok(n) => n.to_string(),
        Err(reason) => {
            turn_away.refuse(&mut writer, &reason).await;
            return;
        }
    };
    let halves = (reader, writer);
    match request.mode {
        Mode::Push | Mode::PushInPlace | Mode::PushReplace => {
            push(halves, &turn_away, &name, state, stop).await;
        }
        Mode::Pull | Mode::PullTeleport | Mode::PullTeleportPlan | Mode::PullFunctional => {
            pull(halves, &turn_away, &name, o, stop).await;
        }
    }
}

/// What turning a request away needs: it is logged, told to the client and
/// to the observer.
struct Refusal<'a> {
    peer: &'a str,
    request: &'a Request,
    observer: Option<&'a dyn DaemonObserver>,
}

impl Refusal<'_> {
    async fn refuse<W: AsyncWrite + Unpin>(&self, writer: &mut FrameWriter<W>, reason: &str) {
        tracing::warn!(peer = %self.peer, "refused: {reason}");
        let _ = self.request.refuse(writer, reason).await;
        if let Some(ob) = self.observer {
            ob.connection_refused(&Error::Refused(reason.to_string()));
        }
    }
}

/// Receives a pushed image into the data directory as `name`.
async fn push(
    (reader, mut writer): Halves,
    turn_away: &Refusal<'_>,
    name: &str,
    state: &State,
    stop: Shutdown,
) {
    let (o, peer, mode) = (&state.options, turn_away.peer, turn_away.request.mode);
    let in_place = mode == Mode::PushInPlace;
    if in_place && !o.allow_in_place {
        let reason = "this server does not accept in-place pushes (allow_inplace = false)";
        return turn_away.refuse(&mut writer, reason).await;
    }
    let path = o.data_dir.join(name);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        let reason = format!("{name}: exists and is not a regular file");
        return turn_away.refuse(&mut writer, &reason).await;
    }
    let Some(_claim) = state.claim_or_wait(name).await else {
        let reason = format!("{name}: another transfer to this name is running");
        return turn_away.refuse(&mut writer, &reason).await;
    };
    // Looked at under the claim, so that of two pushes to a new name the
    // second sees the first one's image. An in-place push updates the
    // existing image by definition.
    let replacing = !in_place && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
    if replacing && mode == Mode::Push && !o.overwrite {
        let reason =
            format!("{name}: an image of this name exists on the server; push with --force to replace it");
        return turn_away.refuse(&mut writer, &reason).await;
    }
    if turn_away.request.accept(&mut writer).await.is_err() {
        return;
    }
    if replacing {
        tracing::info!(%peer, %name, "receiving, replacing the existing image");
    } else {
        tracing::info!(%peer, %name, "receiving");
    }
    let observer = turn_away.observer;
    if let Some(ob) = observer {
        ob.transfer_started(Direction::Push);
    }
    let progress = Arc::new(Progress::default());
    let mut options = o.receive.clone();
    options.partials = Some(o.partials);
    options.in_place = in_place;
    options.output = path;
    options.progress = Some(Arc::clone(&progress));
    options.seeds = o.seeds.clone();
    options.index.backing = o.backing();
    // Updated in place, the image itself is read as the transfer goes, not
    // hashed up front as a seed.
    options.seeds.extend(
        data_dir_images(&o.data_dir)
            .into_iter()
            .filter(|p| !(in_place && *p == options.output)),
    );
    let link = Link::spawn(reader, writer, o.timeouts, stop.clone());
    match receive(link, options, stop).await {
        Ok(r) => {
            if r.dry_run {
                tracing::info!(%peer, %name, "teleport planned (dry run)");
            } else {
                tracing::info!(
                    %peer, %name, replaced = replacing, blocks_local = r.blocks_local,
                    blocks_sent = r.blocks_sent, wire_bytes_received = r.wire_bytes_received,
                    seconds = r.seconds, "received"
                );
            }
            if let Some(ob) = observer {
                let details = PushDetails {
                    bytes_local: progress.snapshot().bytes_local,
                    replaced: replacing && !r.dry_run,
                };
                ob.transfer_finished(Direction::Push, &r, Some(details));
            }
        }
        Err(e) => {
            tracing::warn!(%peer, %name, "receive failed: {e}");
            if let Some(ob) = observer {
                ob.transfer_failed(Direction::Push, &e);
            }
        }
    }
}

/// Sends the exported image `name` to a client that pulls it.
async fn pull(
    (reader, mut writer): Halves,
    turn_away: &Refusal<'_>,
    name: &str,
    o: &ServeOptions,
    stop: Shutdown,
) {
    let (peer, mode) = (turn_away.peer, turn_away.request.mode);
    let Some(export) = &o.export else {
        return turn_away
            .refuse(&mut writer, "this server exports no images")
            .await;
    };
    let image = match open_export(export, name, o.backing()).await {
        Ok(i) => i,
        Err(reason) => return turn_away.refuse(&mut writer, &reason).await,
    };
    if turn_away.request.accept(&mut writer).await.is_err() {
        return;
    }
    tracing::info!(%peer, %name, "sending");
    let observer = turn_away.observer;
    if let Some(ob) = observer {
        ob.transfer_started(Direction::Pull);
    }
    writer.set_rate_limit(o.bwlimit);
    let link = Link::spawn(reader, writer, o.timeouts, stop.clone());
    let mut send_options = o.send.clone();
    // A functional pull sends the guest's user data instead of the image;
    // `_scratch` keeps its temporary file until the transfer is over.
    let mut _scratch = None;
    let mut image = image;
    if mode == Mode::PullFunctional {
        match user_data_export(o.receive.teleporter.clone(), image).await {
            Ok((description, user_data)) => {
                send_options.description = Some(description);
                image = user_data.image;
                _scratch = Some(user_data.scratch);
            }
            Err(reason) => {
                let reason = format!("{name}: no functional copy: {reason}");
                tracing::warn!(%peer, "{reason}");
                if let Some(ob) = observer {
                    ob.transfer_failed(Direction::Pull, &Error::Refused(reason.clone()));
                }
                return link.fail(reason).await;
            }
        }
    } else if mode != Mode::Pull {
        let dry_run = mode == Mode::PullTeleportPlan;
        send_options.description =
            Some(describe_export(o.receive.teleporter.clone(), Arc::clone(&image), dry_run).await);
    }
    let mut stop = stop;
    let result = tokio::select! {
        r = send(link, image, &send_options) => r,
        _ = stop.wait() => Err(Error::Cancelled),
    };
    match result {
        Ok(r) => {
            tracing::info!(%peer, %name, blocks_sent = r.blocks_sent, seconds = r.seconds, "sent");
            if let Some(ob) = observer {
                ob.transfer_finished(Direction::Pull, &r, None);
            }
        }
        Err(e) => {
            tracing::warn!(%peer, %name, "send failed: {e}");
            if let Some(ob) = observer {
                ob.transfer_failed(Direction::Pull, &e);
            }
        }
    }
}

/// The description of an exported image for a teleport pull; when it
/// cannot be made, one that says why (the client then plans nothing and
/// the transfer goes on plainly).
async fn describe_export(
    teleporter: Option<Arc<dyn crate::Teleporter>>,
    image: Arc<dyn Image>,
    dry_run: bool,
) -> crate::teleport::Description {
    let started = std::time::Instant::now();
    let described = match teleporter {
        Some(t) => tokio::task::spawn_blocking(move || t.describe(image))
            .await
            .unwrap_or_else(|e| Err(format!("describe thread failed: {e}"))),
        None => Err("this server cannot describe images".to_string()),
    };
    let body = described.unwrap_or_else(|reason| {
        tracing::warn!("cannot describe the image for a teleport: {reason}");
        serde_json::to_vec(&serde_json::json!({ "error": reason })).unwrap_or_default()
    });
    crate::teleport::Description {
        body: body.into(),
        dry_run,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The description and user-data image of an exported image, for a
/// functional pull.
async fn user_data_export(
    teleporter: Option<Arc<dyn crate::Teleporter>>,
    image: Arc<dyn Image>,
) -> std::result::Result<(crate::teleport::Description, crate::teleport::UserDataImage), String> {
    let started = std::time::Instant::now();
    let t = teleporter.ok_or_else(|| "this server cannot describe images".to_string())?;
    let user_data = tokio::task::spawn_blocking(move || t.user_data(image))
        .await
        .unwrap_or_else(|e| Err(format!("describe thread failed: {e}")))?;
    let description = crate::teleport::Description {
        body: user_data.description.clone().into(),
        dry_run: false,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((description, user_data))
}

/// Opens the exported image `name`; it and its backing files must lie
/// inside `backing` (a link out of the export directory is no image).
async fn open_export(
    export: &Path,
    name: &str,
    backing: Backing,
) -> std::result::Result<Arc<dyn Image>, String> {
    let path = export.join(name);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        _ => return Err(format!("{name}: no such image")),
    }
    if let Err(e) = cbt_core::check_consistent(&path) {
        tracing::warn!("refused to export: {e}");
        return Err(format!(
            "{name}: an in-place update of this image is incomplete; refused"
        ));
    }
    if !path.canonicalize().is_ok_and(|c| backing.allows(&c)) {
        tracing::warn!("{}: refused: a link out of the export directory", path.display());
        return Err(format!("{name}: no such image"));
    }
    let opened =
        tokio::task::spawn_blocking(move || open_image(&ImageSpec::file(path).with_backing(backing)))
            .await
            .map_err(|e| e.to_string())?;
    opened.map_err(|e| {
        if matches!(e, cbt_core::Error::BackingOutside { .. }) {
            tracing::warn!("refused to export: {e}");
            format!("{name}: its backing file lies outside this server's directories; refused")
        } else {
            format!("{name}: cannot open: {e}")
        }
    })
}

/// The images of the data directory, as explicit seed roots (so they are
/// indexed whatever their names' extensions); hidden side files are skipped.
fn data_dir_images(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}
