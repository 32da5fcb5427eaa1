//! The scenarios and the CI smoke run. Each measures every
//! transport against a fresh backend and proxy (see [`Rig`]), one after
//! another, direct WebSocket first since every ratio is against it.

pub mod channel;
pub mod cluster;
pub mod echo;
pub mod light;
pub mod many;
pub mod reuse;
pub mod smoke;
pub mod throughput;
pub mod time_to_open;

use std::path::PathBuf;
use std::time::Duration;

use crate::clients::{Addrs, Conns, Transport};
use crate::fleet::{Fleet, Outcome};
use crate::nginx::{self, Nginx, Role};
use crate::procs::{Backend, Findings, Proxy, ProxySettings};
use crate::report::{Out, Row, Table};
use crate::{Result, fail};

/// What every scenario needs from the command line.
pub struct Ctx {
    pub bench_exe: PathBuf,
    pub proxy_bin: PathBuf,
    pub transports: Vec<Transport>,
    pub duration: Option<Duration>,
    pub sessions: Option<usize>,
    pub round_trips: usize,
    /// How bridged clients use their connections (`--connections`).
    pub conns: Conns,
    /// Runs per transport; the median is reported (see [`Runs`]).
    pub repeat: usize,
    /// The open-file limit of every process (the bench raised it).
    pub nofile: u64,
    pub out: Out,
}

/// The proxy settings of the measuring scenarios: backpressure from 1 MiB
/// of undelivered events per session, so no frame is ever dropped.
pub const BENCH_PROXY: ProxySettings = ProxySettings {
    max_pending: "1MiB",
};

/// A measuring scenario's runs: the bench proxy, the median of `figure`.
pub fn measuring(figure: &'static str) -> Runs {
    Runs {
        settings: BENCH_PROXY,
        median_of: Some(figure),
        nginx: true,
    }
}

/// How a table's title names `--connections reuse` (and says nothing of
/// the default).
pub fn conns_note(ctx: &Ctx) -> &'static str {
    match ctx.conns {
        Conns::Reused => "; connections reused (pass-through requests on the bridged ones)",
        _ => "",
    }
}

/// A WebSocket read buffer for the fast scenarios: large enough that the
/// direct baseline is not held back by small reads.
pub const WS_READ_BUFFER: usize = 64 * 1024;

/// The servers of one transport's run.
pub struct Rig {
    pub backend: Backend,
    /// None for the direct WebSocket: the proxy stays out of it entirely.
    pub proxy: Option<Proxy>,
    /// The `ws-nginx` row's proxy, in wsbridge's place.
    pub nginx: Option<Nginx>,
    /// How the clients of this run use their connections.
    pub conns: Conns,
}

impl Rig {
    async fn start(ctx: &Ctx, transport: Transport, settings: ProxySettings) -> Result<Rig> {
        let backend = Backend::start(&ctx.bench_exe).await?;
        let proxy = if transport.uses_proxy() {
            Some(Proxy::start(&ctx.proxy_bin, backend.addr, settings).await?)
        } else {
            None
        };
        let nginx = if transport == Transport::WsNginx {
            let bin = nginx::nginx_bin().ok_or("no nginx")?;
            let upstream = backend.addr;
            let started = tokio::task::spawn_blocking(move || {
                Nginx::start(
                    &bin,
                    &std::env::temp_dir(),
                    upstream,
                    Role::WebsocketPassthrough,
                )
            })
            .await?;
            Some(started?)
        } else {
            None
        };
        Ok(Rig {
            backend,
            proxy,
            nginx,
            conns: ctx.conns,
        })
    }

    pub fn addrs(&self) -> Addrs {
        Addrs {
            backend: self.backend.addr,
            proxy: (self.proxy.as_ref().map(|p| p.addr)).or(self.nginx.as_ref().map(|n| n.addr)),
            read_via: None,
            conns: self.conns,
        }
    }

    /// wsbridge's process (not nginx's).
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().and_then(Proxy::pid)
    }

    /// The processes of whichever proxy runs: wsbridge, or nginx's master
    /// and workers.
    pub fn proxy_pids(&self) -> Option<Vec<u32>> {
        match &self.nginx {
            Some(n) => Some(n.pids()),
            None => self.proxy_pid().map(|p| vec![p]),
        }
    }

    async fn stop(self, findings: &mut Findings) {
        if let Some(proxy) = self.proxy {
            proxy.stop(findings).await;
        }
        if let Some(nginx) = self.nginx {
            let _ = tokio::task::spawn_blocking(move || drop(nginx)).await;
        }
        self.backend.stop().await;
    }
}

/// One transport's figures and what went wrong.
pub struct Measured {
    pub row: Row,
    pub failures: Vec<String>,
}

/// How a scenario runs its transports.
#[derive(Clone, Copy)]
pub struct Runs {
    pub settings: ProxySettings,
    /// With `--repeat N`, each transport runs N times, interleaved with the
    /// others so a change in the machine's load hits all alike, and the run
    /// with the median of this figure is reported. `None`: always once.
    pub median_of: Option<&'static str>,
    /// Whether the `ws-nginx` row runs (when nginx is installed; when not,
    /// the table says so in a note).
    pub nginx: bool,
}

/// Runs `measure` for each transport on a fresh rig and files its row,
/// failures and notes in `table`. A transport that fails keeps a row (with
/// what it measured, if anything) so the table shows every transport.
pub async fn each_transport(
    ctx: &Ctx,
    table: &mut Table,
    runs: Runs,
    measure: impl AsyncFnMut(&mut Rig, Transport) -> Result<Measured>,
) {
    let variants: Vec<_> = ctx.transports.iter().map(|&t| (t.name(), t, t)).collect();
    each_variant(ctx, table, runs, &variants, measure).await;
}

/// [`each_transport`] over named variants of one scenario: `(row name,
/// the transport the rig is started for, what `measure` is given)`.
pub async fn each_variant<V: Copy>(
    ctx: &Ctx,
    table: &mut Table,
    runs: Runs,
    variants: &[(&'static str, Transport, V)],
    mut measure: impl AsyncFnMut(&mut Rig, V) -> Result<Measured>,
) {
    let rounds = runs.median_of.map_or(1, |_| ctx.repeat.max(1));
    let nginx_here = nginx::nginx_bin().is_some();
    let variants: Vec<_> = variants
        .iter()
        .copied()
        .filter(|&(_, t, _)| t != Transport::WsNginx || (runs.nginx && nginx_here))
        .collect();
    if runs.nginx && !nginx_here && ctx.transports.contains(&Transport::WsNginx) {
        table.notes.push(format!(
            "ws-nginx skipped: no nginx at {} (apt-get install nginx-light)",
            nginx::NGINX_BIN
        ));
    }
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (k, &(name, t, v)) in variants.iter().enumerate() {
            let of = if rounds > 1 {
                format!(" (run {round} of {rounds})")
            } else {
                String::new()
            };
            ctx.out
                .info(&format!("[{}] {name}{of} ...", table.scenario));
            let mut findings = Findings::default();
            let row = match Rig::start(ctx, t, runs.settings).await {
                Err(e) => {
                    findings.failures.push(format!("cannot start: {e}"));
                    Row::new(name)
                }
                Ok(mut rig) => {
                    let measured = measure(&mut rig, v).await;
                    rig.stop(&mut findings).await;
                    match measured {
                        Ok(m) => {
                            table.failures.extend(m.failures);
                            m.row
                        }
                        Err(e) => {
                            findings.failures.push(e.to_string());
                            Row::new(name)
                        }
                    }
                }
            };
            table
                .failures
                .extend(findings.failures.iter().map(|f| format!("{name}: {f}")));
            table
                .notes
                .extend(findings.notes.iter().map(|n| format!("{name}: {n}")));
            rows[k].push(row);
        }
    }
    for runs_of_one in rows {
        table.rows.push(median(runs_of_one, runs.median_of));
    }
}

/// The run with the median `figure`, with the spread of all runs.
fn median(mut rows: Vec<Row>, figure: Option<&'static str>) -> Row {
    let Some(figure) = figure.filter(|f| rows.len() > 1 && rows.iter().any(|r| r.get(f).is_some()))
    else {
        return rows.swap_remove(0); // nothing to choose by: the first run
    };
    let mut measured: Vec<(f64, Row)> = rows
        .into_iter()
        .filter_map(|r| Some((r.get(figure)?, r)))
        .collect();
    measured.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (lo, hi) = (measured[0].0, measured[measured.len() - 1].0);
    let runs = measured.len();
    let mut row = measured.swap_remove((runs - 1) / 2).1;
    let d = if hi.abs() < 100.0 { 1 } else { 0 };
    row.int("runs", runs as u64)
        .text("spread", format!("{figure} {lo:.d$}..{hi:.d$}"));
    row
}

/// Waits for every session of a fleet to be attached; on failure, stops it
/// and says why.
pub async fn attached(fleet: Fleet, within: Duration) -> Result<Fleet> {
    match fleet.attached(within).await {
        Ok(()) => Ok(fleet),
        Err(e) => {
            let outcome = fleet.stop().await;
            let first = outcome.failures.first().cloned().unwrap_or_default();
            fail!("{e}; first failure: {first}")
        }
    }
}

/// How long opening `n` sessions may take on a busy 2-core machine.
/// The held-session memory columns of `many` and `channel-memory`: the
/// proxy's RSS before opening (`rss0`), then per session once `sessions`
/// were held idle and after each had frames; the target's figure is the
/// larger of the two.
pub fn rss_columns(
    row: &mut Row,
    sessions: usize,
    rss0: Option<u64>,
    idle: Option<u64>,
    active: Option<u64>,
) {
    let per_session = |kib: Option<u64>| {
        rss0.zip(kib)
            .map(|(a, b)| (b as f64 - a as f64) / sessions as f64)
    };
    let (idle, active) = (per_session(idle), per_session(active));
    row.num("rss_base_mib", rss0.map(|k| k as f64 / 1024.0), 1)
        .num("rss_idle_kib_per_session", idle, 1)
        .num("rss_active_kib_per_session", active, 1)
        .num(
            "rss_kib_per_session",
            idle.zip(active).map(|(a, b)| a.max(b)),
            1,
        );
}

pub fn open_timeout(n: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(20 * n as u64)
}

/// An outcome's failures, with a count of those not listed.
pub fn failures(outcome: &Outcome) -> Vec<String> {
    let mut out = outcome.failures.clone();
    if outcome.failed > outcome.failures.len() {
        out.push(format!("... {} sessions failed in all", outcome.failed));
    }
    out
}

/// A quantile of a latency histogram (nanoseconds) in microseconds.
pub fn quantile_us(h: Option<&hdrhistogram::Histogram<u64>>, q: f64) -> Option<f64> {
    h.filter(|h| !h.is_empty())
        .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
}

/// Adds `ratio_vs_direct` (and other comparisons) to every row: `column`
/// divided by the same column of `base`.
pub fn ratio(table: &mut Table, column: &str, base: &str, name: &'static str) {
    let Some(base) = table.row(base).and_then(|r| r.get(column)) else {
        return;
    };
    for row in &mut table.rows {
        let v = row.get(column).map(|v| v / base);
        row.num(name, v, 2);
    }
}
