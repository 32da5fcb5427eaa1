//! The CI smoke run: correctness only, seconds per transport. Paced
//! sessions plus a full-speed flood through a small replay window (64 KiB
//! before backpressure, so the proxy pauses and resumes the upstream many
//! times), then a few echo round trips. Any loss, duplicate, reorder, stall
//! or proxy crash fails the run.

use std::time::Duration;

use super::{Ctx, Measured, Runs, WS_READ_BUFFER, attached, each_transport, echo, failures};
use crate::fleet::{Fleet, Load};
use crate::procs::ProxySettings;
use crate::report::{Row, Table};

const PACED: Load = Load {
    sessions: 4,
    rate: 500.0,
    size: 64,
    count: 1000,
    latency: false,
    ws_read_buffer: WS_READ_BUFFER,
    open_concurrency: 8,
};

const FLOOD: Load = Load {
    sessions: 2,
    rate: 0.0,
    size: 128,
    count: 20_000,
    latency: false,
    ws_read_buffer: WS_READ_BUFFER,
    open_concurrency: 8,
};

const ROUND_TRIPS: usize = 50;
const WITHIN: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> Table {
    let mut table = Table::new(
        "smoke",
        format!(
            "correctness: {}x{} paced + {}x{} full-speed frames, {ROUND_TRIPS} echo round trips, 64 KiB before backpressure",
            PACED.sessions, PACED.count, FLOOD.sessions, FLOOD.count
        ),
    );
    let runs = Runs {
        settings: ProxySettings {
            max_pending: "64KiB",
        },
        median_of: None,
        // Correctness of wsbridge only; nginx's row is for measuring.
        nginx: false,
    };
    each_transport(ctx, &mut table, runs, async |rig, t| {
        let paced = attached(Fleet::spawn(t, rig.addrs(), PACED), WITHIN).await?;
        let flood = attached(Fleet::spawn(t, rig.addrs(), FLOOD), WITHIN).await?;
        rig.backend.go().await?;
        let (paced, flood) = tokio::join!(paced.finish(WITHIN), flood.finish(WITHIN));
        let echoed = echo::round_trips(rig, t, 0, ROUND_TRIPS).await;
        let mut fails = failures(&paced);
        fails.extend(failures(&flood));
        let echo_ok = match echoed {
            Ok(h) => h.len(),
            Err(e) => {
                fails.push(format!("{}: echo: {e}", t.name()));
                0
            }
        };
        let mut row = Row::new(t.name());
        row.int("frames", paced.received + flood.received)
            .int(
                "expected",
                PACED.count * PACED.sessions as u64 + FLOOD.count * FLOOD.sessions as u64,
            )
            .int("round_trips", echo_ok)
            .int("failed_sessions", (paced.failed + flood.failed) as u64)
            .text("result", if fails.is_empty() { "ok" } else { "FAILED" });
        Ok(Measured {
            row,
            failures: fails,
        })
    })
    .await;
    table
}
