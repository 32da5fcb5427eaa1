//! A flaky network for the browser tests: a TCP relay in front of the proxy
//! that, while chaos is on, cuts every connection through it every
//! [`RELAY_CUT_EVERY`], or freezes the open ones (half-open TCP).
//!
//! ```ignore
//! let relay = Relay::start(proxy.addr).await;
//! // pages load from http://{relay.addr}; write `1`, `0` or `f` to
//! // relay.control to switch chaos on, off, or freeze.
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How often the relay cuts every connection while chaos is on.
pub const RELAY_CUT_EVERY: Duration = Duration::from_millis(300);
/// How long a frozen connection stays open and silent before it is dropped.
pub const FROZEN_FOR: Duration = Duration::from_secs(60);

/// A TCP relay in front of `target`. Chaos is switched by writing `1` or
/// `0` to the control port; `f` freezes the connections open at that
/// moment.
pub struct Relay {
    pub addr: SocketAddr,
    pub control: SocketAddr,
    /// Connections cut mid-stream, so the test can tell chaos really happened.
    pub cuts: Arc<AtomicUsize>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            control: control.local_addr().unwrap(),
            cuts: Arc::default(),
        };
        let chaos = Arc::new(AtomicBool::new(false));
        // Each tick under chaos bumps the epoch; every connection ends when
        // it sees the epoch change.
        let (epoch_tx, epoch) = watch::channel(0u64);
        // Bumped by the `f` command: every connection open at that moment
        // stops forwarding but stays open, like a half-open TCP connection
        // behind a dead NAT; later connections work.
        let (freeze_tx, freeze) = watch::channel(0u64);

        let switch = chaos.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = control.accept().await {
                let mut byte = [0u8; 1];
                if conn.read_exact(&mut byte).await.is_ok() {
                    match byte[0] {
                        b'f' => freeze_tx.send_modify(|e| *e += 1),
                        b => switch.store(b == b'1', Ordering::SeqCst),
                    }
                }
            }
        });
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELAY_CUT_EVERY);
            loop {
                ticks.tick().await;
                if chaos.load(Ordering::SeqCst) {
                    epoch_tx.send_modify(|e| *e += 1);
                }
            }
        });
        let cuts = relay.cuts.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let cuts = cuts.clone();
                let mut epoch = epoch.clone();
                epoch.mark_unchanged();
                let mut freeze = freeze.clone();
                freeze.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        // Normal end of either side.
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // The cut: both sockets are dropped mid-stream.
                        _ = epoch.changed() => {
                            cuts.fetch_add(1, Ordering::SeqCst);
                        }
                        // Silence: hold both sockets, forward nothing.
                        _ = freeze.changed() => {
                            tokio::time::sleep(FROZEN_FOR).await;
                        }
                    }
                });
            }
        });
        relay
    }

    /// The number of connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}
