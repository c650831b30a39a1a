//! `p2g serve`: the grounding loop and its agents over HTTP, for apps in other languages and
//! for teams sharing one machine.
//!
//! ```text
//! POST /v1/ask     image (upload, or `path` under --allow-dir) + question [+ region, session]
//! POST /v1/ocr     image + [region, zoom]             → the OCR agent's lines
//! POST /v1/detect  image + objects [+ region]         → the detector's boxes
//! GET  /v1/sessions/{id}/trace                        → every step of a session
//! GET  /healthz    GET /metrics (Prometheus text)
//! ```
//!
//! Models load once and are shared by every request. Work is admitted by [`admission`]: a
//! few requests at a time (the cores are the limit), a bounded queue, and 429 with
//! `Retry-After` beyond it, so an overloaded server answers at once instead of hanging. Each
//! request has a deadline; a client that hangs up cancels its question (the loop stops at its
//! next check, the session stays whole). On SIGTERM the server stops accepting, gives
//! in-flight work `grace` to finish, then cancels it; traces are written as they happen, so
//! none is lost.

pub mod admission;
mod form;
mod handlers;
pub mod metrics;
pub mod paths;
pub mod sessions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::agents::CallOutcome;
use crate::orchestrator::{Orchestrator, OrchestratorError};
use crate::vision::VisionError;

pub use paths::{AllowDir, PathError};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Images may be read by path only under this folder; `None`: uploads only.
    pub allow_dir: Option<PathBuf>,
    /// Requests worked on at once.
    pub concurrency: usize,
    /// Requests that may wait for a worker; more get 429.
    pub queue: usize,
    /// A request's whole budget: waiting in the queue, then working.
    pub request_timeout: Duration,
    /// Largest request body (an uploaded image), bytes.
    pub max_body_bytes: usize,
    /// Largest image, pixels (after the header is read, before anything is decoded).
    pub max_pixels: u64,
    /// `Authorization: Bearer TOKEN` required on everything but `/healthz`.
    pub token: Option<String>,
    /// Sessions held for follow-ups; the one idle longest goes first.
    pub max_sessions: usize,
    pub session_ttl: Duration,
    /// Each session's trace is also appended here as `<session id>.jsonl`.
    pub trace_dir: Option<PathBuf>,
    /// On shutdown, how long in-flight work may take before it is cancelled.
    pub grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            allow_dir: None,
            // Each request already uses every core (ONNX Runtime and the controller's kernels
            // are threaded): a second one at a time only splits them; more just wait.
            concurrency: (cores / 4).max(1),
            queue: 16,
            request_timeout: Duration::from_secs(120),
            max_body_bytes: 32 << 20,
            max_pixels: crate::vision::DEFAULT_MAX_PIXELS,
            token: None,
            max_sessions: 64,
            session_ttl: Duration::from_secs(30 * 60),
            trace_dir: None,
            grace: Duration::from_secs(30),
        }
    }
}

/// Errors a request can end in; each has its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token (Authorization: Bearer $P2G_TOKEN)")]
    Unauthorized,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Image(#[from] VisionError),
    #[error("no session {0:?} (it may have expired); ask without `session` to start one")]
    NoSession(String),
    #[error("the session is answering another question; ask again when it has finished")]
    SessionBusy,
    #[error("the request is too large: {0}")]
    TooLarge(String),
    #[error("the server is busy; retry in {retry_after} s")]
    Overloaded { retry_after: u64 },
    #[error("the request took longer than the server's {0} s limit and was cancelled")]
    Timeout(u64),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("no {0} agent is loaded on this server")]
    NoAgent(&'static str),
    #[error("{agent}: {message}")]
    Agent {
        agent: String,
        message: String,
        status: StatusCode,
    },
    #[error(transparent)]
    Ask(#[from] OrchestratorError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        use OrchestratorError as O;
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Path(PathError::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::Path(PathError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Path(PathError::Io { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Path(PathError::Empty) => StatusCode::BAD_REQUEST,
            Self::Path(_) => StatusCode::FORBIDDEN,
            Self::Image(VisionError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Image(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NoSession(_) => StatusCode::NOT_FOUND,
            Self::SessionBusy => StatusCode::CONFLICT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown | Self::Ask(O::Cancelled) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoAgent(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Agent { status, .. } => *status,
            Self::Ask(
                O::EmptyQuestion
                | O::BadRegion(..)
                | O::QuestionTooLong { .. }
                | O::ControlCharacter(_),
            ) => StatusCode::BAD_REQUEST,
            // The controller model failed (its output stayed unusable): an upstream part of
            // the server, not the client's request.
            Self::Ask(O::Unusable { .. } | O::NoAnswer { .. }) => StatusCode::BAD_GATEWAY,
            Self::Ask(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable name of the error.
    pub fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "busy",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNPROCESSABLE_ENTITY => "bad_image",
            StatusCode::TOO_MANY_REQUESTS => "overloaded",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::NOT_IMPLEMENTED => "not_loaded",
            StatusCode::BAD_GATEWAY => "controller_failed",
            _ => "internal",
        }
    }

    /// An agent call that did not end in a reply.
    fn from_outcome(agent: &str, outcome: CallOutcome) -> Self {
        let status = match &outcome {
            CallOutcome::Failed(crate::agents::AgentError::Arguments { .. }) => {
                StatusCode::BAD_REQUEST
            }
            CallOutcome::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            CallOutcome::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            CallOutcome::UnknownTool { .. } => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::Agent {
            agent: agent.to_string(),
            message: outcome.summary(agent),
            status,
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": crate::error_line(&self),
            "kind": self.kind(),
        });
        let mut r = (self.status(), Json(body)).into_response();
        if let Self::Overloaded { retry_after } = self {
            if let Ok(v) = retry_after.to_string().parse() {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// What every request shares.
pub struct State {
    pub orch: &'static Orchestrator,
    pub cfg: ServeConfig,
    allow: Option<AllowDir>,
    pub sessions: sessions::Sessions,
    pub metrics: Arc<metrics::Metrics>,
    admission: Arc<admission::Admission>,
    /// Cancel flags of the work in flight (by a request number), so shutdown can stop it.
    in_flight: Mutex<std::collections::HashMap<u64, Arc<AtomicBool>>>,
    next_request: AtomicU64,
    stopping: AtomicBool,
}

impl State {
    /// The orchestrator is borrowed for the life of the process: sessions outlive requests.
    pub fn new(orch: &'static Orchestrator, cfg: ServeConfig) -> std::io::Result<Arc<Self>> {
        let allow = cfg.allow_dir.as_deref().map(AllowDir::new).transpose()?;
        if let Some(dir) = &cfg.trace_dir {
            std::fs::create_dir_all(dir)?;
        }
        let metrics = Arc::new(metrics::Metrics::default());
        Ok(Arc::new(Self {
            orch,
            sessions: sessions::Sessions::new(cfg.max_sessions, cfg.session_ttl),
            admission: admission::Admission::new(cfg.concurrency, cfg.queue, metrics.clone()),
            metrics,
            allow,
            cfg,
            in_flight: Mutex::new(Default::default()),
            next_request: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        }))
    }

    /// Registers a cancel flag for the life of the returned guard; dropping the guard (the
    /// request ended, or its client hung up) sets the flag.
    fn track(self: &Arc<Self>) -> CancelOnDrop {
        let flag = Arc::new(AtomicBool::new(false));
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(id, flag.clone());
        }
        CancelOnDrop {
            flag,
            id,
            state: self.clone(),
        }
    }

    /// Stops taking work and cancels what is in flight.
    pub fn cancel_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Ok(m) = self.in_flight.lock() {
            for f in m.values() {
                f.store(true, Ordering::SeqCst);
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A request's cancel flag, set when the request's future is dropped.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    id: u64,
    state: Arc<State>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Ok(mut m) = self.state.in_flight.lock() {
            m.remove(&self.id);
        }
    }
}

/// The routes, with the body limit and the bearer-token check.
pub fn router(state: Arc<State>) -> axum::Router {
    handlers::router(state)
}

/// Serves until `shutdown` resolves, then drains: in-flight requests get `grace`, then are
/// cancelled (they answer 503), and the function returns once every request has ended.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stopper = state.clone();
    let grace = state.cfg.grace;
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new requests; in-flight work has {grace:?}");
        stopper.stopping.store(true, Ordering::SeqCst);
        let _ = tx.send(());
    };
    let app = router(state.clone());
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal);
    let canceller = {
        let state = state.clone();
        async move {
            if rx.await.is_err() {
                return;
            }
            let deadline = tokio::time::Instant::now() + grace;
            while state.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if state.in_flight() > 0 {
                tracing::warn!("cancelling {} requests still in flight", state.in_flight());
                state.cancel_all();
            }
        }
    };
    let (served, ()) = tokio::join!(server, canceller);
    served
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
