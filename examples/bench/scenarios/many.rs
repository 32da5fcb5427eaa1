//! Many sessions: as many held sessions as the open-file limit allows (the
//! proxy holds two sockets per bridged session), one frame per 5 s each.
//! The proxy's RSS per session (before any frame, and after a few); the
//! kernel's memory apart, since it is in no RSS: TCP buffer pages
//! (sockstat `mem`) and slab (where socket structures live; all of a
//! session's sockets, in all three processes); the proxy's CPU with every
//! session idle, and while the trickle flows.

use std::time::{Duration, Instant};

use tokio::time::sleep;

use super::{
    Ctx, Measured, attached, each_transport, failures, measuring, open_timeout, rss_columns,
};
use crate::fleet::{Fleet, Load};
use crate::probe::{self, CpuMeter};
use crate::report::{Row, Table};

/// File descriptors kept free in each process (listeners, logs, pipes,
/// the odd reconnect).
const FD_MARGIN: u64 = 1000;
const RATE: f64 = 0.2;
const COUNT: u64 = 4;
const SIZE: usize = 128;
/// After the last session attached, before measuring.
const SETTLE: Duration = Duration::from_secs(2);
/// The window over which idle CPU is measured (no frames flowing).
const IDLE_WINDOW: Duration = Duration::from_secs(5);
/// Into the trickle, when every session has had about two frames.
const ACTIVE_AT: Duration = Duration::from_secs(12);

pub async fn run(ctx: &Ctx) -> Table {
    // The proxy holds two sockets per bridged session; the load generator
    // and the backend one each.
    let auto = (ctx.nofile.saturating_sub(FD_MARGIN) / 2) as usize;
    let load = Load {
        sessions: ctx.sessions.unwrap_or(auto),
        rate: RATE,
        size: SIZE,
        count: COUNT,
        latency: false,
        ws_read_buffer: 4 * 1024,
        open_concurrency: 64,
    };
    let mut table = Table::new(
        "many",
        format!(
            "{} held sessions, 1 frame per {}s each ({COUNT} in all); proxy RSS and kernel TCP memory per session, proxy CPU",
            load.sessions,
            1.0 / RATE
        ),
    );
    each_transport(
        ctx,
        &mut table,
        measuring("rss_kib_per_session"),
        async |rig, t| {
            let pids = rig.proxy_pids();
            let rss = || {
                pids.as_deref()
                    .and_then(|p| probe::status_kib_all(p, "VmRSS"))
            };
            sleep(Duration::from_millis(500)).await;
            let rss0 = rss();
            let tcp0 = kernel_mem().await;
            let opening = Instant::now();
            let fleet = attached(
                Fleet::spawn(t, rig.addrs(), load),
                open_timeout(load.sessions),
            )
            .await?;
            let open_s = opening.elapsed().as_secs_f64();
            sleep(SETTLE).await;
            let rss_idle = rss();
            let tcp_idle = kernel_mem().await;
            let idle = pids.clone().map(CpuMeter::start_all);
            sleep(IDLE_WINDOW).await;
            let idle = idle.map(|m| m.read());
            rig.backend.go().await?;
            let busy = pids.clone().map(CpuMeter::start_all);
            sleep(ACTIVE_AT).await;
            let rss_active = rss();
            let tcp_active = kernel_mem().await;
            let outcome = fleet
                .finish(load.publish_time() + Duration::from_secs(60))
                .await;
            let busy = busy.map(|m| m.read());
            let peak = pids
                .as_deref()
                .and_then(|p| probe::status_kib_all(p, "VmHWM"));

            let n = load.sessions as f64;
            let kib_per_session = |a: Option<u64>, b: Option<u64>| {
                a.zip(b).map(|(a, b)| (b as f64 - a as f64) / 1024.0 / n)
            };
            let tcp_per_session = |b| kib_per_session(tcp0.0, b);
            let slab_per_session = |b| kib_per_session(tcp0.1, b);
            let mut row = Row::new(t.name());
            row.int("sessions", load.sessions as u64)
                .num("open_s", Some(open_s), 1);
            rss_columns(&mut row, load.sessions, rss0, rss_idle, rss_active);
            row.num("peak_rss_mib", peak.map(|k| k as f64 / 1024.0), 1)
                .num(
                    "tcp_buf_idle_kib_per_session",
                    tcp_per_session(tcp_idle.0),
                    2,
                )
                .num(
                    "tcp_buf_active_kib_per_session",
                    tcp_per_session(tcp_active.0),
                    2,
                )
                .num("slab_kib_per_session", slab_per_session(tcp_idle.1), 2)
                .num("idle_cpu_pct", idle.map(|c| c.percent()), 2)
                .num("trickle_cpu_pct", busy.map(|c| c.percent()), 1)
                .num(
                    "cpu_us_per_msg",
                    busy.map(|c| c.us_per(outcome.received)),
                    1,
                )
                .int("frames", outcome.received)
                .int("failed", outcome.failed as u64);
            Ok(Measured {
                row,
                failures: failures(&outcome),
            })
        },
    )
    .await;
    table
}

/// The kernel's TCP buffer memory and its slab memory, each the median of
/// five readings over a second: both are system-wide, and other processes'
/// bursts come and go.
async fn kernel_mem() -> (Option<u64>, Option<u64>) {
    let (mut tcp, mut slab) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        tcp.extend(probe::tcp_mem_bytes());
        slab.extend(probe::slab_bytes());
        sleep(Duration::from_millis(200)).await;
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    (median(tcp), median(slab))
}
