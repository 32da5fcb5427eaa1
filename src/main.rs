//! The `wsbridge` binary: flags, logging, configuration, bind, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use wsbridge::AppState;
use wsbridge::config::{Config, Overrides};
use wsbridge::net;

mod health;

/// `wsbridge --version`: the crate version and the git commit it was built
/// from (build.rs; "unknown" outside a checkout without WSBRIDGE_GIT_COMMIT).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WSBRIDGE_GIT_COMMIT"),
    ")"
);

/// Re-exposes WebSocket backends to browsers over plain HTTP (SSE, NDJSON,
/// long-poll) and passes all other traffic through.
#[derive(Parser)]
#[command(version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(clap::Args)]
struct Opts {
    /// The TOML configuration file.
    #[arg(long, global = true, env = "WSBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding server.listen.
    #[arg(long, global = true, env = "WSBRIDGE_LISTEN")]
    listen: Option<String>,
    /// Upstream URL, overriding upstream.url.
    #[arg(long, global = true, env = "WSBRIDGE_UPSTREAM")]
    upstream: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WSBRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print the effective one.
    Check,
    /// Exit 0 if {prefix}/healthz answers 200 (admin listener if configured).
    Health(health::HealthArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.opts.listen.clone(),
        upstream: cli.opts.upstream.clone(),
        cluster_advertise: None,
    };
    if let Some(Command::Health(args)) = &cli.command {
        return health::main(args, cli.opts.config.as_deref(), &overrides);
    }
    let config = match Config::load(cli.opts.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsbridge: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in config.warnings() {
        eprintln!("wsbridge: warning: {warning}");
    }
    if let Some(Command::Check) = cli.command {
        // The verdict on stderr, so stdout is the effective configuration
        // alone and loads as it is (`wsbridge check > effective.toml`).
        eprintln!("ok");
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(cli.opts.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsbridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsbridge: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> std::io::Result<()> {
    let listen = config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let admin = config.admin.clone();
    let state = AppState::new(config)?;
    let tls = net::Tls::load(&state.config)?;
    if let Some(admin) = admin {
        let listener = TcpListener::bind(admin.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", admin.listen))
        })?;
        tracing::info!(addr = %admin.listen, "admin listener");
        tokio::spawn(net::serve_admin(listener, Arc::clone(&state)));
    }
    if let Some(cluster) = &state.config.cluster {
        let listener = TcpListener::bind(cluster.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", cluster.listen),
            )
        })?;
        tracing::info!(addr = %cluster.listen, advertise = %cluster.advertise, "cluster listener");
        tokio::spawn(net::serve_internal(listener, Arc::clone(&state)));
    }
    net::reload_on_sighup(Arc::clone(&tls));
    tracing::info!(addr = %listener.local_addr()?, upstream = %state.config.upstream.url, "listening");
    net::serve_with_tls(listener, state, tls, wsbridge::shutdown::terminate()).await
}

/// Crates whose debug and trace output holds what must never reach a log:
/// tungstenite prints frames (payloads) and handshake requests (cookies,
/// `Authorization`, the query), hyper and h2 print headers, rustls
/// prints handshake details, OpenTelemetry's debug lines are per export.
/// They are capped at `info` whatever `WSBRIDGE_LOG` says, even a
/// directive naming them.
const CAPPED_TARGETS: [&str; 11] = [
    "tungstenite",
    "tokio_tungstenite",
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "tokio_rustls",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry-otlp",
    "opentelemetry-http",
];

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, fmt};

    let wanted = EnvFilter::try_from_env("WSBRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = CAPPED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, name| t.with_target(*name, LevelFilter::INFO),
    );
    let filter = wanted.and(cap);
    let layer = match format {
        // Colours only for a person at a terminal, never into a file or a
        // log pipeline.
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}
