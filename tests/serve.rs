//! `p2g serve` end to end: the real binary on loopback with the embedded models, driven as an
//! app would drive it (multipart uploads, JSON bodies, follow-ups, traces, metrics), and the
//! rules that keep it safe: paths only under --allow-dir, limits, the token, overload answered
//! with 429, deadlines, hung-up clients, and SIGTERM losing no work or trace.

mod common;

use common::serve_proc::Server;

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

/// One server at a time: each loads the models and uses every core, and the deadlines some
/// tests set assume the machine is not shared with another server.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

fn upload(path: &Path, question: Option<&str>) -> Form {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut f = Form::new().part("image", Part::bytes(bytes).file_name(name));
    if let Some(q) = question {
        f = f.text("question", q.to_string());
    }
    f
}

async fn post(c: &reqwest::Client, url: String, form: Form) -> (u16, Value) {
    let r = c.post(url).multipart(form).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_json(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[test]
fn asks_by_upload_and_path_follows_up_and_shows_the_trace() {
    let _one = one_at_a_time();
    let traces = tempfile::tempdir().unwrap();
    let fixtures = common::fixture("");
    let s = Server::start(
        &[
            "--allow-dir",
            fixtures.to_str().unwrap(),
            "--trace-dir",
            traces.path().to_str().unwrap(),
        ],
        &[],
    );
    let c = client();
    common::rt().block_on(async {
        let health: Value = c.get(s.url("/healthz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok", "{health}");
        assert!(health["agents"].as_array().unwrap().iter().any(|a| a == "ocr"));

        let (code, a) = post(
            &c,
            s.url("/v1/ask"),
            upload(&common::fixture("header.png"), Some("What is the registration number in the header?")),
        )
        .await;
        assert_eq!(code, 200, "{a}");
        assert!(a["answer"].as_str().unwrap().contains("789417"), "{a}");
        assert!(!a["grounding"].as_array().unwrap().is_empty(), "{a}");
        let session = a["session"].as_str().unwrap().to_string();

        // A follow-up reuses the session's image and what was read.
        let (code, f) = post_json(
            &c,
            s.url("/v1/ask"),
            json!({"session": session, "question": "What is the shop's name?"}),
        )
        .await;
        assert_eq!(code, 200, "{f}");
        assert_eq!(f["session"], session.as_str());
        assert!(!f["answer"].as_str().unwrap().is_empty(), "{f}");

        // By path, under --allow-dir.
        let (code, p) = post_json(
            &c,
            s.url("/v1/ask"),
            json!({"path": "header.png", "question": "What is the registration number in the header?"}),
        )
        .await;
        assert_eq!(code, 200, "{p}");
        assert_ne!(p["session"], session.as_str());

        let t: Value = c
            .get(s.url(&format!("/v1/sessions/{session}/trace")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = t["events"].as_array().unwrap();
        let questions = events.iter().filter(|e| e["event"] == "question").count();
        let answers = events.iter().filter(|e| e["event"] == "answer").count();
        assert_eq!((questions, answers), (2, 2), "{t}");
        assert!(events.iter().any(|e| e["event"] == "tool" && e["status"] == "ok"));

        let (code, e) = post_json(
            &c,
            s.url("/v1/ask"),
            json!({"session": "0123", "question": "And?"}),
        )
        .await;
        assert_eq!((code, e["kind"].as_str()), (404, Some("not_found")), "{e}");

        // OCR alone, through the same agent.
        let (code, o) = post(&c, s.url("/v1/ocr"), upload(&common::fixture("header.png"), None)).await;
        assert_eq!(code, 200, "{o}");
        let texts: Vec<&str> = o["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["text"].as_str())
            .collect();
        assert!(texts.iter().any(|t| t.contains("789417")), "{texts:?}");

        let m = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        for series in [
            "p2g_requests_total{endpoint=\"ask\",status=\"200\"} 3",
            "p2g_requests_total{endpoint=\"ask\",status=\"404\"} 1",
            "p2g_requests_total{endpoint=\"ocr\",status=\"200\"} 1",
            "p2g_request_seconds_count{endpoint=\"ask\"} 4",
            "p2g_agent_calls_total{agent=\"ocr\"}",
            "p2g_queue_depth 0",
            "p2g_model_load_seconds",
        ] {
            assert!(m.contains(series), "{series} missing from\n{m}");
        }
    });
    // The trace folder holds each session's steps as they happened.
    let files: Vec<_> = std::fs::read_dir(traces.path()).unwrap().collect();
    assert_eq!(files.len(), 2);
    drop(s);
}

#[test]
fn never_reads_outside_the_allowed_folder() {
    let _one = one_at_a_time();
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture("header.png"),
        outside.path().join("secret.png"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.png"),
        allowed.path().join("link.png"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path(), allowed.path().join("out")).unwrap();
    let s = Server::start(&["--allow-dir", allowed.path().to_str().unwrap()], &[]);
    let secret = outside.path().join("secret.png");
    let c = client();
    common::rt().block_on(async {
        for (path, code) in [
            (secret.to_str().unwrap(), 403),
            ("../secret.png", 403),
            ("out/../../secret.png", 403),
            ("link.png", 403),
            ("out/secret.png", 403),
            ("missing.png", 404),
            ("/etc/passwd", 403),
        ] {
            for (endpoint, body) in [
                (
                    "/v1/ask",
                    json!({"path": path, "question": "What does it say?"}),
                ),
                ("/v1/ocr", json!({"path": path})),
            ] {
                let (got, e) = post_json(&c, s.url(endpoint), body).await;
                assert_eq!(got, code, "{endpoint} {path}: {e}");
                let msg = e["error"].as_str().unwrap();
                assert!(!msg.contains(outside.path().to_str().unwrap()), "{msg}");
            }
        }
    });
    // Without --allow-dir, no path at all.
    drop(s);
    let s = Server::start(&[], &[]);
    common::rt().block_on(async {
        let (code, e) = post_json(
            &c,
            s.url("/v1/ocr"),
            json!({"path": common::fixture("header.png")}),
        )
        .await;
        assert_eq!(code, 403, "{e}");
        assert!(e["error"].as_str().unwrap().contains("--allow-dir"), "{e}");
    });
}

#[test]
fn bad_requests_get_clear_errors_and_the_token_is_enforced() {
    let _one = one_at_a_time();
    let s = Server::start(
        &["--max-upload-mib", "1", "--max-pixels", "1000000"],
        &[("P2G_TOKEN", "s3cret")],
    );
    let c = client();
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");
    common::rt().block_on(async {
        // No token, wrong token: 401; /healthz stays open for probes.
        let r = c
            .post(s.url("/v1/ocr"))
            .multipart(upload(&common::fixture("header.png"), None));
        assert_eq!(r.send().await.unwrap().status().as_u16(), 401);
        let r = c.get(s.url("/metrics")).bearer_auth("s3cret!");
        assert_eq!(r.send().await.unwrap().status().as_u16(), 401);
        assert_eq!(
            c.get(s.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            200
        );

        let cases: Vec<(Form, u16, &str)> = vec![
            (
                upload(&common::fixture("header.png"), None),
                400,
                "question",
            ),
            (
                upload(&common::fixture("header.png"), Some("What?")).text("colour", "red"),
                400,
                "unknown field",
            ),
            (
                upload(&common::fixture("header.png"), Some("What?")).text("region", "NaN,0,1,1"),
                400,
                "finite",
            ),
            (
                upload(&common::fixture("header.png"), Some("What?")).text("region", "5,5,1,1"),
                400,
                "x2 must exceed x1",
            ),
            (
                upload(&common::fixture("header.png"), Some("What?"))
                    .text("region", "5000,5000,6000,6000"),
                400,
                "not inside",
            ),
            (
                upload(&common::fixture("header.png"), None)
                    .part("question", Part::bytes(vec![0xff, 0xfe, b'?'])),
                400,
                "utf-8",
            ),
            (
                upload(&common::fixture("header.png"), Some(&"why ".repeat(5000))),
                400,
                "limit is 4000",
            ),
            (
                upload(&common::fixture("not_an_image.jpg"), Some("What?")),
                422,
                "not an image",
            ),
            (
                upload(&common::fixture("bomb.png"), Some("What?")),
                413,
                "pixels",
            ),
            (Form::new().text("question", "What?"), 400, "no image"),
        ];
        for (i, (form, code, says)) in cases.into_iter().enumerate() {
            let r = auth(c.post(s.url("/v1/ask")))
                .multipart(form)
                .send()
                .await
                .unwrap();
            let got = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(got, code, "case {i}: {body}");
            let msg = body["error"].as_str().unwrap_or("").to_lowercase();
            assert!(msg.contains(says), "case {i}: {msg:?} lacks {says:?}");
            assert!(!msg.contains('\n'), "case {i}: {msg:?}");
        }
        // An upload over --max-upload-mib is refused from its declared length, before the
        // body is sent (a raw request: the client reads the answer before uploading).
        let (code, body) = raw_head(&s, "/v1/ask", 2 << 20, "s3cret");
        assert_eq!(code, 413, "{body}");
        assert!(
            body.contains("too large") && body.contains("--max-upload-mib"),
            "{body}"
        );
        let r = auth(c.post(s.url("/v1/ask")))
            .header("content-type", "text/plain")
            .body("What?")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let r = auth(c.post(s.url("/v1/ask")))
            .header("content-type", "application/json")
            .body("{\"question\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        // The server is still up and answering after all of them.
        let r = auth(c.post(s.url("/v1/ocr")))
            .multipart(upload(&common::fixture("header.png"), None))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Sends only a request's head declaring `length` bytes of multipart body; returns the status
/// and body of the reply.
fn raw_head(s: &Server, path: &str, length: usize, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let host = s.base.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(host).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = tcp.read_to_string(&mut reply);
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("").to_lowercase();
    (code, body)
}

/// Waits until the server works on nothing.
async fn idle(c: &reqwest::Client, s: &Server) {
    let t0 = Instant::now();
    loop {
        let m = c
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("p2g_in_flight 0") {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the server stayed busy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn overload_is_answered_at_once_and_deadlines_and_hang_ups_cancel_work() {
    let _one = one_at_a_time();
    let traces = tempfile::tempdir().unwrap();
    let s = Server::start(
        &[
            "--concurrency",
            "1",
            "--queue",
            "0",
            "--request-timeout",
            "2",
            "--trace-dir",
            traces.path().to_str().unwrap(),
        ],
        &[],
    );
    let c = client();
    let receipt = common::fixture("receipt.jpg");
    common::rt().block_on(async {
        // One question holds the only worker; a second request is refused at once with
        // Retry-After, not queued behind it.
        let busy = {
            let c = c.clone();
            let url = s.url("/v1/ask");
            let form = upload(&receipt, Some("What is the total?"));
            tokio::spawn(async move { c.post(url).multipart(form).send().await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        let r = c
            .post(s.url("/v1/ocr"))
            .multipart(upload(&common::fixture("header.png"), None))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        // The receipt takes longer than the 2 s deadline: 504, and the work is cancelled.
        let r = busy.await.unwrap().unwrap();
        assert_eq!(r.status().as_u16(), 504);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("2 s"), "{body}");

        // The timed-out question stops at its next check and frees the worker.
        idle(&c, &s).await;
        // A client that hangs up: its question is cancelled and the worker freed.
        let quick = reqwest::Client::builder()
            .timeout(Duration::from_millis(700))
            .build()
            .unwrap();
        let _ = quick
            .post(s.url("/v1/ask"))
            .multipart(upload(&receipt, Some("What is the date?")))
            .send()
            .await;
        // Within a moment the worker is free again.
        let t0 = Instant::now();
        loop {
            let r = c
                .post(s.url("/v1/ocr"))
                .multipart(upload(&common::fixture("header.png"), None))
                .send()
                .await
                .unwrap();
            if r.status().as_u16() == 200 {
                break;
            }
            assert_eq!(r.status().as_u16(), 429);
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the worker stayed taken"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // Both cancelled questions left a trace that says so.
    let mut cancelled = 0;
    for f in std::fs::read_dir(traces.path()).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        if text.contains("\"event\":\"error\"") && text.contains("cancelled") {
            cancelled += 1;
        }
    }
    assert_eq!(cancelled, 2, "{}", s.log());
}

#[test]
fn sigterm_finishes_in_flight_work_and_loses_no_trace() {
    let _one = one_at_a_time();
    let traces = tempfile::tempdir().unwrap();
    // A long grace: the test build's controller is slower than a release build's.
    let s = Server::start(
        &[
            "--grace",
            "600",
            "--trace-dir",
            traces.path().to_str().unwrap(),
        ],
        &[],
    );
    let c = client();
    let rt = common::rt();
    let pending = {
        let c = c.clone();
        let url = s.url("/v1/ask");
        let form = upload(
            &common::fixture("header.png"),
            Some("What is the registration number in the header?"),
        );
        rt.spawn(async move { post(&c, url, form).await })
    };
    std::thread::sleep(Duration::from_millis(700));
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let (code, a) = rt.block_on(pending).unwrap();
    assert_eq!(code, 200, "{a}");
    let session = a["session"].as_str().unwrap();
    let trace = std::fs::read_to_string(traces.path().join(format!("{session}.jsonl"))).unwrap();
    assert!(
        trace.lines().any(|l| l.contains("\"event\":\"answer\"")),
        "{trace}"
    );

    // With no grace, in-flight work is cancelled (503), and its trace says so.
    let traces = tempfile::tempdir().unwrap();
    let s = Server::start(
        &[
            "--grace",
            "0",
            "--trace-dir",
            traces.path().to_str().unwrap(),
        ],
        &[],
    );
    let pending = {
        let c = c.clone();
        let url = s.url("/v1/ask");
        let form = upload(&common::fixture("receipt.jpg"), Some("What is the total?"));
        rt.spawn(async move { post(&c, url, form).await })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    let (code, e) = rt.block_on(pending).unwrap();
    assert_eq!(code, 503, "{e}");
    let f = std::fs::read_dir(traces.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let trace = std::fs::read_to_string(f.path()).unwrap();
    assert!(trace.contains("cancelled"), "{trace}");
}
