//! Bounded soak per transport: 5,000 upstream frames while the client's
//! connection is cut at random moments (mid-batch, mid-chunk). The client
//! resumes from the last id it really has; it must see every frame exactly
//! once and in order, with no gap (the replay queue is sized for the run).
//! The loops are in tests/support/soak.rs, shared with tests/cluster.rs.

mod support;

use std::time::Duration;

use support::soak::{self, Soak};
use support::{Backend, Proxy};

const CONFIG: &str = "[replay]\nmax_events = 8192\n";
const SOAK: Soak = Soak {
    frames: 5000,
    keep_at_most: 400,
    deadline: Duration::from_secs(60),
    pace: true,
};

#[tokio::test]
async fn sse_survives_random_cuts() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, CONFIG).await;
    let s = proxy
        .open(&format!("/burst?n={}&size=16", SOAK.frames))
        .await;
    soak::sse(&s, SOAK).await;
}

#[tokio::test]
async fn stream_survives_random_cuts() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, CONFIG).await;
    let s = proxy
        .open(&format!("/burst?n={}&size=16", SOAK.frames))
        .await;
    soak::stream(&s, SOAK).await;
}

#[tokio::test]
async fn poll_survives_lost_responses() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, &format!("{CONFIG}[poll]\nmax_events = 50\n")).await;
    let s = proxy
        .open(&format!("/burst?n={}&size=16", SOAK.frames))
        .await;
    soak::poll(&s, SOAK).await;
}
