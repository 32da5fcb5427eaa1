//! The file as written: one struct per TOML table, every key optional so
//! defaults are applied (and named) in one place, unknown keys refused. The
//! same structs, filled from a validated [`Config`](super::Config), are what
//! `wsbridge check` serialises, so the file format is written down once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{Count, Dur, Size};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a TOML document of tables ([server], [upstream], ...)"
)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub sessions: RawSessions,
    #[serde(default)]
    pub replay: RawReplay,
    #[serde(default)]
    pub poll: RawPoll,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub client: RawClient,
    #[serde(default)]
    pub channel: RawChannel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<RawAdmin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [server] keys")]
pub(crate) struct RawServer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_delay: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_recv_rate: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_send_rate: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Count>,
    // A sub-table: TOML writes it after the table's own keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table with cert and key")]
pub(crate) struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [upstream] keys")]
pub(crate) struct RawUpstream {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_idle_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub forward_headers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[routes]] table with path and upstream"
)]
pub(crate) struct RawRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transports: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sse_event_field: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [sessions] keys")]
pub(crate) struct RawSessions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linger: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_retry: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ping: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_client: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sends_per_second: Option<Count>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [replay] keys")]
pub(crate) struct RawReplay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_events: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_total_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [poll] keys")]
pub(crate) struct RawPoll {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_events: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Size>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [limits] keys")]
pub(crate) struct RawLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_outbound_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upstream_frame_bytes: Option<Size>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_open_body_bytes: Option<Size>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [security] keys")]
pub(crate) struct RawSecurity {
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [channel] keys")]
pub(crate) struct RawChannel {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_channels: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_channel: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_frames: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_bytes: Option<Size>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [client] keys")]
pub(crate) struct RawClient {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inject: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [admin] keys")]
pub(crate) struct RawAdmin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_on_main: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [cluster] keys")]
pub(crate) struct RawCluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers_dns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table of [telemetry] keys")]
pub(crate) struct RawTelemetry {
    /// Empty or absent: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
}
