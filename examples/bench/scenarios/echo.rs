//! Echo round trip: one session, 2,000 sequential round trips (send a
//! frame, wait for the backend's echo). Bridged, the send is a POST and the
//! reply comes down the transport; the figure to beat is a WebSocket echo
//! through the proxy's own pass-through (the same number of hops).

use std::time::{Duration, Instant};

use super::{Ctx, Measured, Rig, conns_note, each_transport, measuring, quantile_us, ratio};
use crate::clients::{Addrs, Session, Transport, payload, unix_nanos};
use crate::fleet::histogram;
use crate::report::{Row, Table};
use crate::{Result, fail};

/// Round trips before measuring: connections warm, the send connection open.
const WARMUP: usize = 100;
const SIZE: usize = 64;
/// A reply slower than this is a hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(ctx: &Ctx) -> Table {
    let n = ctx.round_trips;
    let mut table = Table::new(
        "echo",
        format!(
            "1 session, {n} sequential round trips of {SIZE} B after {WARMUP} warm-up; microseconds{}",
            conns_note(ctx)
        ),
    );
    each_transport(ctx, &mut table, measuring("p50_us"), async |rig, t| {
        let h = round_trips(rig, t, WARMUP, n).await?;
        let mut row = Row::new(t.name());
        row.int("round_trips", h.len())
            .num("p50_us", quantile_us(Some(&h), 0.5), 0)
            .num("p99_us", quantile_us(Some(&h), 0.99), 0)
            .num("p999_us", quantile_us(Some(&h), 0.999), 0)
            .num("max_us", quantile_us(Some(&h), 1.0), 0)
            .num("mean_us", Some(h.mean() / 1000.0), 0);
        Ok(Measured {
            row,
            failures: Vec::new(),
        })
    })
    .await;
    ratio(&mut table, "p50_us", "ws-direct", "ratio_vs_direct");
    ratio(&mut table, "p50_us", "ws-proxy", "ratio_vs_ws_proxy");
    ratio(&mut table, "p99_us", "ws-proxy", "p99_ratio_vs_ws_proxy");
    ratio(&mut table, "p50_us", "ws-nginx", "ratio_vs_ws_nginx");
    table
}

/// Runs `warmup + n` round trips on a fresh `/echo` session, checking each
/// reply is the frame just sent; returns the last `n` round-trip times (ns).
pub async fn round_trips(
    rig: &Rig,
    t: Transport,
    warmup: usize,
    n: usize,
) -> Result<hdrhistogram::Histogram<u64>> {
    round_trips_at(rig.addrs(), t, warmup, n).await
}

/// [`round_trips`] through `addrs`: the cluster's forwarded row reads and
/// sends through the replica that does not own the session.
pub async fn round_trips_at(
    addrs: Addrs,
    t: Transport,
    warmup: usize,
    n: usize,
) -> Result<hdrhistogram::Histogram<u64>> {
    // On a worker, as a client's tasks run: the scenario's own future runs
    // on `block_on`'s thread, which is no worker, so every wake-up between it
    // and a connection's task would cross threads (HTTP clients have one
    // such task per connection, a WebSocket client none).
    tokio::spawn(async move {
        let mut session = Session::open(t, addrs, "/echo", super::WS_READ_BUFFER).await?;
        let mut h = histogram();
        for i in 1..=(warmup + n) as u64 {
            let start = Instant::now();
            let reply = tokio::time::timeout(
                REPLY_TIMEOUT,
                session.round_trip(payload(i, unix_nanos(), SIZE)),
            )
            .await
            .map_err(|_| format!("round trip {i}: no reply within {REPLY_TIMEOUT:?}"))??;
            let took = start.elapsed();
            match reply {
                Some(m) if m.seq == i => {}
                Some(m) => fail!("round trip {i}: the reply was frame {}", m.seq),
                None => fail!("round trip {i}: the session closed"),
            }
            if i > warmup as u64 {
                h.saturating_record(took.as_nanos() as u64);
            }
            session.now_and_then().await?;
        }
        Ok(h)
    })
    .await?
}
