//! The HTTP side of `--controller openai`: one chat-completions request, streamed or not,
//! with the timeouts, retries and errors a person can act on.
//!
//! Servers differ in everything but the request shape. llama.cpp's server answers 500 for a
//! prompt over its context, Ollama 404 with "try pulling it first" for a model it lacks, vLLM
//! 404 "does not exist", hosted APIs 429 with `Retry-After`. So the status decides what is
//! retried (429, 5xx, a refused or reset connection: a server starting or restarting), and the
//! body only adds words to the one-line error. A reply is read chunk by chunk under an idle
//! timeout (a server that stops sending is caught even while it keeps the socket open), and
//! the caller's cancel flag is polled between chunks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

/// How the client talks to the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The API root, e.g. `http://127.0.0.1:8080/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Time to open the connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a reply (the first token of a long prompt included).
    pub read_timeout: Duration,
    /// Retries after a 429, a 5xx or a connection that failed; each waits `Retry-After` or
    /// 0.5 s doubling, at most [`MAX_RETRY_WAIT`].
    pub max_retries: u32,
}

impl ClientConfig {
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            max_retries: 3,
        }
    }
}

/// The longest wait between two tries, whatever `Retry-After` asks.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

/// Bytes of an error body quoted in a message.
const QUOTE: usize = 200;

/// Errors of the API client. Each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "--base-url {url:?} is not a usable URL ({reason}); it looks like http://127.0.0.1:8080/v1"
    )]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {url}: {reason} (is the server running? check --base-url)")]
    Connect { url: String, reason: String },
    #[error("{url} sent nothing for {secs} s (raise --read-timeout for slow models)")]
    Timeout { url: String, secs: u64 },
    #[error("{url} refused the request with {status}: {message} (set P2G_API_KEY or OPENAI_API_KEY to a key it accepts)")]
    Unauthorized {
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "the server does not serve the model {model:?}: {message}{}",
        served_list(served)
    )]
    UnknownModel {
        model: String,
        message: String,
        served: Vec<String>,
    },
    #[error("{url} has no chat-completions endpoint (404; does --base-url end in /v1?)")]
    NoEndpoint { url: String },
    #[error("{url} answered {status} after {tries} tries: {message}")]
    Status {
        url: String,
        status: u16,
        tries: u32,
        message: String,
    },
    #[error("{url} answered with a body that is not the API's JSON ({reason}): {quote:?}")]
    BadBody {
        url: String,
        reason: String,
        quote: String,
    },
    #[error("the reply from {url} was cut off after {bytes} bytes ({reason}); the server may have stopped")]
    Truncated {
        url: String,
        bytes: usize,
        reason: String,
    },
    #[error("the request was cancelled")]
    Cancelled,
}

fn served_list(served: &[String]) -> String {
    if served.is_empty() {
        String::new()
    } else {
        format!(" (it serves: {})", served.join(", "))
    }
}

/// One tool call of a reply, its arguments as the server wrote them (a JSON string).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// The assistant's message of a reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
}

/// A chat-completions client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, ApiError> {
        let bad = |reason: String| ApiError::BadUrl {
            url: cfg.base_url.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&cfg.base_url).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "the scheme is {:?}, not http or https",
                url.scheme()
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("p2g/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(chain(&e)))?;
        Ok(Self { http, cfg })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.cfg.base_url)
    }

    /// The model ids the server lists (`GET /models`), for error messages and `--model` help.
    pub async fn models(&self) -> Result<Vec<String>, ApiError> {
        let url = self.url("models");
        let mut req = self.http.get(&url);
        if let Some(k) = &self.cfg.api_key {
            req = req.bearer_auth(k);
        }
        let resp = tokio::time::timeout(self.cfg.read_timeout, req.send())
            .await
            .map_err(|_| self.timeout(&url))?
            .map_err(|e| transport(&url, &e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| transport(&url, &e))?;
        if status != 200 {
            return Err(ApiError::Status {
                url,
                status,
                tries: 1,
                message: error_message(&body),
            });
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| bad_body(&url, &e, &body))?;
        Ok(v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Sends `body` to `/chat/completions` (with `stream` set as asked), retrying what may
    /// pass, and reads the reply. `on_delta` receives content text as it streams.
    pub async fn chat(
        &self,
        body: &Value,
        stream: bool,
        on_delta: &mut (dyn FnMut(&str) + Send),
        cancel: &AtomicBool,
    ) -> Result<Reply, ApiError> {
        let url = self.url("chat/completions");
        let mut body = body.clone();
        body["stream"] = Value::Bool(stream);
        let mut tries = 0;
        loop {
            tries += 1;
            if cancel.load(Ordering::Relaxed) {
                return Err(ApiError::Cancelled);
            }
            let mut req = self.http.post(&url).json_body(&body);
            if let Some(k) = &self.cfg.api_key {
                req = req.bearer_auth(k);
            }
            let sent = cancellable(cancel, self.cfg.read_timeout, req.send()).await;
            let resp = match sent {
                Err(Waited::Cancelled) => return Err(ApiError::Cancelled),
                Err(Waited::TimedOut) => return Err(self.timeout(&url)),
                Ok(Err(e)) if retryable_transport(&e) && tries <= self.cfg.max_retries => {
                    tracing::warn!(try_ = tries, "{}; retrying", transport(&url, &e));
                    self.pause(backoff(tries), cancel).await?;
                    continue;
                }
                Ok(Err(e)) => return Err(transport(&url, &e)),
                Ok(Ok(r)) => r,
            };
            let status = resp.status().as_u16();
            if status == 200 {
                return if stream {
                    self.read_stream(&url, resp, on_delta, cancel).await
                } else {
                    let bytes = self.read_all(&url, resp, cancel).await?;
                    parse_reply(&url, &bytes)
                };
            }
            let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(tries));
            let bytes = self.read_all(&url, resp, cancel).await.unwrap_or_default();
            let message = error_message(&bytes);
            if (status == 429 || status >= 500) && tries <= self.cfg.max_retries {
                tracing::warn!(status, try_ = tries, %message, "retrying in {wait:?}");
                self.pause(wait, cancel).await?;
                continue;
            }
            return Err(self.status_error(&url, &body, status, tries, message).await);
        }
    }

    async fn status_error(
        &self,
        url: &str,
        body: &Value,
        status: u16,
        tries: u32,
        message: String,
    ) -> ApiError {
        match status {
            401 | 403 => ApiError::Unauthorized {
                url: url.to_string(),
                status,
                message,
            },
            404 | 400 if mentions_model(&message) => ApiError::UnknownModel {
                model: body["model"].as_str().unwrap_or_default().to_string(),
                message,
                served: self.models().await.unwrap_or_default(),
            },
            404 => ApiError::NoEndpoint {
                url: url.to_string(),
            },
            _ => ApiError::Status {
                url: url.to_string(),
                status,
                tries,
                message,
            },
        }
    }

    fn timeout(&self, url: &str) -> ApiError {
        ApiError::Timeout {
            url: url.to_string(),
            secs: self.cfg.read_timeout.as_secs(),
        }
    }

    async fn pause(&self, wait: Duration, cancel: &AtomicBool) -> Result<(), ApiError> {
        let wait = wait.min(MAX_RETRY_WAIT);
        match cancellable(
            cancel,
            wait + Duration::from_secs(1),
            tokio::time::sleep(wait),
        )
        .await
        {
            Err(Waited::Cancelled) => Err(ApiError::Cancelled),
            _ => Ok(()),
        }
    }

    async fn read_all(
        &self,
        url: &str,
        mut resp: reqwest::Response,
        cancel: &AtomicBool,
    ) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::new();
        loop {
            match cancellable(cancel, self.cfg.read_timeout, resp.chunk()).await {
                Err(Waited::Cancelled) => return Err(ApiError::Cancelled),
                Err(Waited::TimedOut) => return Err(self.timeout(url)),
                Ok(Ok(Some(c))) => out.extend_from_slice(&c),
                Ok(Ok(None)) => return Ok(out),
                Ok(Err(e)) => {
                    return Err(ApiError::Truncated {
                        url: url.to_string(),
                        bytes: out.len(),
                        reason: chain(&e),
                    })
                }
            }
        }
    }

    async fn read_stream(
        &self,
        url: &str,
        mut resp: reqwest::Response,
        on_delta: &mut (dyn FnMut(&str) + Send),
        cancel: &AtomicBool,
    ) -> Result<Reply, ApiError> {
        let mut events = SseBuffer::default();
        let mut acc = StreamAccumulator::default();
        let mut received = 0;
        loop {
            let chunk = match cancellable(cancel, self.cfg.read_timeout, resp.chunk()).await {
                Err(Waited::Cancelled) => return Err(ApiError::Cancelled),
                Err(Waited::TimedOut) => return Err(self.timeout(url)),
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(ApiError::Truncated {
                        url: url.to_string(),
                        bytes: received,
                        reason: chain(&e),
                    })
                }
            };
            let Some(chunk) = chunk else {
                return acc.finish().ok_or_else(|| ApiError::Truncated {
                    url: url.to_string(),
                    bytes: received,
                    reason: "the stream ended before [DONE] or a finish reason".into(),
                });
            };
            received += chunk.len();
            for data in events.push(&chunk) {
                if data == "[DONE]" {
                    acc.done = true;
                    continue;
                }
                let v: Value =
                    serde_json::from_str(&data).map_err(|e| bad_body(url, &e, data.as_bytes()))?;
                if v.get("error").is_some() {
                    return Err(ApiError::Status {
                        url: url.to_string(),
                        status: 200,
                        tries: 1,
                        message: error_message(data.as_bytes()),
                    });
                }
                if let Some(text) = acc.add(&v) {
                    on_delta(&text);
                }
            }
            if acc.done {
                return acc.finish().ok_or_else(|| ApiError::Truncated {
                    url: url.to_string(),
                    bytes: received,
                    reason: "[DONE] came before any choice".into(),
                });
            }
        }
    }
}

/// `RequestBuilder::json` needs reqwest's `json` feature (and its serde_json again); the body
/// is written here instead.
trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(v.to_string())
    }
}

enum Waited {
    Cancelled,
    TimedOut,
}

/// Runs `fut` until it ends, `limit` passes, or `cancel` is set (polled every 50 ms).
async fn cancellable<F: std::future::Future>(
    cancel: &AtomicBool,
    limit: Duration,
    fut: F,
) -> Result<F::Output, Waited> {
    let watch = async {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        out = tokio::time::timeout(limit, fut) => out.map_err(|_| Waited::TimedOut),
        _ = watch => Err(Waited::Cancelled),
    }
}

fn backoff(tries: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << tries.saturating_sub(1).min(7)))
}

/// `Retry-After` in seconds (the HTTP-date form falls back to the backoff).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

/// A refused or reset connection is worth another try (a server starting or restarting);
/// a wrong host name is not.
fn retryable_transport(e: &reqwest::Error) -> bool {
    let text = chain(e).to_ascii_lowercase();
    (e.is_connect() || e.is_request())
        && !text.contains("dns")
        && !text.contains("failed to lookup")
        && !text.contains("invalid")
}

fn transport(url: &str, e: &reqwest::Error) -> ApiError {
    if e.is_builder() {
        return ApiError::BadUrl {
            url: url.to_string(),
            reason: chain(e),
        };
    }
    ApiError::Connect {
        url: url.to_string(),
        reason: root_cause(e),
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error_line(e)
}

/// The innermost cause ("Connection refused (os error 111)"): what a person can act on.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        last = c.to_string();
        cur = c.source();
    }
    last
}

fn mentions_model(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("model")
        && (m.contains("not found")
            || m.contains("does not exist")
            || m.contains("unknown")
            || m.contains("pull"))
}

/// At most [`QUOTE`] characters of a body, on one line.
fn quote(bytes: &[u8]) -> String {
    crate::one_line(&String::from_utf8_lossy(bytes), QUOTE)
}

fn bad_body(url: &str, e: &serde_json::Error, bytes: &[u8]) -> ApiError {
    if e.is_eof() {
        return ApiError::Truncated {
            url: url.to_string(),
            bytes: bytes.len(),
            reason: format!("the JSON ends early: {e}"),
        };
    }
    ApiError::BadBody {
        url: url.to_string(),
        reason: e.to_string(),
        quote: quote(bytes),
    }
}

/// The message of an error body: OpenAI's `{"error": {"message"}}`, Ollama's `{"error": "…"}`,
/// vLLM's `{"message"}`, FastAPI's `{"detail"}`, or the text itself.
fn error_message(bytes: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        let q = quote(bytes);
        return if q.is_empty() {
            "(empty body)".into()
        } else {
            q
        };
    };
    let pick = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(_) => v["message"].as_str().map(str::to_string),
            Value::Array(a) => a
                .first()
                .and_then(|d| d["msg"].as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    pick(&v["error"])
        .or_else(|| pick(&v["message"]))
        .or_else(|| pick(&v["detail"]))
        .map(|m| crate::one_line(&m, QUOTE))
        .unwrap_or_else(|| quote(bytes))
}

/// A whole (not streamed) chat-completions body.
pub fn parse_reply(url: &str, bytes: &[u8]) -> Result<Reply, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad_body(url, &e, bytes))?;
    let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) else {
        return Err(ApiError::BadBody {
            url: url.to_string(),
            reason: "no \"choices\"".into(),
            quote: quote(bytes),
        });
    };
    let msg = &choice["message"];
    let tool_calls = msg["tool_calls"]
        .as_array()
        .map(|calls| calls.iter().map(tool_call).collect())
        .unwrap_or_default();
    Ok(Reply {
        content: msg["content"].as_str().unwrap_or_default().to_string(),
        tool_calls,
        finish_reason: choice["finish_reason"].as_str().map(str::to_string),
        prompt_tokens: v["usage"]["prompt_tokens"].as_u64().map(|n| n as usize),
        completion_tokens: v["usage"]["completion_tokens"].as_u64().map(|n| n as usize),
    })
}

fn tool_call(c: &Value) -> ToolCall {
    let f = &c["function"];
    ToolCall {
        id: c["id"].as_str().unwrap_or_default().to_string(),
        name: f["name"].as_str().unwrap_or_default().to_string(),
        // Some servers send the arguments as an object rather than the API's string.
        arguments: match &f["arguments"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        },
    }
}

/// Server-sent events: the `data:` payloads of the complete events received so far.
#[derive(Default)]
struct SseBuffer {
    pending: Vec<u8>,
}

impl SseBuffer {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + sep).collect();
            let text = String::from_utf8_lossy(&event[..end]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

/// Where the first event ends, and the separator's length (`\n\n` or `\r\n\r\n`).
fn event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

/// A streamed reply put back together: content deltas appended, tool-call fragments joined
/// by their index.
#[derive(Default)]
struct StreamAccumulator {
    reply: Reply,
    started: bool,
    done: bool,
}

impl StreamAccumulator {
    /// Adds one chunk; returns its content text.
    fn add(&mut self, v: &Value) -> Option<String> {
        if let Some(n) = v["usage"]["prompt_tokens"].as_u64() {
            self.reply.prompt_tokens = Some(n as usize);
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            self.reply.completion_tokens = Some(n as usize);
        }
        let choice = v["choices"].as_array()?.first()?;
        self.started = true;
        if let Some(r) = choice["finish_reason"].as_str() {
            self.reply.finish_reason = Some(r.to_string());
        }
        let delta = &choice["delta"];
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0).min(64) as usize;
            while self.reply.tool_calls.len() <= i {
                self.reply.tool_calls.push(ToolCall::default());
            }
            let call = &mut self.reply.tool_calls[i];
            let part = tool_call(c);
            if !part.id.is_empty() {
                call.id = part.id;
            }
            call.name.push_str(&part.name);
            call.arguments.push_str(&part.arguments);
        }
        let text = delta["content"].as_str()?;
        self.reply.content.push_str(text);
        (!text.is_empty()).then(|| text.to_string())
    }

    /// The reply, if the stream said it was complete.
    fn finish(self) -> Option<Reply> {
        (self.started && (self.done || self.reply.finish_reason.is_some())).then_some(self.reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut b = SseBuffer::default();
        assert!(b.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            b.push(b":1}\n\ndata: [DONE]\r\n\r\n"),
            vec!["{\"a\":1}", "[DONE]"]
        );
        assert!(b.push(b": keep-alive comment\n\n").is_empty());
    }

    #[test]
    fn streamed_tool_calls_are_joined() {
        let mut acc = StreamAccumulator::default();
        for chunk in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"ocr","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"reg"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ion\": null}"}}]},"finish_reason":"tool_calls"}]}"#,
        ] {
            acc.add(&serde_json::from_str(chunk).unwrap());
        }
        let r = acc.finish().unwrap();
        assert_eq!(r.tool_calls[0].name, "ocr");
        assert_eq!(r.tool_calls[0].arguments, "{\"region\": null}");
        assert_eq!(r.finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn a_stream_without_an_end_is_not_a_reply() {
        let mut acc = StreamAccumulator::default();
        acc.add(&serde_json::from_str(r#"{"choices":[{"delta":{"content":"The to"}}]}"#).unwrap());
        assert!(acc.finish().is_none());
    }

    #[test]
    fn error_bodies_of_every_server() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
        assert_eq!(
            error_message(br#"{"error":"model \"x\" not found, try pulling it first"}"#),
            "model \"x\" not found, try pulling it first"
        );
        assert_eq!(
            error_message(br#"{"object":"error","message":"The model `x` does not exist."}"#),
            "The model `x` does not exist."
        );
        assert_eq!(error_message(br#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(
            error_message(b"<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
        let long = format!(
            "{{\"error\": {{\"message\": \"7 errors:\\n{}\"}}}}",
            "x ".repeat(400)
        );
        let m = error_message(long.as_bytes());
        assert!(!m.contains('\n') && m.chars().count() <= QUOTE + 1, "{m}");
        assert!(mentions_model("The model `x` does not exist."));
        assert!(!mentions_model("Not Found"));
    }

    #[test]
    fn replies_and_broken_bodies() {
        let r = parse_reply(
            "u",
            br#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"ocr","arguments":{"region":null}}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(r.tool_calls[0].arguments, "{\"region\":null}");
        assert_eq!(r.prompt_tokens, Some(12));
        assert!(matches!(
            parse_reply("u", br#"{"choices":[{"message":{"content":"hi"#),
            Err(ApiError::Truncated { .. })
        ));
        assert!(matches!(
            parse_reply("u", b"<html>502</html>"),
            Err(ApiError::BadBody { .. })
        ));
        assert!(matches!(
            parse_reply("u", br#"{"object":"list"}"#),
            Err(ApiError::BadBody { .. })
        ));
    }

    #[test]
    fn retry_waits() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_millis(2000));
        assert!(backoff(40) <= Duration::from_secs(64));
    }

    #[test]
    fn urls_are_checked() {
        assert!(matches!(
            Client::new(ClientConfig::new("localhost:8080/v1")),
            Err(ApiError::BadUrl { .. })
        ));
        assert!(matches!(
            Client::new(ClientConfig::new("not a url")),
            Err(ApiError::BadUrl { .. })
        ));
        let c = Client::new(ClientConfig::new("http://127.0.0.1:1/v1/")).unwrap();
        assert_eq!(c.url("models"), "http://127.0.0.1:1/v1/models");
    }
}
