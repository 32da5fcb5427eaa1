//! Channel: many sessions on one multiplexed channel's reader against the
//! same sessions each with a reader of its own, in the same run, fresh
//! processes per row.
//!
//! - throughput: 100 sessions, the backend sending 128 B frames as fast as
//!   the path takes them, read over one channel (SSE, NDJSON stream) or
//!   by 100 readers (the `throughput` scenario's clients); frames/s after a
//!   warm-up, proxy CPU per frame, the ratio shared / own.
//! - memory: the proxy's RSS per held session, on channels of 100 sessions
//!   or each with its own SSE reader, idle and after a frame or two (as in
//!   `many`), at 100 sessions and at a larger count (2,000 on 20 channels,
//!   or `--sessions`) where the figure is well above the noise.
//! - echo: one `/echo` session, round trips with the send through the
//!   channel's batched send and the reply over the channel's SSE reader,
//!   against the session's own send and SSE reader.
//!
//! Targets: shared throughput at least 0.8x own readers; shared RSS per
//! session at most 0.5x.

use std::time::{Duration, Instant};

use tokio::time::sleep;

use super::{
    Ctx, Measured, Rig, WS_READ_BUFFER, attached, each_variant, echo, failures, measuring,
    open_timeout, quantile_us, rss_columns,
};
use crate::channel_fleet::ChannelFleet;
use crate::clients::channel::{Channel, Form};
use crate::clients::{Transport, payload, unix_nanos};
use crate::fleet::{Fleet, Load, Outcome, histogram};
use crate::probe::{self, CpuMeter};
use crate::report::{Row, Table};
use crate::{Result, fail};

/// Sessions per channel: under `channel.max_sessions_per_channel` (256 by
/// default) with room to spare.
const PER_CHANNEL: usize = 100;
/// The throughput run's sessions, and the small memory count.
const SESSIONS: usize = 100;
/// The large memory count (`--sessions` overrides it).
const MANY: usize = 2000;
const SIZE: usize = 128;
const WARMUP: Duration = Duration::from_secs(2);
/// Memory: one frame per 2 s each, 4 in all, so at [`ACTIVE_AT`] every
/// session has had two or three and none has closed.
const RATE: f64 = 0.5;
const COUNT: u64 = 4;
const ACTIVE_AT: Duration = Duration::from_secs(5);
/// After the last session attached, before measuring memory.
const SETTLE: Duration = Duration::from_secs(2);
const ECHO_WARMUP: usize = 100;
const ECHO_SIZE: usize = 64;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Who reads the sessions.
#[derive(Clone, Copy)]
enum Readers {
    /// Each session its own reader, on the connection that opened it.
    Own(Transport),
    /// Channels of [`PER_CHANNEL`] sessions, each with one reader.
    Shared(Form),
}

/// Either kind of fleet, to measure both alike.
enum AnyFleet {
    Own(Fleet),
    Shared(ChannelFleet),
}

impl AnyFleet {
    async fn start(rig: &Rig, readers: Readers, load: Load) -> Result<AnyFleet> {
        let within = open_timeout(load.sessions);
        match readers {
            Readers::Own(t) => Ok(AnyFleet::Own(
                attached(Fleet::spawn(t, rig.addrs(), load), within).await?,
            )),
            Readers::Shared(form) => {
                let proxy = rig.addrs().proxy.ok_or("no proxy")?;
                let channels = load.sessions.div_ceil(PER_CHANNEL);
                let fleet = ChannelFleet::spawn(form, proxy, load, channels);
                match fleet.attached(within).await {
                    Ok(()) => Ok(AnyFleet::Shared(fleet)),
                    Err(e) => {
                        let outcome = fleet.stop().await;
                        let first = outcome.failures.first().cloned().unwrap_or_default();
                        fail!("{e}; first failure: {first}")
                    }
                }
            }
        }
    }

    fn delivered(&self) -> u64 {
        match self {
            AnyFleet::Own(f) => f.delivered(),
            AnyFleet::Shared(f) => f.delivered(),
        }
    }

    async fn stop(self) -> Outcome {
        match self {
            AnyFleet::Own(f) => f.stop().await,
            AnyFleet::Shared(f) => f.stop().await,
        }
    }

    async fn finish(self, within: Duration) -> Outcome {
        match self {
            AnyFleet::Own(f) => f.finish(within).await,
            AnyFleet::Shared(f) => f.finish(within).await,
        }
    }
}

/// The channel scenario's three tables: throughput (`channel`), memory
/// (`channel-memory`) and echo (`channel-echo`).
pub async fn run(ctx: &Ctx) -> Vec<Table> {
    vec![
        throughput(ctx).await,
        memory(ctx).await,
        echo_round_trips(ctx).await,
    ]
}

async fn throughput(ctx: &Ctx) -> Table {
    let window = ctx.duration.unwrap_or(Duration::from_secs(10));
    let load = Load {
        sessions: SESSIONS,
        rate: 0.0,
        size: SIZE,
        count: 0,
        latency: false,
        ws_read_buffer: WS_READ_BUFFER,
        open_concurrency: 64,
    };
    let mut table = Table::new(
        "channel",
        format!(
            "{SESSIONS} sessions, {SIZE} B frames as fast as possible, {}s window after {}s warm-up; \
             own = a reader per session, channel = one reader for all",
            window.as_secs_f64(),
            WARMUP.as_secs()
        ),
    );
    let variants = [
        ("sse-own", Transport::Sse, Readers::Own(Transport::Sse)),
        ("sse-channel", Transport::Sse, Readers::Shared(Form::Sse)),
        (
            "stream-own",
            Transport::Stream,
            Readers::Own(Transport::Stream),
        ),
        (
            "stream-channel",
            Transport::Stream,
            Readers::Shared(Form::Stream),
        ),
    ];
    each_variant(
        ctx,
        &mut table,
        measuring("msgs_per_s"),
        &variants,
        async |rig, readers| {
            let fleet = AnyFleet::start(rig, readers, load).await?;
            rig.backend.go().await?;
            sleep(WARMUP).await;
            let proxy = rig.proxy_pid().map(CpuMeter::start);
            let loadgen = CpuMeter::start(std::process::id());
            let (d0, t0) = (fleet.delivered(), Instant::now());
            sleep(window).await;
            let (d1, elapsed) = (fleet.delivered(), t0.elapsed());
            let (proxy, loadgen) = (proxy.map(|m| m.read()), loadgen.read());
            let outcome = fleet.stop().await;
            let frames = d1 - d0;
            let per_s = frames as f64 / elapsed.as_secs_f64();
            let mut row = Row::new("");
            row.int("sessions", load.sessions as u64)
                .int("readers", readers_of(readers, load.sessions) as u64)
                .num("msgs_per_s", Some(per_s), 0)
                .num("proxy_cpu_us_per_msg", proxy.map(|c| c.us_per(frames)), 2)
                .num("proxy_cpu_pct", proxy.map(|c| c.percent()), 0)
                .num("loadgen_cpu_pct", Some(loadgen.percent()), 0)
                .int("failed", outcome.failed as u64);
            Ok(Measured {
                row,
                failures: failures(&outcome),
            })
        },
    )
    .await;
    name_rows(&mut table, &variants);
    against_own(
        &mut table,
        "msgs_per_s",
        &[("sse-channel", "sse-own"), ("stream-channel", "stream-own")],
    );
    table
}

async fn memory(ctx: &Ctx) -> Table {
    let many = ctx.sessions.unwrap_or(MANY);
    let mut table = Table::new(
        "channel-memory",
        format!(
            "held SSE sessions, 1 frame per {}s each ({COUNT} in all); proxy RSS per session, \
             on channels of {PER_CHANNEL} or each with its own reader",
            1.0 / RATE
        ),
    );
    let variants = [
        (
            "sse-own-100",
            Transport::Sse,
            (Readers::Own(Transport::Sse), SESSIONS),
        ),
        (
            "sse-channel-100",
            Transport::Sse,
            (Readers::Shared(Form::Sse), SESSIONS),
        ),
        (
            "sse-own",
            Transport::Sse,
            (Readers::Own(Transport::Sse), many),
        ),
        (
            "sse-channel",
            Transport::Sse,
            (Readers::Shared(Form::Sse), many),
        ),
    ];
    each_variant(
        ctx,
        &mut table,
        measuring("rss_kib_per_session"),
        &variants,
        async |rig, (readers, sessions)| {
            let load = Load {
                sessions,
                rate: RATE,
                size: SIZE,
                count: COUNT,
                latency: false,
                ws_read_buffer: 4 * 1024,
                open_concurrency: 64,
            };
            let pid = rig.proxy_pid();
            sleep(Duration::from_millis(500)).await;
            let rss0 = pid.and_then(probe::rss_kib);
            let opening = Instant::now();
            let fleet = AnyFleet::start(rig, readers, load).await?;
            let open_s = opening.elapsed().as_secs_f64();
            sleep(SETTLE).await;
            let rss_idle = pid.and_then(probe::rss_kib);
            rig.backend.go().await?;
            sleep(ACTIVE_AT).await;
            let rss_active = pid.and_then(probe::rss_kib);
            let outcome = fleet
                .finish(load.publish_time() + Duration::from_secs(60))
                .await;
            let mut row = Row::new("");
            row.int("sessions", sessions as u64)
                .int("readers", readers_of(readers, sessions) as u64)
                .num("open_s", Some(open_s), 1);
            rss_columns(&mut row, sessions, rss0, rss_idle, rss_active);
            row.int("frames", outcome.received)
                .int("failed", outcome.failed as u64);
            Ok(Measured {
                row,
                failures: failures(&outcome),
            })
        },
    )
    .await;
    name_rows(&mut table, &variants);
    against_own(
        &mut table,
        "rss_kib_per_session",
        &[
            ("sse-channel-100", "sse-own-100"),
            ("sse-channel", "sse-own"),
        ],
    );
    table
}

async fn echo_round_trips(ctx: &Ctx) -> Table {
    let n = ctx.round_trips;
    let mut table = Table::new(
        "channel-echo",
        format!(
            "1 session, {n} sequential round trips of {ECHO_SIZE} B after {ECHO_WARMUP} warm-up; \
             session = POST send + its SSE reader, channel = batched send + the channel's SSE reader; microseconds"
        ),
    );
    let variants = [
        ("sse-session", Transport::Sse, false),
        ("sse-channel", Transport::Sse, true),
    ];
    each_variant(
        ctx,
        &mut table,
        measuring("p50_us"),
        &variants,
        async |rig, on_channel| {
            let h = if on_channel {
                channel_round_trips(rig, ECHO_WARMUP, n).await?
            } else {
                echo::round_trips(rig, Transport::Sse, ECHO_WARMUP, n).await?
            };
            let mut row = Row::new("");
            row.int("round_trips", h.len())
                .num("p50_us", quantile_us(Some(&h), 0.5), 0)
                .num("p99_us", quantile_us(Some(&h), 0.99), 0)
                .num("p999_us", quantile_us(Some(&h), 0.999), 0)
                .num("max_us", quantile_us(Some(&h), 1.0), 0);
            Ok(Measured {
                row,
                failures: Vec::new(),
            })
        },
    )
    .await;
    name_rows(&mut table, &variants);
    against_own(&mut table, "p50_us", &[("sse-channel", "sse-session")]);
    table
}

/// Echo round trips on a channel of one `/echo` session: each frame goes
/// out in a batch of one, its reply comes over the channel's SSE reader
/// (already waiting, as a browser's would be).
pub async fn channel_round_trips(
    rig: &Rig,
    warmup: usize,
    n: usize,
) -> Result<hdrhistogram::Histogram<u64>> {
    let proxy = rig.addrs().proxy.ok_or("no proxy")?;
    // On a worker, like `echo::round_trips`.
    tokio::spawn(async move {
        let channel = Channel::create(proxy).await?;
        let mut conn = crate::clients::http::HttpConn::connect(proxy).await?;
        let id = channel.open(&mut conn, "/echo").await?;
        let ids = [id];
        let mut reader = channel.reader(Form::Sse, &ids).await?;
        let mut sender = channel.sender().await?;
        let mut h = histogram();
        for i in 1..=(warmup + n) as u64 {
            let text = payload(i, unix_nanos(), ECHO_SIZE);
            let batch = [(ids[0].as_str(), text.as_str())];
            let start = Instant::now();
            let (sent, got) = tokio::time::timeout(REPLY_TIMEOUT, async {
                tokio::join!(sender.send(&batch), reader.next())
            })
            .await
            .map_err(|_| format!("round trip {i}: no reply within {REPLY_TIMEOUT:?}"))?;
            let took = start.elapsed();
            sent?;
            match got? {
                (_, Some(m)) if m.seq == i => {}
                (_, Some(m)) => fail!("round trip {i}: the reply was frame {}", m.seq),
                (_, None) => fail!("round trip {i}: the session closed"),
            }
            if i > warmup as u64 {
                h.saturating_record(took.as_nanos() as u64);
            }
        }
        Ok(h)
    })
    .await?
}

/// Readers the proxy serves for `sessions` sessions read as `readers`.
fn readers_of(readers: Readers, sessions: usize) -> usize {
    match readers {
        Readers::Own(_) => sessions,
        Readers::Shared(_) => sessions.div_ceil(PER_CHANNEL),
    }
}

/// Rows are made nameless inside `measure`; a row that failed to start has
/// its name already. Names them in variant order.
fn name_rows<T, V>(table: &mut Table, variants: &[(&'static str, T, V)]) {
    for (row, (name, _, _)) in table.rows.iter_mut().zip(variants) {
        row.key = (*name).into();
    }
}

/// `ratio_vs_own` on each shared row: its `column` over the own row's.
fn against_own(table: &mut Table, column: &str, pairs: &[(&str, &str)]) {
    for (shared, own) in pairs {
        let base = table.row(own).and_then(|r| r.get(column));
        if let Some(row) = table.rows.iter_mut().find(|r| r.key == *shared) {
            let v = row.get(column).zip(base).map(|(s, o)| s / o);
            row.num("ratio_vs_own", v, 2);
        }
    }
}
