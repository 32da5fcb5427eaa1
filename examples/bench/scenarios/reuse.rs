//! Reused connections: browsers and ingress pools keep HTTP/1.1
//! connections alive and send whatever comes next on them, so a page's
//! pass-through requests and its bridge requests share connections. Held
//! SSE sessions, each reader on a connection used one of three ways
//! ([`Conns`]): its own, the open's, or one that first carried a
//! pass-through GET, the open and another bridge request. The proxy's RSS
//! per held session for each, which is what the HTTP/1.1 front end
//! (`net::h1`: bridge requests, bodies included, and the app's bodyless
//! `GET`s) saves or does not.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::sleep;

use super::{BENCH_PROXY, Ctx, Rig, open_timeout};
use crate::clients::{Conns, Session, Transport};
use crate::probe;
use crate::procs::Findings;
use crate::report::{Row, Table};

/// Default session count (`--sessions` overrides it).
const SESSIONS: usize = 3000;
/// Opens at once.
const CONCURRENCY: usize = 64;
/// After the last session attached, before measuring.
const SETTLE: Duration = Duration::from_secs(2);
/// The backend's path: it publishes only after `go`, which never comes.
const PATH: &str = "/pub?rate=1&size=64&count=1";

pub async fn run(ctx: &Ctx) -> Table {
    let sessions = ctx.sessions.unwrap_or(SESSIONS);
    let mut table = Table::new(
        "reuse",
        format!("{sessions} held SSE sessions; proxy RSS per session by the reader's connection"),
    );
    for (name, conns) in [
        ("sse-own-conn", Conns::Own),
        ("sse-open-conn", Conns::Shared),
        ("sse-reused-conn", Conns::Reused),
    ] {
        ctx.out.info(&format!("[reuse] {name} ..."));
        let mut findings = Findings::default();
        let row = match Rig::start(ctx, Transport::Sse, BENCH_PROXY).await {
            Err(e) => {
                findings.failures.push(format!("cannot start: {e}"));
                Row::new(name)
            }
            Ok(rig) => {
                let row = measure(&rig, name, conns, sessions, &mut findings).await;
                rig.stop(&mut findings).await;
                row
            }
        };
        table
            .failures
            .extend(findings.failures.iter().map(|f| format!("{name}: {f}")));
        table.rows.push(row);
    }
    table
}

async fn measure(
    rig: &Rig,
    name: &'static str,
    conns: Conns,
    sessions: usize,
    findings: &mut Findings,
) -> Row {
    let mut row = Row::new(name);
    let (Some(pid), Some(proxy)) = (rig.proxy_pid(), rig.addrs().proxy) else {
        findings.failures.push("no proxy".into());
        return row;
    };
    sleep(Duration::from_millis(500)).await;
    let rss0 = probe::rss_kib(pid);
    let mut held = Vec::with_capacity(sessions);
    let mut opening = JoinSet::new();
    let deadline = tokio::time::Instant::now() + open_timeout(sessions);
    let mut started = 0;
    while held.len() < sessions {
        while started < sessions && opening.len() < CONCURRENCY {
            opening.spawn(Session::open_sse(proxy, PATH, conns));
            started += 1;
        }
        match tokio::time::timeout_at(deadline, opening.join_next()).await {
            Ok(Some(Ok(Ok(session)))) => held.push(session),
            Ok(Some(Ok(Err(e)))) => {
                findings.failures.push(format!("open: {e}"));
                break;
            }
            Ok(Some(Err(e))) => {
                findings.failures.push(format!("open task: {e}"));
                break;
            }
            Ok(None) => break,
            Err(_) => {
                findings
                    .failures
                    .push(format!("{} of {sessions} opened in time", held.len()));
                break;
            }
        }
    }
    sleep(SETTLE).await;
    let rss = probe::rss_kib(pid);
    let n = held.len().max(1) as f64;
    let per_session = rss0.zip(rss).map(|(a, b)| (b as f64 - a as f64) / n);
    row.int("sessions", held.len() as u64)
        .num("rss_base_mib", rss0.map(|k| k as f64 / 1024.0), 1)
        .num("rss_kib_per_session", per_session, 1);
    drop(held);
    row
}
