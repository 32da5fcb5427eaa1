//! The wsbridge benchmark: a real WebSocket backend, the proxy in release
//! mode and a Rust load generator, as three processes on this machine, with
//! every browser transport measured beside a direct WebSocket in the same run.
//!
//! ```text
//! cargo run --release --example bench -- --scenario all     # every scenario (~10 min)
//! cargo run --release --example bench -- --scenario light   # or throughput, echo, many, reuse, cpu, cluster, channel
//! cargo run --release --example bench -- --scenario time-to-open  # Chromium behind a buffering nginx
//! cargo run --release --example bench -- --smoke            # correctness only, for CI (~15 s)
//! ```
//!
//! Flags: `--duration 10s` (light and throughput windows), `--sessions N`
//! (overrides the scenario's count), `--transports sse,ws-direct` (a subset
//! of ws-direct, ws-proxy, ws-nginx, sse, stream, poll), `--round-trips N` (echo),
//! `--repeat N` (each transport N times, interleaved; the median is shown),
//! `--json` (only the JSON lines on stdout; tables go to stderr),
//! `--proxy-bin PATH`, `--connections own|reuse` (whether bridged clients'
//! connections also carry pass-through requests, as browsers' do).
//!
//! The proxy is `target/release/wsbridge`. `cargo run --example` does not
//! build binaries, so unless `--proxy-bin` names one the bench first runs
//! `cargo build --release --bin wsbridge` (a no-op when it is fresh). The
//! backend is this same executable re-run as `bench backend`. Every client
//! checks that it gets every sequence number exactly once and in order; any
//! loss, duplicate, reorder, stall or proxy crash makes the exit status 1.
//! Missed speed targets do not: the bench prints numbers, it asserts none.
//!
//! Modules, in reading order:
//! - `backend`: the WebSocket backend process (`/pub`, `/echo`).
//! - `procs`: starting and stopping the backend and proxy processes.
//! - `probe`: /proc readings (CPU ticks, RSS, socket memory), rlimits, machine.
//! - `clients`: one client per transport, each checking what it receives.
//! - `fleet`: many clients at once, their counters and histograms.
//! - `channel_fleet`: many sessions on a few multiplexed channels, one
//!   reader each.
//! - `nginx`: a real nginx, as a buffering firewall (time-to-open) or as
//!   the WebSocket pass-through's peer (the `ws-nginx` row).
//! - `scenarios`: light, throughput, echo, many, reuse, cluster, channel, smoke,
//!   time-to-open (which drives Chromium with `time_to_open.mjs`).
//! - `report`: tables, JSON lines and the targets.

mod backend;
mod channel_fleet;
mod clients;
mod fleet;
mod nginx;
mod probe;
mod procs;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use clients::{Conns, Transport};
use report::Out;
use scenarios::Ctx;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with a formatted error.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { return Err(format!($($arg)*).into()) };
}

/// Benchmarks wsbridge's transports against a direct WebSocket.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The scenario to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Correctness only: each transport for ~2 s with few sessions, exiting
    /// non-zero on any loss, duplicate or reorder.
    #[arg(long)]
    smoke: bool,
    /// The measuring window of the light and throughput scenarios.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Sessions, overriding the scenario's own count (light 100, throughput
    /// 50, many: what the open-file limit allows).
    #[arg(long)]
    sessions: Option<usize>,
    /// Round trips of the echo scenario.
    #[arg(long, default_value_t = 2000)]
    round_trips: usize,
    /// Runs of each transport, interleaved; the run with the median figure
    /// is reported (light: p99, throughput: msgs/s, echo: p50, many: RSS).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Transports to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    transports: Vec<Transport>,
    /// Only JSON lines on stdout; tables and progress go to stderr.
    #[arg(long)]
    json: bool,
    /// The proxy binary (default: target/release/wsbridge, built first).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// How bridged clients use their connections (throughput, echo,
    /// light): `own`, each reader on its session's open connection and
    /// sends on one of their own; `reuse`, as browsers and ingress pools
    /// do, the reader's connection first carries a pass-through GET, the
    /// open and another bridge request, and the send connection a
    /// pass-through GET now and then.
    #[arg(long, value_enum, default_value_t = Connections::Own)]
    connections: Connections,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Connections {
    Own,
    Reuse,
}

#[derive(Subcommand)]
enum Command {
    /// The WebSocket backend; the bench starts it as its own child process.
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    All,
    Light,
    Throughput,
    Echo,
    Many,
    /// Held SSE sessions on connections shared with pass-through requests.
    Reuse,
    /// Two `[cluster]` replicas: SSE throughput and echo through the
    /// replica that does not own the session, against the owner.
    Cluster,
    /// Many sessions on one multiplexed channel's reader against a reader
    /// each: throughput, proxy RSS per session, batched-send echo.
    Channel,
    /// The proxy's CPU per delivered message, from the throughput run.
    Cpu,
    /// Time-to-open in headless Chromium behind a buffering nginx (first
    /// and next page load); needs nginx, chromium and tests/browser's
    /// node_modules. Not part of `all`.
    TimeToOpen,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Backend { listen }) = cli.command {
        return backend::main(listen);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: Cli) -> Result<ExitCode> {
    let out = Out { json: cli.json };
    let nofile = probe::raise_nofile();
    let machine = probe::Machine::read();
    out.info(&machine.describe(nofile));
    if cfg!(debug_assertions) {
        out.info(
            "warning: the load generator is a debug build; numbers are meaningless (use --release)",
        );
    }
    let proxy_bin = match cli.proxy_bin {
        Some(p) => p,
        None => build_proxy().await?,
    };
    let transports = if cli.transports.is_empty() {
        Transport::ALL.to_vec()
    } else {
        // Direct first: every ratio is against it.
        Transport::ALL
            .into_iter()
            .filter(|t| cli.transports.contains(t))
            .collect()
    };
    let ctx = Ctx {
        bench_exe: std::env::current_exe()?,
        proxy_bin,
        transports,
        duration: cli.duration,
        sessions: cli.sessions,
        round_trips: cli.round_trips,
        repeat: cli.repeat,
        conns: match cli.connections {
            Connections::Own => Conns::Shared,
            Connections::Reuse => Conns::Reused,
        },
        nofile,
        out,
    };

    let mut tables = Vec::new();
    if cli.smoke {
        let smoke = scenarios::smoke::run(&ctx).await;
        ctx.out.table(&smoke);
        let failed = smoke
            .rows
            .iter()
            .filter(|r| {
                let (a, b) = (format!("{} ", r.key), format!("{}:", r.key));
                smoke
                    .failures
                    .iter()
                    .any(|f| f.starts_with(&a) || f.starts_with(&b))
            })
            .count();
        // The closing line CI runners read.
        println!(
            "smoke: {} passed, {failed} failed",
            smoke.rows.len() - failed
        );
        tables.push(smoke);
    } else {
        let w = cli.scenario;
        if matches!(w, Which::All | Which::Light) {
            let light = scenarios::light::run(&ctx).await;
            ctx.out.table(&light);
            tables.push(light);
        }
        if matches!(w, Which::All | Which::Throughput | Which::Cpu) {
            let throughput = scenarios::throughput::run(&ctx).await;
            if w != Which::Cpu {
                ctx.out.table(&throughput);
            }
            let light = tables.iter().find(|t| t.scenario == "light");
            let cpu = scenarios::throughput::cpu_table(&throughput, light);
            ctx.out.table(&cpu);
            tables.push(throughput);
            tables.push(cpu);
        }
        if matches!(w, Which::All | Which::Echo) {
            let echo = scenarios::echo::run(&ctx).await;
            ctx.out.table(&echo);
            tables.push(echo);
        }
        if matches!(w, Which::All | Which::Cluster) {
            let cluster = scenarios::cluster::run(&ctx).await;
            ctx.out.table(&cluster);
            tables.push(cluster);
        }
        if matches!(w, Which::All | Which::Many) {
            let many = scenarios::many::run(&ctx).await;
            ctx.out.table(&many);
            tables.push(many);
        }
        if matches!(w, Which::All | Which::Reuse) {
            let reuse = scenarios::reuse::run(&ctx).await;
            ctx.out.table(&reuse);
            tables.push(reuse);
        }
        if matches!(w, Which::All | Which::Channel) {
            for table in scenarios::channel::run(&ctx).await {
                ctx.out.table(&table);
                tables.push(table);
            }
        }
        if w == Which::TimeToOpen {
            let opened = scenarios::time_to_open::run(&ctx).await;
            ctx.out.table(&opened);
            tables.push(opened);
        }
        ctx.out.table(&report::targets(&tables));
    }

    let failures: Vec<&String> = tables.iter().flat_map(|t| &t.failures).collect();
    let load = probe::loadavg();
    ctx.out.info(&format!("load average at the end: {load}"));
    if failures.is_empty() {
        ctx.out
            .info("correctness: every client got every frame once, in order");
        Ok(ExitCode::SUCCESS)
    } else {
        ctx.out
            .info(&format!("correctness FAILED ({}):", failures.len()));
        for f in &failures {
            ctx.out.info(&format!("  {f}"));
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Builds the release proxy and returns its path: `target/release/wsbridge`
/// in the target directory this executable was built into.
async fn build_proxy() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("bench: cargo build --release --bin wsbridge");
    let status = tokio::process::Command::new(cargo)
        .args(["build", "--release", "--bin", "wsbridge", "--manifest-path"])
        .arg(&manifest)
        .status()
        .await?;
    if !status.success() {
        fail!("cargo build --release --bin wsbridge failed ({status})");
    }
    // .../target/<profile>/examples/bench → .../target/release/wsbridge
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or("cannot find the target directory from the bench's own path")?;
    let bin = target.join("release").join("wsbridge");
    if !bin.is_file() {
        fail!(
            "{} not found after the build; pass --proxy-bin",
            bin.display()
        );
    }
    Ok(bin)
}
