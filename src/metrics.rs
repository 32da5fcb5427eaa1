//! Prometheus metrics: the counters the contract names, plus replay depth,
//! request latency, open connections and splices, build and process
//! metrics. Counters on the message path are resolved to their label set
//! once, so counting an event is one atomic add.
//!
//! The exposition is OpenMetrics text (what `prometheus-client` encodes)
//! for a scraper that asks for it, else the Prometheus text format 0.0.4
//! (see [`Format`]); each is served with its own content type.

mod process;

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
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// The git commit the binary was built from, when the build said (a
/// `build.rs` sets `WSBRIDGE_GIT_COMMIT`).
pub const GIT_COMMIT: &str = match option_env!("WSBRIDGE_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// A gauge held one higher for as long as this lives (an open connection,
/// a splice): the count cannot drift when a task ends by any path.
#[must_use = "the gauge goes back down when this is dropped"]
pub struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    endpoint: &'static str,
    result: &'static str,
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
        self.count_many(1, bytes);
    }

    /// Counts `events` at once: the counters are shared by every session,
    /// so a burst touches them once, not once per frame.
    pub fn count_many(&self, events: usize, bytes: usize) {
        self.events.inc_by(events as u64);
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
    connections_open: Gauge,
    splices_open: Gauge,
    /// `[cluster]`: requests sent on to the owner replica, by endpoint and
    /// result (ok, unreachable, gone, broken).
    forwarded: Family<ForwardLabels, Counter>,
    /// Time to the owner's response head, by endpoint.
    forward_duration: Family<EndpointLabel, Histogram>,
    /// Peers in the discovered set, this replica excluded.
    cluster_peers: Gauge,
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
        let connections_open = Gauge::default();
        registry.register(
            "wsbridge_connections_open",
            "HTTP connections open on the main listener (HTTP/1 and HTTP/2, TLS or not); a spliced WebSocket moves to wsbridge_websocket_splices_open",
            connections_open.clone(),
        );
        let splices_open = Gauge::default();
        registry.register(
            "wsbridge_websocket_splices_open",
            "Spliced WebSockets (pass-through upgrades) open",
            splices_open.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "wsbridge_build_info",
            "Always 1; the labels say which build runs",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: GIT_COMMIT,
            })
            .set(1);
        registry.register_collector(Box::new(process::ProcessCollector));
        let forwarded = Family::<ForwardLabels, Counter>::default();
        registry.register(
            "wsbridge_cluster_forwarded",
            "Requests forwarded to the replica owning their session, by endpoint and result (ok: the owner answered; unreachable; gone: owner not among the peers; broken: a reader cut mid-way)",
            forwarded.clone(),
        );
        let forward_duration = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0000625, 2.0, 16))
        });
        registry.register(
            "wsbridge_cluster_forward_duration_seconds",
            "Time from forwarding a request to the owner's response head, by endpoint",
            forward_duration.clone(),
        );
        let cluster_peers = Gauge::default();
        registry.register(
            "wsbridge_cluster_peers",
            "Replicas in the discovered peer set, this one excluded",
            cluster_peers.clone(),
        );
        let channel = ChannelMetrics::register(&mut registry);
        Metrics {
            channel,
            registry: Mutex::new(registry),
            forwarded,
            forward_duration,
            cluster_peers,
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
            connections_open,
            splices_open,
        }
    }

    /// Counts a client connection on the main listener until the guard drops.
    pub fn connection_opened(&self) -> Held {
        self.connections_open.inc();
        Held(self.connections_open.clone())
    }

    /// Counts a spliced WebSocket until the guard drops.
    pub fn splice_opened(&self) -> Held {
        self.splices_open.inc();
        Held(self.splices_open.clone())
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

    pub fn forwarded(&self, endpoint: &'static str, result: &'static str) {
        self.forwarded
            .get_or_create(&ForwardLabels { endpoint, result })
            .inc();
    }

    pub fn forward_latency(&self, endpoint: &'static str, elapsed: Duration) {
        self.forward_duration
            .get_or_create(&EndpointLabel { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_cluster_peers(&self, n: usize) {
        self.cluster_peers.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Renders the exposition in `format`, after setting the gauges computed
    /// from the sessions themselves (cheaper than keeping them exact on
    /// every event).
    pub fn render(&self, snapshot: &SessionSnapshot, format: Format) -> String {
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
        drop(registry);
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => to_prometheus_text(&out),
        }
    }
}

/// The two text formats a scraper may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, for a scraper whose `Accept` names it (as
    /// Prometheus' own does).
    OpenMetrics,
    /// The Prometheus text format 0.0.4: for everyone else (curl,
    /// `promtool check metrics`, older agents).
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a non-zero weight.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut params = range.split(';').map(str::trim);
                let media = params.next().unwrap_or("");
                media.eq_ignore_ascii_case("application/openmetrics-text")
                    && !params.any(|p| {
                        p.strip_prefix("q=")
                            .and_then(|q| q.parse::<f32>().ok())
                            .is_some_and(|q| q <= 0.0)
                    })
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text → Prometheus text 0.0.4. They differ, for what we
/// expose, in three ways: a counter's family is named with its `_total`
/// in 0.0.4 (OpenMetrics names it without), `# UNIT` lines and the
/// `# EOF` terminator do not exist there, and `unknown`/`info` types are
/// `untyped`/`gauge`. Samples and label escaping are the same.
fn to_prometheus_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Prometheus
        );
    }

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let open = "# HELP a_events Frames.\n# TYPE a_events counter\na_events_total{d=\"up\"} 3\n\
                    # HELP a_depth Depth.\n# TYPE a_depth gauge\n# UNIT a_depth bytes\na_depth 5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP a_events_total Frames.\n# TYPE a_events_total counter\na_events_total{d=\"up\"} 3\n\
             # HELP a_depth Depth.\n# TYPE a_depth gauge\na_depth 5\n"
        );
    }

    #[test]
    fn both_formats_render() {
        let m = Metrics::new();
        let snapshot = SessionSnapshot::default();
        let open = m.render(&snapshot, Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE wsbridge_sessions_opened counter"));
        let text = m.render(&snapshot, Format::Prometheus);
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE wsbridge_sessions_opened_total counter"));
        assert!(text.contains(&format!(
            "wsbridge_build_info{{version=\"{}\",commit=\"{GIT_COMMIT}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    }

    #[test]
    fn held_gauges_go_back_down() {
        let m = Metrics::new();
        let a = m.connection_opened();
        let b = m.connection_opened();
        let s = m.splice_opened();
        assert_eq!(m.connections_open.get(), 2);
        assert_eq!(m.splices_open.get(), 1);
        drop((a, s));
        assert_eq!(m.connections_open.get(), 1);
        assert_eq!(m.splices_open.get(), 0);
        drop(b);
        assert_eq!(m.connections_open.get(), 0);
    }
}
