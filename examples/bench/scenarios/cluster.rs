//! Cluster: two replicas with `[cluster]`, sessions opened on
//! one (the owner). SSE throughput and the echo round trip are measured
//! with the reader and sends on the owner itself (`sse-owner`) and on the
//! other replica, which forwards every request to the owner over its
//! pooled h2c connection (`sse-forwarded`), in the same run. Targets: the
//! forwarded throughput at least 0.7x the owner's, and at most 150 µs added
//! to the p50 round trip.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{BENCH_PROXY, Ctx, WS_READ_BUFFER, attached, failures, open_timeout, quantile_us};
use crate::clients::http::HttpConn;
use crate::clients::{Addrs, Conns, PREFIX, Transport};
use crate::fleet::{Fleet, Load};
use crate::procs::{Backend, Findings, Proxy, free_port};
use crate::report::{Row, Table};
use crate::{Result, fail};

const SIZE: usize = 128;
const WARMUP: Duration = Duration::from_secs(2);
const ECHO_WARMUP: usize = 100;

pub async fn run(ctx: &Ctx) -> Table {
    let window = ctx.duration.unwrap_or(Duration::from_secs(10));
    let sessions = ctx.sessions.unwrap_or(50);
    let mut table = Table::new(
        "cluster",
        format!(
            "2 replicas; SSE: {sessions} sessions, {SIZE} B frames as fast as possible, {}s window; \
             echo: {} round trips; owner = reader on the owning replica, forwarded = on the other",
            window.as_secs_f64(),
            ctx.round_trips
        ),
    );
    for (name, forwarded) in [("sse-owner", false), ("sse-forwarded", true)] {
        ctx.out.info(&format!("[cluster] {name} ..."));
        let mut findings = Findings::default();
        match measure(ctx, forwarded, sessions, window, &mut findings).await {
            Ok(mut row) => {
                row.key = name.into();
                table.rows.push(row);
            }
            Err(e) => {
                findings.failures.push(e.to_string());
                table.rows.push(Row::new(name));
            }
        }
        table
            .failures
            .extend(findings.failures.iter().map(|f| format!("{name}: {f}")));
        table
            .notes
            .extend(findings.notes.iter().map(|n| format!("{name}: {n}")));
    }
    let owner = table.row("sse-owner").cloned();
    if let (Some(owner), Some(fwd)) = (
        owner,
        table.rows.iter_mut().find(|r| r.key == "sse-forwarded"),
    ) {
        let ratio = fwd
            .get("msgs_per_s")
            .zip(owner.get("msgs_per_s"))
            .map(|(f, o)| f / o);
        let added = fwd
            .get("echo_p50_us")
            .zip(owner.get("echo_p50_us"))
            .map(|(f, o)| f - o);
        fwd.num("throughput_vs_owner", ratio, 2)
            .num("p50_added_us", added, 0);
    }
    table
}

async fn measure(
    ctx: &Ctx,
    forwarded: bool,
    sessions: usize,
    window: Duration,
    findings: &mut Findings,
) -> Result<Row> {
    let mut backend = Backend::start(&ctx.bench_exe).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cluster.key");
    std::fs::File::create(&key)?.write_all(&[b'k'; 48])?;
    let internal = [free_port()?, free_port()?];
    let cluster = |me: SocketAddr| {
        format!(
            "[cluster]\nlisten = \"{me}\"\nadvertise = \"{me}\"\npeers = [\"{}\", \"{}\"]\nsecret_file = \"{}\"\n",
            internal[0],
            internal[1],
            key.display()
        )
    };
    let owner = Proxy::start_with(
        &ctx.proxy_bin,
        backend.addr,
        BENCH_PROXY,
        &cluster(internal[0]),
    )
    .await?;
    let other = Proxy::start_with(
        &ctx.proxy_bin,
        backend.addr,
        BENCH_PROXY,
        &cluster(internal[1]),
    )
    .await?;
    let result = async {
        wait_for_peer(other.addr).await?;
        let addrs = Addrs {
            backend: backend.addr,
            proxy: Some(owner.addr),
            read_via: Some(if forwarded { other.addr } else { owner.addr }),
            conns: Conns::Shared,
        };
        let load = Load {
            sessions,
            rate: 0.0,
            size: SIZE,
            count: 0,
            latency: false,
            ws_read_buffer: WS_READ_BUFFER,
            open_concurrency: 64,
        };
        let fleet = attached(
            Fleet::spawn(Transport::Sse, addrs, load),
            open_timeout(sessions),
        )
        .await?;
        backend.go().await?;
        tokio::time::sleep(WARMUP).await;
        let (d0, t0) = (fleet.delivered(), Instant::now());
        tokio::time::sleep(window).await;
        let (d1, elapsed) = (fleet.delivered(), t0.elapsed());
        let outcome = fleet.stop().await;
        findings.failures.extend(failures(&outcome));
        let per_s = (d1 - d0) as f64 / elapsed.as_secs_f64();

        let h = super::echo::round_trips_at(addrs, Transport::Sse, ECHO_WARMUP, ctx.round_trips)
            .await?;
        let mut row = Row::new("");
        row.int("sessions", sessions as u64)
            .num("msgs_per_s", Some(per_s), 0)
            .int("failed", outcome.failed as u64)
            .num("echo_p50_us", quantile_us(Some(&h), 0.5), 0)
            .num("echo_p99_us", quantile_us(Some(&h), 0.99), 0);
        Ok::<_, crate::Error>(row)
    }
    .await;
    owner.stop(findings).await;
    other.stop(findings).await;
    backend.stop().await;
    result
}

/// Waits until the replica `addr` has found its peer (discovery runs at
/// start, then every few seconds).
async fn wait_for_peer(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = HttpConn::connect(addr).await?;
        let resp = conn
            .request(http::Method::GET, &format!("{PREFIX}/metrics"), None)
            .await?;
        let (_, body) = crate::clients::http::collect(resp).await?;
        if String::from_utf8_lossy(&body).contains("wsbridge_cluster_peers 1") {
            return Ok(());
        }
        if Instant::now() > deadline {
            fail!("the replicas never found each other");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
