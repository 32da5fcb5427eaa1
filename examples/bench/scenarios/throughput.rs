//! Throughput: 50 sessions, the backend sending 128 B frames as fast as the
//! path takes them; frames per second after a warm-up, the ratio to a
//! direct WebSocket, and the CPU each process spent (the proxy's per
//! delivered frame is the `cpu` table).

use std::time::{Duration, Instant};

use super::{
    Ctx, Measured, WS_READ_BUFFER, attached, conns_note, each_transport, failures, measuring,
    open_timeout, ratio,
};
use crate::fleet::{Fleet, Load};
use crate::probe::CpuMeter;
use crate::report::{Row, Table};

const SIZE: usize = 128;
/// Before the window: connections warmed, queues filled, backpressure steady.
const WARMUP: Duration = Duration::from_secs(2);

pub async fn run(ctx: &Ctx) -> Table {
    let window = ctx.duration.unwrap_or(Duration::from_secs(10));
    let load = Load {
        sessions: ctx.sessions.unwrap_or(50),
        rate: 0.0,
        size: SIZE,
        count: 0,
        latency: false,
        ws_read_buffer: WS_READ_BUFFER,
        open_concurrency: 64,
    };
    let mut table = Table::new(
        "throughput",
        format!(
            "{} sessions, {SIZE} B frames as fast as possible, {}s window after {}s warm-up{}",
            load.sessions,
            window.as_secs_f64(),
            WARMUP.as_secs(),
            conns_note(ctx)
        ),
    );
    each_transport(ctx, &mut table, measuring("msgs_per_s"), async |rig, t| {
        let fleet = attached(
            Fleet::spawn(t, rig.addrs(), load),
            open_timeout(load.sessions),
        )
        .await?;
        rig.backend.go().await?;
        tokio::time::sleep(WARMUP).await;
        let proxy = rig.proxy_pids().map(CpuMeter::start_all);
        let backend = rig.backend.pid().map(CpuMeter::start);
        let loadgen = CpuMeter::start(std::process::id());
        let (d0, t0) = (fleet.delivered(), Instant::now());
        tokio::time::sleep(window).await;
        let (d1, elapsed) = (fleet.delivered(), t0.elapsed());
        let (proxy, backend, loadgen) = (
            proxy.map(|m| m.read()),
            backend.map(|m| m.read()),
            loadgen.read(),
        );
        let outcome = fleet.stop().await;
        let frames = d1 - d0;
        let per_s = frames as f64 / elapsed.as_secs_f64();
        let mut row = Row::new(t.name());
        row.int("sessions", load.sessions as u64)
            .num("msgs_per_s", Some(per_s), 0)
            .num(
                "mib_per_s",
                Some(per_s * SIZE as f64 / (1024.0 * 1024.0)),
                1,
            )
            .num("proxy_cpu_us_per_msg", proxy.map(|c| c.us_per(frames)), 2)
            .num("proxy_cpu_pct", proxy.map(|c| c.percent()), 0)
            .num("backend_cpu_pct", backend.map(|c| c.percent()), 0)
            .num("loadgen_cpu_pct", Some(loadgen.percent()), 0)
            .int("failed", outcome.failed as u64);
        Ok(Measured {
            row,
            failures: failures(&outcome),
        })
    })
    .await;
    ratio(&mut table, "msgs_per_s", "ws-direct", "ratio_vs_direct");
    ratio(&mut table, "msgs_per_s", "ws-nginx", "ratio_vs_nginx");
    table
}

/// The proxy's CPU per delivered frame: at full speed (the throughput run)
/// and at a fixed 2,000 frames/s (the light run, when it ran).
pub fn cpu_table(throughput: &Table, light: Option<&Table>) -> Table {
    let mut table = Table::new(
        "cpu",
        "proxy CPU (utime+stime from /proc) per delivered frame, microseconds",
    );
    for row in &throughput.rows {
        let mut r = Row::new(row.key.clone());
        let light_row = light.and_then(|l| l.row(&row.key));
        r.num("full_speed_us_per_msg", row.get("proxy_cpu_us_per_msg"), 2)
            .num("full_speed_msgs_per_s", row.get("msgs_per_s"), 0)
            .num("full_speed_proxy_cpu_pct", row.get("proxy_cpu_pct"), 0)
            .num(
                "light_us_per_msg",
                light_row.and_then(|l| l.get("proxy_cpu_us_per_msg")),
                2,
            )
            .num(
                "light_proxy_cpu_pct",
                light_row.and_then(|l| l.get("proxy_cpu_pct")),
                1,
            );
        table.rows.push(r);
    }
    table
}
