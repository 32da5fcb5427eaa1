//! The `[telemetry]` table: span export over OTLP/HTTP, off unless
//! `otlp_endpoint` names a collector. Validated here so a bad URL or ratio
//! fails at boot, not at the first export.

use http::Uri;

use super::raw::RawTelemetry;
use super::{ConfigError, invalid, url};

/// `telemetry.service_name` when the table leaves it out.
pub const DEFAULT_SERVICE_NAME: &str = "wsbridge";
/// The longest `service_name` accepted (it goes into every export).
const MAX_SERVICE_NAME: usize = 255;

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP traces endpoint, used as written (the whole URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`); `None`: no span is made or sent.
    pub otlp_endpoint: Option<Uri>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of new traces recorded, 0.0 to 1.0; a request that
    /// carries a `traceparent` follows its sampled flag instead.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            sample_ratio: 1.0,
        }
    }
}

pub(super) fn validate(raw: RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
    let otlp_endpoint = match raw.otlp_endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(url("telemetry.otlp_endpoint", text, &["http", "https"])?),
    };
    let service_name = raw
        .service_name
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.is_empty()
        || service_name.len() > MAX_SERVICE_NAME
        || service_name.chars().any(char::is_control)
    {
        return Err(invalid(
            "telemetry.service_name",
            format!(
                "expected 1 to {MAX_SERVICE_NAME} bytes without control characters, got {service_name:?}"
            ),
        ));
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(invalid(
            "telemetry.sample_ratio",
            format!("expected a number from 0.0 to 1.0, got {sample_ratio}"),
        ));
    }
    Ok(TelemetryConfig {
        otlp_endpoint,
        service_name,
        sample_ratio,
    })
}

impl From<&TelemetryConfig> for RawTelemetry {
    fn from(c: &TelemetryConfig) -> RawTelemetry {
        RawTelemetry {
            otlp_endpoint: Some(
                c.otlp_endpoint
                    .as_ref()
                    .map_or_else(String::new, Uri::to_string),
            ),
            service_name: Some(c.service_name.clone()),
            sample_ratio: Some(c.sample_ratio),
        }
    }
}
