//! `p2g serve`: the loop and its agents over HTTP (see the library's `server` module).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use p2g::server::{self, ServeConfig};

use super::setup::{build, LoopArgs};

#[derive(clap::Args, Debug)]
pub struct ServeCmd {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    addr: String,

    /// Let requests name images by `path`, relative to this folder (never outside it:
    /// absolute paths, `..` and links out of it are refused). Without it, uploads only.
    #[arg(long, value_name = "DIR")]
    allow_dir: Option<PathBuf>,

    /// Requests worked on at once (default: a quarter of the cores, at least 1: each
    /// request already uses every core).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,

    /// Requests that may wait for a worker; beyond them the server answers 429 with
    /// Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    queue: usize,

    /// A request's whole budget in seconds, queueing included; past it the work is cancelled
    /// and the client gets 504.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    request_timeout: u64,

    /// Largest upload (request body), in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    max_upload_mib: usize,

    /// Sessions kept for follow-up questions (the one idle longest is dropped first).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_sessions: usize,

    /// Seconds a session is kept without a question.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    session_ttl: u64,

    /// Append each session's trace to DIR/<session>.jsonl as it happens (read with `p2g
    /// trace show`).
    #[arg(long, value_name = "DIR")]
    trace_dir: Option<PathBuf>,

    /// On SIGTERM or Ctrl-C, seconds in-flight work may take before it is cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    grace: u64,

    #[command(flatten)]
    args: LoopArgs,
}

pub fn run(cmd: ServeCmd) -> Result<ExitCode> {
    let mut cfg = ServeConfig {
        allow_dir: cmd.allow_dir.clone(),
        queue: cmd.queue,
        request_timeout: Duration::from_secs(cmd.request_timeout.max(1)),
        max_body_bytes: cmd.max_upload_mib.max(1) << 20,
        max_pixels: cmd.args.max_pixels,
        token: std::env::var("P2G_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty()),
        max_sessions: cmd.max_sessions,
        session_ttl: Duration::from_secs(cmd.session_ttl.max(1)),
        trace_dir: cmd.trace_dir.clone(),
        grace: Duration::from_secs(cmd.grace),
        ..ServeConfig::default()
    };
    if let Some(n) = cmd.concurrency {
        cfg.concurrency = n.max(1);
    }
    let t0 = Instant::now();
    let orch = build(&cmd.args, p2g::orchestrator::History::Full)?;
    let loaded = t0.elapsed();
    // Sessions borrow the orchestrator for as long as the server runs: the process's life.
    let orch: &'static _ = Box::leak(Box::new(orch));
    let state = server::State::new(orch, cfg.clone()).with_context(|| match &cfg.allow_dir {
        Some(d) => format!("cannot use --allow-dir {}", d.display()),
        None => "cannot create the --trace-dir folder".to_string(),
    })?;
    state.metrics.model_loaded("all", loaded);
    let rt = super::setup::runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&cmd.addr)
            .await
            .with_context(|| format!("cannot listen on {} (pick another --addr)", cmd.addr))?;
        let addr = listener.local_addr()?;
        let agents: Vec<&str> = orch.agents().map(|a| a.name()).collect();
        eprintln!(
            "p2g serve: listening on http://{addr} (controller {}; agents {}; {} at a time, \
             queue {}; models loaded in {:.1} s{})",
            orch.controller().name(),
            if agents.is_empty() {
                "none".to_string()
            } else {
                agents.join(", ")
            },
            cfg.concurrency,
            cfg.queue,
            loaded.as_secs_f64(),
            if cfg.token.is_some() {
                "; bearer token required"
            } else {
                ""
            },
        );
        server::serve(listener, state, server::shutdown_signal())
            .await
            .context("the server stopped")?;
        eprintln!("p2g serve: stopped");
        Ok(ExitCode::SUCCESS)
    })
}
