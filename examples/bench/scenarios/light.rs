//! Light load: 100 sessions × 20 frames/s × 256 B for 10 s; end-to-end
//! latency from the backend's send timestamp to the client's receipt.

use std::time::Duration;

use super::{
    Ctx, Measured, WS_READ_BUFFER, attached, conns_note, each_transport, failures, measuring,
    open_timeout, quantile_us, ratio,
};
use crate::fleet::{Fleet, Load};
use crate::probe::CpuMeter;
use crate::report::{Row, Table};

const RATE: f64 = 20.0;
const SIZE: usize = 256;

pub async fn run(ctx: &Ctx) -> Table {
    let secs = ctx
        .duration
        .unwrap_or(Duration::from_secs(10))
        .as_secs_f64();
    let load = Load {
        sessions: ctx.sessions.unwrap_or(100),
        rate: RATE,
        size: SIZE,
        count: (RATE * secs).round().max(1.0) as u64,
        latency: true,
        ws_read_buffer: WS_READ_BUFFER,
        open_concurrency: 64,
    };
    let mut table = Table::new(
        "light",
        format!(
            "{} sessions x {RATE} msg/s x {SIZE} B for {secs}s; latency from the backend's send to the client, in microseconds{}",
            load.sessions,
            conns_note(ctx)
        ),
    );
    each_transport(ctx, &mut table, measuring("p99_us"), async |rig, t| {
        let fleet = attached(
            Fleet::spawn(t, rig.addrs(), load),
            open_timeout(load.sessions),
        )
        .await?;
        let cpu = rig.proxy_pids().map(CpuMeter::start_all);
        rig.backend.go().await?;
        let outcome = fleet
            .finish(load.publish_time() + Duration::from_secs(30))
            .await;
        let cpu = cpu.map(|m| m.read());
        let h = outcome.hist.as_ref();
        let mut row = Row::new(t.name());
        row.int("sessions", load.sessions as u64)
            .int("frames", outcome.received)
            .int("expected", load.count * load.sessions as u64)
            .num("p50_us", quantile_us(h, 0.5), 0)
            .num("p99_us", quantile_us(h, 0.99), 0)
            .num("p999_us", quantile_us(h, 0.999), 0)
            .num("max_us", quantile_us(h, 1.0), 0)
            .num("proxy_cpu_pct", cpu.map(|c| c.percent()), 1)
            .num(
                "proxy_cpu_us_per_msg",
                cpu.map(|c| c.us_per(outcome.received)),
                2,
            )
            .int("failed", outcome.failed as u64);
        Ok(Measured {
            row,
            failures: failures(&outcome),
        })
    })
    .await;
    let direct = table.row("ws-direct").and_then(|r| r.get("p99_us"));
    for row in &mut table.rows {
        let above = direct.zip(row.get("p99_us")).map(|(d, p)| p - d);
        row.num("p99_above_direct_us", above, 0);
    }
    ratio(&mut table, "p99_us", "ws-direct", "ratio_vs_direct");
    table
}
