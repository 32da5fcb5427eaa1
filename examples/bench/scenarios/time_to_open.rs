//! Time-to-open behind a buffering firewall : a real nginx
//! in front of the proxy refuses WebSocket upgrades and holds streamed
//! bodies (see `nginx.rs`); headless Chromium loads a page there and opens
//! a `BridgeSocket`, first with nothing remembered, then again in the same
//! profile. Driving Chromium is a node script, `time_to_open.mjs`
//! (playwright-core from tests/browser, Debian's chromium); this measures
//! what it prints: the median over `--repeat` runs (default 5) of the time
//! from `new BridgeSocket()` to `open`. Targets: first load <= 3 s, next
//! load <= 1 s.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::time::timeout;

use super::{BENCH_PROXY, Ctx};
use crate::nginx::{self, Nginx, Role};
use crate::procs::{Backend, Findings, Proxy};
use crate::report::{Row, Table};
use crate::{Result, fail};

/// Runs (fresh browser profiles) when `--repeat` is not given.
const DEFAULT_RUNS: usize = 5;
/// The whole node run, Chromium start included.
const NODE_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(ctx: &Ctx) -> Table {
    let runs = if ctx.repeat > 1 {
        ctx.repeat
    } else {
        DEFAULT_RUNS
    };
    let mut table = Table::new(
        "time-to-open",
        format!(
            "new BridgeSocket() to open in headless Chromium behind nginx refusing upgrades and holding streamed bodies, median of {runs} profiles"
        ),
    );
    table.key = "load";
    ctx.out.info("[time-to-open] nginx + chromium ...");
    if let Err(e) = measure(ctx, runs, &mut table).await {
        table.failures.push(format!("time-to-open: {e}"));
    }
    table
}

async fn measure(ctx: &Ctx, runs: usize, table: &mut Table) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(bin) = nginx::nginx_bin() else {
        fail!(
            "no nginx at {} (apt-get install nginx-light)",
            nginx::NGINX_BIN
        );
    };
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        fail!("tests/browser/node_modules missing (npm ci --prefix tests/browser)");
    }
    let backend = Backend::start(&ctx.bench_exe).await?;
    let proxy = Proxy::start(&ctx.proxy_bin, backend.addr, BENCH_PROXY).await?;
    let scratch = tempfile::tempdir()?;
    let front = Nginx::start(&bin, scratch.path(), proxy.addr, Role::BufferingFirewall)?;
    let output = timeout(
        NODE_TIMEOUT,
        tokio::process::Command::new("node")
            .arg(root.join("examples/bench/time_to_open.mjs"))
            .arg(front.url())
            .arg(runs.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    drop(front);
    let mut findings = Findings::default();
    proxy.stop(&mut findings).await;
    backend.stop().await;
    table.failures.extend(findings.failures);
    table.notes.extend(findings.notes);
    let output = output.map_err(|_| "the node run took too long")??;

    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for load in ["first", "next"] {
        let of: Vec<&Value> = lines.iter().filter(|v| v["load"] == load).collect();
        for bad in of.iter().filter(|v| v.get("error").is_some()) {
            table
                .failures
                .push(format!("{load} load, run {}: {}", bad["run"], bad["error"]));
        }
        let mut good: Vec<&Value> = of
            .iter()
            .copied()
            .filter(|v| v["open_ms"].is_u64())
            .collect();
        good.sort_by_key(|v| v["open_ms"].as_u64());
        let mut row = Row::new(format!("{load} load"));
        if let Some(median) = good.get(good.len().saturating_sub(1) / 2) {
            let ms = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0) as f64;
            row.num("open_s", Some(ms(median, "open_ms") / 1000.0), 3)
                .num("first_echo_s", Some(ms(median, "echo_ms") / 1000.0), 3)
                .text("transport", median["transport"].as_str().unwrap_or("-"))
                .text(
                    "attempts",
                    median["attempts"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default(),
                )
                .text(
                    "spread",
                    format!(
                        "open_s {:.3}..{:.3}",
                        ms(good[0], "open_ms") / 1000.0,
                        ms(good[good.len() - 1], "open_ms") / 1000.0
                    ),
                )
                .int("runs", good.len() as u64);
        }
        table.rows.push(row);
    }
    if !output.status.success() && table.failures.is_empty() {
        table
            .failures
            .push(format!("time_to_open.mjs exited with {}", output.status));
    }
    Ok(())
}
