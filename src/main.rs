//! The `wsbridge` binary: flags, logging, configuration, bind, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use wsbridge::AppState;
use wsbridge::config::{Config, Overrides};
use wsbridge::net;

/// Re-exposes WebSocket backends to browsers over plain HTTP (SSE, NDJSON,
/// long-poll) and passes all other traffic through.
#[derive(Parser)]
#[command(version, about)]
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WSBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
