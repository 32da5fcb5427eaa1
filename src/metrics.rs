//! Prometheus metrics: the counters the contract names, plus replay depth
//! and request latency. Counters on the message path are resolved to their
//! label set once, so counting an event is one atomic add.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Transport;

/// Why a session ended, as the `reason` label of `sessions_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The upstream closed.
    Upstream,
    /// The browser sent `DELETE`.
    Client,
    /// No client for `sessions.idle_timeout`.
    Idle,
    /// The upstream stopped answering pings or the connection broke.
    Dead,
    /// The proxy is shutting down.
    Drain,
    /// A protocol error (e.g. an oversized upstream frame).
    Error,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Upstream => "upstream",
            CloseReason::Client => "client",
            CloseReason::Idle => "idle",
            CloseReason::Dead => "dead",
            CloseReason::Drain => "drain",
            CloseReason::Error => "error",
        }
    }

    const ALL: [CloseReason; 6] = [
        CloseReason::Upstream,
        CloseReason::Client,
        CloseReason::Idle,
        CloseReason::Dead,
        CloseReason::Drain,
        CloseReason::Error,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

/// Per-direction counters, resolved once.
#[derive(Clone, Default)]
pub struct Flow {
    pub events: Counter,
    pub bytes: Counter,
}

impl Flow {
    pub fn count(&self, bytes: usize) {
        self.events.inc();
        self.bytes.inc_by(bytes as u64);
    }
}

pub struct Metrics {
    /// Behind a mutex only because encoding wants `&Registry` while the
    /// scrape also sets the computed gauges; scrapes are rare.
    registry: Mutex<Registry>,
    sessions_active: Family<TransportLabel, Gauge>,
    sessions_opened: Counter,
    sessions_closed: Family<ReasonLabel, Counter>,
    pub down: Flow,
    pub up: Flow,
    handshake_failures: Family<StatusLabel, Counter>,
    backpressure_pauses: Counter,
    gap_events_dropped: Counter,
    http_requests: Family<RequestLabels, Counter>,
    request_duration: Family<EndpointLabel, Histogram>,
    replay_events: Gauge,
    replay_bytes: Gauge,
    sessions_lingering: Gauge,
    /// The multiplexed channels: open ones, sessions on them, batch frames.
    pub channel: ChannelMetrics,
}

/// The channel's own metrics, kept together so the channel code owns them.
pub struct ChannelMetrics {
    pub active: Gauge,
    pub sessions: Gauge,
    pub batch_frames: Counter,
}

impl ChannelMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ChannelMetrics {
            active: Gauge::default(),
            sessions: Gauge::default(),
            batch_frames: Counter::default(),
        };
        registry.register(
            "wsbridge_channels_active",
            "Open multiplexed channels",
            m.active.clone(),
        );
        registry.register(
            "wsbridge_channel_sessions",
            "Sessions attached to a channel",
            m.sessions.clone(),
        );
        registry.register(
            "wsbridge_channel_batch_frames",
            "Frames received in channel batch sends",
            m.batch_frames.clone(),
        );
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sessions_active = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "wsbridge_sessions_active",
            "Open sessions by the transport of their live reader (none when no reader)",
            sessions_active.clone(),
        );
        let sessions_opened = Counter::default();
        registry.register(
            "wsbridge_sessions_opened",
            "Sessions opened",
            sessions_opened.clone(),
        );
        let sessions_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "wsbridge_sessions_closed",
            "Sessions closed, by reason",
            sessions_closed.clone(),
        );
        for reason in CloseReason::ALL {
            let _ = sessions_closed.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        let events = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "wsbridge_events",
            "Frames bridged, by direction (down: upstream to browser)",
            events.clone(),
        );
        let bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "wsbridge_bytes",
            "Frame payload bytes bridged, by direction",
            bytes.clone(),
        );
        let flow = |dir: &'static str| Flow {
            events: events
                .get_or_create(&DirectionLabel { direction: dir })
                .clone(),
            bytes: bytes
                .get_or_create(&DirectionLabel { direction: dir })
                .clone(),
        };
        let (down, up) = (flow("down"), flow("up"));
        let handshake_failures = Family::<StatusLabel, Counter>::default();
        registry.register(
            "wsbridge_upstream_handshake_failures",
            "Failed upstream handshakes, by HTTP status (502/504 for unreachable/timeout)",
            handshake_failures.clone(),
        );
        let backpressure_pauses = Counter::default();
        registry.register(
            "wsbridge_backpressure_pauses",
            "Times an upstream reader paused because undelivered events reached replay.max_pending_bytes or replay.max_total_bytes had no room",
            backpressure_pauses.clone(),
        );
        let gap_events_dropped = Counter::default();
        registry.register(
            "wsbridge_events_dropped",
            "Undelivered events dropped by replay.overflow = drop-oldest (for the session's own limit or for replay.max_total_bytes)",
            gap_events_dropped.clone(),
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "wsbridge_http_requests",
            "HTTP requests, by endpoint and status",
            http_requests.clone(),
        );
        let request_duration = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "wsbridge_http_request_duration_seconds",
            "Time to the response head, by endpoint",
            request_duration.clone(),
        );
        let replay_events = Gauge::default();
        registry.register(
            "wsbridge_replay_events",
            "Events held in replay queues",
            replay_events.clone(),
        );
        let replay_bytes = Gauge::default();
        registry.register(
            "wsbridge_replay_bytes",
            "Data bytes held in replay queues",
            replay_bytes.clone(),
        );
        let sessions_lingering = Gauge::default();
        registry.register(
            "wsbridge_sessions_lingering",
            "Closed sessions whose events are still readable",
            sessions_lingering.clone(),
        );
        let channel = ChannelMetrics::register(&mut registry);
        Metrics {
            channel,
            registry: Mutex::new(registry),
            sessions_active,
            sessions_opened,
            sessions_closed,
            down,
            up,
            handshake_failures,
            backpressure_pauses,
            gap_events_dropped,
            http_requests,
            request_duration,
            replay_events,
            replay_bytes,
            sessions_lingering,
        }
    }

    pub fn session_opened(&self) {
        self.sessions_opened.inc();
    }

    pub fn session_closed(&self, why: CloseReason) {
        self.sessions_closed
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .inc();
    }

    pub fn handshake_failed(&self, status: u16) {
        self.handshake_failures
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn backpressure_paused(&self) {
        self.backpressure_pauses.inc();
    }

    #[allow(
        dead_code,
        reason = "wsbridge_events_dropped is documented and exposed, but nothing counts it yet"
    )]
    pub fn events_dropped(&self, n: u64) {
        self.gap_events_dropped.inc_by(n);
    }

    pub fn request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&RequestLabels {
                endpoint,
                status: status.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabel { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// Renders the exposition, after setting the gauges computed from the
    /// sessions themselves (cheaper than keeping them exact on every event).
    pub fn render(&self, snapshot: &SessionSnapshot) -> String {
        let labels = ["none", "sse", "stream", "poll"];
        for (label, n) in labels.iter().zip(snapshot.by_transport) {
            self.sessions_active
                .get_or_create(&TransportLabel { transport: label })
                .set(n as i64);
        }
        self.replay_events.set(snapshot.replay_events as i64);
        self.replay_bytes.set(snapshot.replay_bytes as i64);
        self.sessions_lingering.set(snapshot.lingering as i64);
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Session-derived gauge values, gathered at scrape time.
#[derive(Default, Debug)]
pub struct SessionSnapshot {
    /// Open sessions by live reader: none, sse, stream, poll.
    pub by_transport: [usize; 4],
    pub lingering: usize,
    pub replay_events: usize,
    pub replay_bytes: usize,
}

impl SessionSnapshot {
    pub fn count(&mut self, reader: Option<Transport>) {
        let i = match reader {
            None | Some(Transport::Websocket) => 0,
            Some(Transport::Sse) => 1,
            Some(Transport::Stream) => 2,
            Some(Transport::Poll) => 3,
        };
        self.by_transport[i] += 1;
    }
}
