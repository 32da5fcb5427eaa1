//! The process-wide replay budget, `replay.max_total_bytes`: all sessions'
//! replay queues, lingering ones included, stay within it; a session past it
//! pauses its upstream (backpressure) and delivers everything once read, or,
//! under drop-oldest, drops its own oldest events, reports a gap and counts
//! them in `wsbridge_events_dropped_total`.

mod support;

use std::time::Duration;

use support::{Backend, Ev, PATIENCE, Proxy};

/// One sample of a metric (`name` with its labels, if any), from a fresh scrape.
async fn metric(proxy: &Proxy, name: &str) -> u64 {
    let text = proxy
        .http
        .get(proxy.url("/_bridge/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

const FRAME: u64 = 64 * 1024;

#[tokio::test]
async fn lingering_sessions_hold_no_more_than_the_budget() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nmax_sessions = 10\n[replay]\nmax_total_bytes = \"256KiB\"\nmax_bytes = \"256KiB\"\n",
    )
    .await;
    let mut most = 0;
    for cycle in 0..50u64 {
        let s = proxy.open(&format!("/big?size={FRAME}")).await;
        // The frame is read from the upstream: in the queue, or in the
        // reader's hands while it waits for room. (No client reads: a
        // reader that took everything may go one frame over.)
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if metric(&proxy, "wsbridge_events_total{direction=\"down\"}").await > cycle {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cycle {cycle}: no frame"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.delete("").await.status(), reqwest::StatusCode::NO_CONTENT);
        let held = metric(&proxy, "wsbridge_replay_bytes").await;
        assert!(held <= 256 * 1024, "cycle {cycle}: {held} bytes held");
        most = most.max(held);
    }
    // The lingering sessions did fill it: the bound was what held them, and
    // the sessions past it paused.
    assert_eq!(most, 4 * FRAME);
    assert!(metric(&proxy, "wsbridge_backpressure_pauses_total").await >= 46);
    assert_eq!(metric(&proxy, "wsbridge_sessions_lingering").await, 50);
}

#[tokio::test]
async fn paused_sessions_resume_and_deliver_everything_once_read() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[replay]\nmax_total_bytes = \"64KiB\"\nmax_bytes = \"64KiB\"\n",
    )
    .await;
    let n = 150;
    let sessions = [
        proxy.open(&format!("/flood?n={n}&size=1024")).await,
        proxy.open(&format!("/flood?n={n}&size=1024")).await,
    ];
    // Nobody reads yet: both fill the budget between them and pause.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&proxy, "wsbridge_backpressure_pauses_total").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never paused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held = metric(&proxy, "wsbridge_replay_bytes").await;
    assert!(held <= 64 * 1024, "{held} bytes held");
    // Read one after the other (acknowledging as the cursor moves): every
    // frame arrives, in order, no gap, and the budget holds meanwhile (one
    // frame over for the session being read, at most).
    for s in &sessions {
        let events = s.poll_events(0, n).await;
        assert_eq!(events.len(), n);
        for (i, e) in events.iter().enumerate() {
            let id = i as u64 + 1;
            assert!(
                matches!(e, Ev::Text(got, t) if *got == id && t.starts_with(&format!("{id}:"))),
                "event {id}: {e:?}"
            );
        }
        let held = metric(&proxy, "wsbridge_replay_bytes").await;
        assert!(held <= 64 * 1024 + 2 * 1030, "{held} bytes held");
    }
    assert_eq!(metric(&proxy, "wsbridge_events_dropped_total").await, 0);
}

#[tokio::test]
async fn drop_oldest_past_the_budget_reports_a_gap_and_counts_the_drops() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[replay]\nmax_total_bytes = \"16KiB\"\nmax_bytes = \"16KiB\"\noverflow = \"drop-oldest\"\n",
    )
    .await;
    let n = 100;
    let s = proxy.open(&format!("/flood?n={n}&size=1024")).await;
    // Nobody reads: the upstream is never paused, the oldest go instead.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&proxy, "wsbridge_events_total{direction=\"down\"}").await < n as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood was held back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let events = s.poll_events(0, 1).await;
    let Ev::Gap(_, from, to) = events[0] else {
        panic!("no gap first: {events:?}")
    };
    assert_eq!(from, 1);
    let rest = s.poll_events(to, n - to as usize).await;
    assert_eq!(rest.last().map(Ev::id), Some(n as u64), "{rest:?}");
    // Every event is either delivered or counted as dropped.
    let dropped = metric(&proxy, "wsbridge_events_dropped_total").await;
    assert_eq!(dropped, to, "dropped {dropped}, gap to {to}");
    assert!(metric(&proxy, "wsbridge_replay_bytes").await <= 16 * 1024);
}

#[tokio::test]
async fn drop_oldest_within_a_session_counts_the_drops() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[replay]\nmax_pending_bytes = \"8KiB\"\noverflow = \"drop-oldest\"\n",
    )
    .await;
    let n = 50;
    let s = proxy.open(&format!("/flood?n={n}&size=1024")).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&proxy, "wsbridge_events_total{direction=\"down\"}").await < n as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood was held back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let events = s.poll_events(0, 1).await;
    let Ev::Gap(_, 1, to) = events[0] else {
        panic!("no gap first: {events:?}")
    };
    assert!(to > 0);
    assert_eq!(metric(&proxy, "wsbridge_events_dropped_total").await, to);
}
