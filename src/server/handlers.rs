//! The endpoints. Each one reads and checks its fields, takes a place from admission, then
//! runs its work in a task of its own that holds that place until the work has really
//! stopped (a cancelled question finishes its current step first).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State as Shared};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::form::Form;
use super::{ServeError, State};
use crate::agents::{Caller, Capability};
use crate::controller::StepContext;
use crate::orchestrator::AskOptions;
use crate::trace::{TraceEvent, TraceSink};
use crate::vision::{Image, LoadOptions};

pub fn router(state: Arc<State>) -> Router {
    let limit = state.cfg.max_body_bytes;
    let protected = Router::new()
        .route("/v1/ask", post(ask))
        .route("/v1/ocr", post(ocr))
        .route("/v1/detect", post(detect))
        .route("/v1/sessions/{id}/trace", get(trace))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), bearer));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(protected)
        .fallback(|| async {
            ServeError::BadRequest(
                "no such endpoint; see POST /v1/ask, /v1/ocr, /v1/detect, GET \
                 /v1/sessions/{id}/trace, /healthz, /metrics"
                    .into(),
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Refuses requests without the server's token, when it has one.
async fn bearer(
    Shared(st): Shared<Arc<State>>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(token) = &st.cfg.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), token.as_bytes()) {
            return ServeError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs `work`, counts its status and time in the metrics.
async fn counted(
    st: &State,
    endpoint: &'static str,
    work: impl std::future::Future<Output = Result<Response, ServeError>>,
) -> Response {
    let t0 = Instant::now();
    let r = match work.await {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(endpoint, error = %crate::error_line(&e), "request failed");
            }
            e.into_response()
        }
    };
    st.metrics
        .request(endpoint, r.status().as_u16(), t0.elapsed());
    r
}

async fn healthz(Shared(st): Shared<Arc<State>>) -> Response {
    let stopping = st.stopping.load(std::sync::atomic::Ordering::SeqCst);
    let body = json!({
        "status": if stopping { "stopping" } else { "ok" },
        "controller": st.orch.controller().name(),
        "agents": st.orch.agents().map(|a| a.name()).collect::<Vec<_>>(),
        "sessions": st.sessions.len(),
    });
    let code = if stopping {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

async fn metrics(Shared(st): Shared<Arc<State>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.sessions.len()),
    )
        .into_response()
}

fn check_running(st: &State) -> Result<(), ServeError> {
    if st.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        Err(ServeError::ShuttingDown)
    } else {
        Ok(())
    }
}

/// The request's image: its upload, or the file `path` names under --allow-dir; decoded on
/// a blocking thread (a large photo takes a while), its header checked against the pixel
/// limit before anything is decoded.
async fn image_of(st: &Arc<State>, form: &mut Form) -> Result<(Image, String), ServeError> {
    let (bytes, name) = match (form.image.take(), form.get("path")) {
        (Some(_), Some(_)) => {
            return Err(ServeError::BadRequest(
                "send either an `image` upload or a `path`, not both".into(),
            ))
        }
        (Some((bytes, name)), None) => (bytes, name),
        (None, Some(path)) => {
            let allow = st.allow.clone().ok_or(super::PathError::Disabled)?;
            let (rel, limit) = (path.to_string(), st.cfg.max_body_bytes as u64);
            let bytes = tokio::task::spawn_blocking(move || allow.read(&rel, limit))
                .await
                .map_err(|e| ServeError::Internal(e.to_string()))??;
            (bytes, path.to_string())
        }
        (None, None) => {
            return Err(ServeError::BadRequest(
                "no image: upload one as the multipart field `image`, or name a file under \
                 --allow-dir in `path`"
                    .into(),
            ))
        }
    };
    let opts = LoadOptions {
        max_pixels: st.cfg.max_pixels,
    };
    let shown = name.clone();
    let image = tokio::task::spawn_blocking(move || Image::decode(&bytes, &shown, &opts))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))??;
    Ok((image, name))
}

async fn ask(Shared(st): Shared<Arc<State>>, req: Request) -> Response {
    counted(&st.clone(), "ask", ask_inner(st, req)).await
}

async fn ask_inner(st: Arc<State>, req: Request) -> Result<Response, ServeError> {
    check_running(&st)?;
    let deadline = Instant::now() + st.cfg.request_timeout;
    let mut form = Form::read(
        req,
        &["image", "path", "question", "region", "session"],
        st.cfg.max_body_bytes,
    )
    .await?;
    let question = form
        .get("question")
        .ok_or_else(|| ServeError::BadRequest("missing the field `question`".into()))?
        .to_string();
    let region = form.region()?;
    let ticket = st.admission.admit(st.cfg.request_timeout).await?;
    let entry = match form.get("session").map(str::to_string) {
        Some(id) => {
            if form.image.is_some() || form.get("path").is_some() {
                return Err(ServeError::BadRequest(
                    "a follow-up asks about its session's image: send `session` or an image, \
                     not both"
                        .into(),
                ));
            }
            st.sessions.get(&id).ok_or(ServeError::NoSession(id))?
        }
        None => {
            let (image, name) = image_of(&st, &mut form).await?;
            let mut session = st.orch.session(image, Path::new(&name));
            let id = super::sessions::new_id();
            if let Some(dir) = &st.cfg.trace_dir {
                let path = dir.join(format!("{id}.jsonl"));
                let sink = TraceSink::to_file(&path).map_err(|e| {
                    ServeError::Internal(format!(
                        "cannot open the trace file {}: {e}",
                        path.display()
                    ))
                })?;
                session.set_trace(sink);
            }
            st.sessions.insert(id, session)
        }
    };
    let guard = entry
        .session
        .clone()
        .try_lock_owned()
        .map_err(|_| ServeError::SessionBusy)?;
    let cancel = st.track();
    let flag = cancel.flag.clone();
    let metrics = st.metrics.clone();
    let task = tokio::spawn(async move {
        let _ticket = ticket;
        let mut session = guard;
        let before = session.trace().len();
        let opts = AskOptions {
            region,
            ctx: StepContext {
                on_text: None,
                cancel: flag,
            },
        };
        let answer = session.ask(&question, opts).await;
        for e in &session.trace()[before.min(session.trace().len())..] {
            if let TraceEvent::Tool {
                agent, elapsed_ms, ..
            } = e
            {
                metrics.agent(agent, Duration::from_secs_f64(elapsed_ms / 1e3));
            }
        }
        answer
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let answer = match tokio::time::timeout(left, task).await {
        Err(_) => return Err(ServeError::Timeout(st.cfg.request_timeout.as_secs())),
        Ok(Err(e)) => {
            return Err(ServeError::Internal(format!(
                "the question's task failed: {e}"
            )))
        }
        Ok(Ok(r)) => r?,
    };
    drop(cancel);
    entry.touch();
    let mut body =
        serde_json::to_value(&answer).map_err(|e| ServeError::Internal(e.to_string()))?;
    if let Some(o) = body.as_object_mut() {
        o.insert("session".into(), json!(entry.id));
    }
    Ok(Json(body).into_response())
}

async fn trace(Shared(st): Shared<Arc<State>>, UrlPath(id): UrlPath<String>) -> Response {
    counted(&st.clone(), "trace", async move {
        let entry = st
            .sessions
            .get(&id)
            .ok_or_else(|| ServeError::NoSession(id.clone()))?;
        let session = entry
            .session
            .try_lock()
            .map_err(|_| ServeError::SessionBusy)?;
        Ok(Json(json!({
            "session": id,
            "image": session.image_path(),
            "events": session.trace(),
        }))
        .into_response())
    })
    .await
}

/// Runs one agent on the request's image, through the same tool set the loop calls.
async fn run_agent(
    st: Arc<State>,
    form: &mut Form,
    agent: String,
    args: serde_json::Value,
) -> Result<Response, ServeError> {
    let deadline = Instant::now() + st.cfg.request_timeout;
    let ticket = st.admission.admit(st.cfg.request_timeout).await?;
    let (image, _) = image_of(&st, form).await?;
    let cancel = st.track();
    let flag = cancel.flag.clone();
    let (w, h) = (image.width(), image.height());
    let orch = st.orch;
    let name = agent.clone();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let t0 = Instant::now();
    let task = tokio::spawn(async move {
        let _ticket = ticket;
        orch.tools()
            .call(&name, Caller::Loop, &image, args, timeout, &flag)
            .await
    });
    let reply = match task.await {
        Err(e) => {
            return Err(ServeError::Internal(format!(
                "the agent's task failed: {e}"
            )))
        }
        Ok(Err(outcome)) => return Err(ServeError::from_outcome(&agent, outcome)),
        Ok(Ok(r)) => r,
    };
    drop(cancel);
    st.metrics.agent(&agent, t0.elapsed());
    Ok(Json(json!({
        "width": w,
        "height": h,
        "elapsed_ms": t0.elapsed().as_millis() as u64,
        "findings": reply.findings,
        "output": reply.output,
    }))
    .into_response())
}

async fn ocr(Shared(st): Shared<Arc<State>>, req: Request) -> Response {
    counted(&st.clone(), "ocr", async move {
        check_running(&st)?;
        let mut form = Form::read(
            req,
            &["image", "path", "region", "zoom"],
            st.cfg.max_body_bytes,
        )
        .await?;
        let agent = st
            .orch
            .tools()
            .with_capability(Capability::Text)
            .ok_or(ServeError::NoAgent("OCR"))?
            .name()
            .to_string();
        let mut args = serde_json::Map::new();
        if let Some(r) = form.region()? {
            args.insert("region".into(), json!([r.x1, r.y1, r.x2, r.y2]));
        }
        if let Some(z) = form.get("zoom") {
            let z = z.trim();
            let v = z
                .parse::<f64>()
                .map(|n| json!(n))
                .unwrap_or_else(|_| json!(z));
            args.insert("zoom".into(), v);
        }
        run_agent(st, &mut form, agent, serde_json::Value::Object(args)).await
    })
    .await
}

async fn detect(Shared(st): Shared<Arc<State>>, req: Request) -> Response {
    counted(&st.clone(), "detect", async move {
        check_running(&st)?;
        let mut form = Form::read(
            req,
            &["image", "path", "objects", "region"],
            st.cfg.max_body_bytes,
        )
        .await?;
        let agent = st
            .orch
            .tools()
            .with_capability(Capability::Objects)
            .ok_or(ServeError::NoAgent("object detection"))?
            .name()
            .to_string();
        let objects = form
            .get("objects")
            .ok_or_else(|| {
                ServeError::BadRequest(
                    "missing the field `objects` (e.g. \"red car, street sign\")".into(),
                )
            })?
            .to_string();
        let objects = match serde_json::from_str::<serde_json::Value>(&objects) {
            Ok(list @ serde_json::Value::Array(_)) => list,
            _ => json!(objects),
        };
        let mut args = serde_json::Map::new();
        args.insert("objects".into(), objects);
        if let Some(r) = form.region()? {
            args.insert("region".into(), json!([r.x1, r.y1, r.x2, r.y2]));
        }
        run_agent(st, &mut form, agent, serde_json::Value::Object(args)).await
    })
    .await
}
