//! What every request can reach: the configuration, the session registry,
//! the metrics, the upstream clients, the cluster, and the drain signal.
//!
//! Below the handlers and above nothing of the front: it imports config,
//! metrics, the session registry, the upstream TLS settings and the
//! cluster (whose forwarder sits beside `bridge`, under `http`) only.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Inbound;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::{CloseReason, Metrics};
use crate::session::channel::ChannelRegistry;
use crate::session::registry::Registry;
use crate::telemetry::Telemetry;
use crate::upstream;

/// The pooled HTTP client of the pass-through.
pub(crate) type UpstreamHttp = Client<hyper_rustls::HttpsConnector<HttpConnector>, Inbound>;

tokio::task_local! {
    /// The `server.max_connections` permit of the connection whose task is
    /// running. A WebSocket splice outlives its connection's task (hyper
    /// hands the upgraded socket over and the connection future ends), so
    /// the splice takes a clone and the slot stays taken while it runs.
    pub(crate) static CONNECTION_PERMIT: Arc<OwnedSemaphorePermit>;
}

/// The application's shared parts, one per proxy, behind an `Arc`.
pub struct AppState {
    /// The validated configuration; read-only for the process's life.
    pub config: Config,
    /// Every live and lingering session, by id: the bridge endpoints find
    /// their session here, and the drain closes them all.
    pub(crate) registry: Arc<Registry>,
    /// Every open multiplexed channel, by id, and which channel each
    /// attached session is on.
    pub(crate) channels: Arc<ChannelRegistry>,
    /// Counters and histograms, shared with the sessions and their
    /// upstream tasks, rendered at `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Pooled keep-alive connections to `upstream.url` for pass-through
    /// requests, so each request does not pay a new handshake.
    pub(crate) upstream_http: UpstreamHttp,
    /// TLS settings for `wss://`/`https://` upstreams, built once (the CA
    /// file is read at boot) and shared by sessions and the splice.
    pub(crate) upstream_tls: Arc<rustls::ClientConfig>,
    /// Cancelled once shutdown starts: readiness fails and new sessions are
    /// refused at once, while the listener keeps serving.
    drain: CancellationToken,
    /// Cancelled `server.drain_delay` after the drain starts: sessions and
    /// splices get their close 1001, idle connections close. Apart from
    /// `drain` so a load balancer sees readiness fail before anything closes.
    closing: CancellationToken,
    /// One token per open upstream socket: the drain waits for their close
    /// handshakes, not only for the browsers' connections.
    pub(crate) upstreams: TaskTracker,
    /// `[cluster]`: the peers, the id and peer keys, the forwarding client;
    /// `None` for a lone replica.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Span export (`[telemetry]`); does nothing when off.
    pub(crate) telemetry: Telemetry,
}

impl AppState {
    pub fn new(config: Config) -> io::Result<Arc<AppState>> {
        let upstream_tls = upstream::tls_client_config(config.upstream.ca_file.as_deref())?;
        let upstream_http = upstream_http(&config, &upstream_tls);
        let metrics = Arc::new(Metrics::new());
        let telemetry = Telemetry::start(&config.telemetry, &upstream_tls)?;
        Ok(Arc::new(AppState {
            channels: Arc::new(ChannelRegistry::new(
                config.channel.clone(),
                Arc::clone(&metrics),
            )),
            registry: Arc::new(Registry::new(
                config.sessions.max_sessions,
                config.sessions.max_sessions_per_client,
                config.replay.max_total_bytes,
            )),
            metrics,
            upstream_http,
            upstream_tls,
            drain: CancellationToken::new(),
            closing: CancellationToken::new(),
            upstreams: TaskTracker::new(),
            cluster: Cluster::new(&config),
            telemetry,
            config,
        }))
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// The drain signal itself, for bodies that must end when it comes
    /// (a reader forwarded to another replica: its client reconnects
    /// through a replica that is not going away).
    pub(crate) fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Resolves once closing starts (`server.drain_delay` into the drain).
    /// Cancel-safe.
    pub(crate) async fn closing_started(&self) {
        self.closing.cancelled().await;
    }

    /// The closing signal, for a task that outlives its request (a splice).
    pub(crate) fn closing_token(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Starts the drain: readiness fails, new sessions are refused.
    pub(crate) fn start_drain(&self) {
        self.drain.cancel();
    }

    /// Starts closing (the drain's second step): every session gets its
    /// close 1001 on both sides, and so does every splice.
    pub(crate) fn start_closing(&self) {
        self.drain.cancel();
        self.closing.cancel();
        for session in self.registry.all() {
            session.close(1001, "proxy shutting down", CloseReason::Drain);
        }
    }
}

/// TCP keepalive on pass-through pool connections: the first probe after
/// this much silence.
const UPSTREAM_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

fn upstream_http(config: &Config, tls: &rustls::ClientConfig) -> UpstreamHttp {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.upstream.connect_timeout));
    http.set_nodelay(true);
    // A pooled connection whose upstream vanished is found, not kept.
    http.set_keepalive(Some(UPSTREAM_TCP_KEEPALIVE));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        // Idle pool connections expire; the timer is what makes the pool
        // check (without one, hyper-util never reaps them).
        .pool_idle_timeout(config.upstream.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}
