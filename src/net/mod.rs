//! The listeners: the accept loop and its connection permits, the admin
//! listener, and the graceful drain.
//!
//! Shutdown has one owner: the future passed to [`run`]. When it resolves
//! the drain starts, and the main listener keeps accepting until it ends:
//!
//! 1. at once, readiness answers 503 and new opens `503 draining`, while
//!    everything else is still served (HTTP/1 responses then carry
//!    `Connection: close`);
//! 2. `server.drain_delay` later, closing starts: every session and every
//!    splice gets its close 1001, idle connections close, busy ones after
//!    their response;
//! 3. once every connection, splice and upstream socket has ended, or
//!    `server.drain_timeout` after the signal (whichever comes first),
//!    [`run`] returns and the listener closes.

mod conn;
pub(crate) mod h1;
mod h1_body;
mod internal;
mod timeout;
mod tls;

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use self::internal::serve_internal;
pub use self::tls::{Tls, reload_on_sighup};
use crate::config::Config;
use crate::forwarded::ConnInfo;
use crate::state::{AppState, CONNECTION_PERMIT};

/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The admin listener's own connection budget, apart from
/// `server.max_connections`: probes and scrapes keep answering while the
/// main listener is full, and a flood of admin connections cannot take the
/// descriptors the main one counts on (`config`'s reserve covers these).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The least time given to sending the last spans at shutdown, even when
/// the drain used all of `server.drain_timeout`.
const MIN_SPAN_FLUSH: Duration = Duration::from_secs(2);

/// Serves on a bound listener until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = AppState::new(config)?;
    serve(listener, state, shutdown).await
}

/// Like [`run`], with the shared state made by the caller (the binary keeps
/// it for the admin listener).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = Tls::load(&state.config)?;
    serve_with_tls(listener, state, tls, shutdown).await
}

/// Like [`serve`], with the TLS acceptor made by the caller (the binary
/// keeps it for SIGHUP reloads).
pub async fn serve_with_tls(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Arc<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let server = Server {
        builder: Arc::new(conn::http_builder(&state.config)),
        limit: Arc::new(Semaphore::new(state.config.server.max_connections)),
        watchers: Watchers::new(),
        connections: TaskTracker::new(),
        state,
        tls,
    };
    // One accept loop for the process's life: it keeps running through the
    // drain, and ends only when `serve_with_tls` returns.
    let accept = server.accept(&listener);
    tokio::pin!(accept);
    tokio::select! {
        result = &mut accept => return result,
        () = shutdown => {}
    }
    let state = &server.state;
    let deadline = Instant::now() + state.config.server.drain_timeout;
    tracing::info!("draining");
    state.start_drain();
    let drained = async {
        tokio::time::sleep_until(deadline.min(Instant::now() + state.config.server.drain_delay))
            .await;
        tracing::info!("closing sessions and connections");
        state.start_closing();
        state.upstreams.close();
        server.connections.close();
        // Connections accepted from now on answer with `Connection: close`
        // and are waited for through the tracker.
        let graceful = server.watchers.signal();
        // Peers' requests for this replica's sessions, their close events
        // included, are served to the end.
        let peers = async {
            if let Some(cluster) = &state.cluster {
                cluster.drained().await;
            }
        };
        tokio::join!(
            graceful,
            server.connections.wait(),
            state.upstreams.wait(),
            peers
        );
    };
    tokio::select! {
        result = &mut accept => result?,
        () = drained => tracing::info!("drained"),
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!("drain timeout: closing what is left");
        }
    }
    // The spans of the sessions just closed, within what is left of the
    // drain (at least MIN_SPAN_FLUSH, so a drain that ran out still sends
    // what it can).
    let left = deadline.saturating_duration_since(Instant::now());
    state.telemetry.shutdown(left.max(MIN_SPAN_FLUSH)).await;
    Ok(())
}

/// What the accept loop shares with every connection it spawns.
struct Server {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// `server.max_connections`: a permit per open connection (and so per
    /// splice, which keeps its connection's permit). The loop waits for
    /// one before it accepts, so excess connections wait in the kernel's
    /// accept queue instead of being refused.
    limit: Arc<Semaphore>,
    watchers: Watchers,
    /// Every connection task, so the drain can wait for those it did not
    /// signal (accepted after closing started).
    connections: TaskTracker,
    state: Arc<AppState>,
    tls: Arc<Tls>,
}

impl Server {
    /// Accepts until an error that is not about one connection; never
    /// returns otherwise. Cancel-safe: dropping it closes nothing that was
    /// accepted.
    async fn accept(&self, listener: &TcpListener) -> io::Result<()> {
        loop {
            // Closed never: the semaphore lives as long as the loop.
            let permit = Arc::clone(&self.limit)
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            let (tcp, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: survive and retry once some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let watcher = self.watchers.watcher();
            let state = Arc::clone(&self.state);
            let builder = Arc::clone(&self.builder);
            let acceptor = self.tls.acceptor();
            let info = ConnInfo { peer, tls: false };
            let span = tracing::debug_span!("conn", %peer);
            let open = state.metrics.connection_opened();
            let serve = async move {
                conn::serve_connection(tcp, info, acceptor, state, &builder, watcher).await;
                drop(open);
            };
            // The permit is held by the task, and reachable by a splice the
            // connection hands its socket to.
            let serve = CONNECTION_PERMIT.scope(Arc::new(permit), serve);
            self.connections.spawn(serve.instrument(span));
        }
    }
}

/// The graceful-shutdown watchers handed to connections. hyper-util's
/// `GracefulShutdown` is consumed by its signal, but the listener keeps
/// accepting after it: those later connections get a watcher of `late`,
/// which is never signalled (their responses carry `Connection: close`, and
/// the drain waits for them through the connection tracker).
struct Watchers {
    /// Signalled when closing starts; `None` after.
    graceful: Mutex<Option<GracefulShutdown>>,
    late: GracefulShutdown,
}

impl Watchers {
    fn new() -> Self {
        Watchers {
            graceful: Mutex::new(Some(GracefulShutdown::new())),
            late: GracefulShutdown::new(),
        }
    }

    fn watcher(&self) -> Watcher {
        // Never poisoned: nothing panics under this lock.
        let graceful = self.graceful.lock().unwrap_or_else(|e| e.into_inner());
        match graceful.as_ref() {
            Some(g) => g.watcher(),
            None => self.late.watcher(),
        }
    }

    /// Asks every connection watched so far to finish its request and
    /// close; resolves when they have.
    async fn signal(&self) {
        let graceful = self
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(g) = graceful {
            g.shutdown().await;
        }
    }
}

/// The admin listener: health, readiness and metrics only, at `/healthz`,
/// `/readyz`, `/metrics` (and under the prefix). It keeps answering during
/// the drain, so probes see readiness fail while sessions close.
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>) {
    let limit = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        // Closed never: the semaphore lives as long as the loop.
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = crate::http::admin(&req, &state);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}
