//! The CI smoke run: correctness only, seconds per transport. Paced
//! sessions plus a full-speed flood through a small replay window (64 KiB
//! before backpressure, so the proxy pauses and resumes the upstream many
//! times), then a few echo round trips; then the same over multiplexed
//! channels (paced sessions on an SSE channel reader, the flood on an
//! NDJSON one, echo through the batched send). Any loss, duplicate,
//! reorder, stall or proxy crash fails the run.

use std::time::Duration;

use super::{
    Ctx, Measured, Rig, Runs, WS_READ_BUFFER, attached, channel, each_transport, echo, failures,
};
use crate::channel_fleet::ChannelFleet;
use crate::clients::Transport;
use crate::clients::channel::Form;
use crate::fleet::{Fleet, Load, Outcome};
use crate::procs::{Findings, ProxySettings};
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
/// Backpressure from 64 KiB of undelivered events per session.
const SMALL_WINDOW: ProxySettings = ProxySettings {
    max_pending: "64KiB",
};
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
        settings: SMALL_WINDOW,
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
    channels(ctx, &mut table).await;
    table
}

/// The `channel` row: the same loads with every session on a channel.
async fn channels(ctx: &Ctx, table: &mut Table) {
    const NAME: &str = "channel";
    ctx.out.info(&format!("[smoke] {NAME} ..."));
    let mut findings = Findings::default();
    let mut row = Row::new(NAME);
    match Rig::start(ctx, Transport::Sse, SMALL_WINDOW).await {
        Err(e) => findings.failures.push(format!("cannot start: {e}")),
        Ok(mut rig) => {
            let mut fails = Vec::new();
            let mut tally = (0, 0);
            match channel_loads(&mut rig).await {
                Ok((paced, flood)) => {
                    for o in [&paced, &flood] {
                        fails.extend(failures(o));
                        tally = (tally.0 + o.received, tally.1 + o.failed);
                    }
                }
                Err(e) => fails.push(e.to_string()),
            }
            let echoed = match channel::channel_round_trips(&rig, 0, ROUND_TRIPS).await {
                Ok(h) => h.len(),
                Err(e) => {
                    fails.push(format!("echo: {e}"));
                    0
                }
            };
            rig.stop(&mut findings).await;
            row.int("frames", tally.0)
                .int(
                    "expected",
                    PACED.count * PACED.sessions as u64 + FLOOD.count * FLOOD.sessions as u64,
                )
                .int("round_trips", echoed)
                .int("failed_sessions", tally.1 as u64)
                .text("result", if fails.is_empty() { "ok" } else { "FAILED" });
            findings.failures.extend(fails);
        }
    }
    table
        .failures
        .extend(findings.failures.iter().map(|f| format!("{NAME}: {f}")));
    table
        .notes
        .extend(findings.notes.iter().map(|n| format!("{NAME}: {n}")));
    table.rows.push(row);
}

/// The paced load on one SSE channel, the flood on one NDJSON channel.
async fn channel_loads(rig: &mut Rig) -> crate::Result<(Outcome, Outcome)> {
    let proxy = rig.addrs().proxy.ok_or("no proxy")?;
    let paced = ChannelFleet::spawn(Form::Sse, proxy, PACED, 1);
    let flood = ChannelFleet::spawn(Form::Stream, proxy, FLOOD, 1);
    let (a, b) = tokio::join!(paced.attached(WITHIN), flood.attached(WITHIN));
    if let Err(e) = a.and(b) {
        let (p, f) = tokio::join!(paced.stop(), flood.stop());
        let first = p.failures.iter().chain(&f.failures).next().cloned();
        crate::fail!("{e}; first failure: {}", first.unwrap_or_default());
    }
    rig.backend.go().await?;
    Ok(tokio::join!(paced.finish(WITHIN), flood.finish(WITHIN)))
}
