//! The hostile-input corpus (`tests/bad_inputs/`, made by its `make_corpus.py`; what each
//! file is and what p2g should do with it is in `cases.toml`) through every door: `p2g ocr`,
//! `p2g detect`, `p2g ask` and `p2g serve`. Each case must end in the expected clear error or
//! in success: no panic, no hang, memory within its bound (peak RSS from `wait4`). A table of
//! the results is written to `target/bad_inputs_report.md`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize, Clone)]
struct Case {
    file: String,
    kind: String,
    what: String,
    expect: String,
    error_contains: Option<String>,
    replaces: Option<String>,
    max_rss_mb: Option<u64>,
}

fn corpus() -> PathBuf {
    common::root().join("tests/bad_inputs")
}

/// Every case, or those whose file name contains one of the comma-separated words of
/// `P2G_BAD_INPUTS` (to re-run a few while fixing them).
fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join("cases.toml")).unwrap();
    let all = toml::from_str::<Cases>(&text).unwrap().case;
    assert!(all.len() >= 40, "the corpus has {} cases", all.len());
    match std::env::var("P2G_BAD_INPUTS") {
        Ok(only) if !only.is_empty() => all
            .into_iter()
            .filter(|c| only.split(',').any(|w| c.file.contains(w)))
            .collect(),
        _ => all,
    }
}

/// One way in: its name, the command's arguments, extra environment, standard input, and
/// the peak memory it may use (MB).
type Door = (
    &'static str,
    Vec<std::ffi::OsString>,
    Vec<(&'static str, PathBuf)>,
    Vec<u8>,
    u64,
);

/// How one command ended.
struct Ran {
    code: Option<i32>,
    stderr: String,
    peak_mb: u64,
    secs: f64,
    timed_out: bool,
}

const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs p2g with `args`, `stdin` fed in, under the timeout; peak RSS from `wait4`.
fn p2g(args: &[&std::ffi::OsStr], env: &[(&str, &Path)], stdin: &[u8]) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2g"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("P2G_AGENTS_DIR")
        .env_remove("P2G_PROMPTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    // Reaped by the wait4 loop below (for its peak-memory figure), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: waits for our own child; status and usage are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if t0.elapsed() > TIMEOUT && !timed_out {
            timed_out = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    Ran {
        code,
        stderr: reader.join().unwrap_or_default(),
        peak_mb: usage.ru_maxrss as u64 / 1024,
        secs: t0.elapsed().as_secs_f64(),
        timed_out,
    }
}

/// A stand-in for an OpenAI-compatible server that answers every chat request with `reply`.
struct FakeModel {
    port: u16,
    reply: Arc<Mutex<String>>,
}

impl FakeModel {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(String::new()));
        let shared = reply.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let reply = shared.lock().unwrap().clone();
                std::thread::spawn(move || serve_one(stream, &reply));
            }
        });
        Self { port, reply }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

fn serve_one(mut s: std::net::TcpStream, reply: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    // Read the head, then as much body as it declares.
    let (head_end, length) = loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let is_get = buf.starts_with(b"GET");
    let body = if is_get {
        serde_json::json!({"object": "list", "data": [{"id": "fake", "object": "model"}]})
    } else {
        serde_json::json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
    }
    .to_string();
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Checks one run against its case; returns the problem, if any.
fn judge(case: &Case, door: &str, r: &Ran, bound_mb: u64) -> Option<String> {
    let last = r
        .stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    if r.timed_out {
        return Some(format!("{door}: no end within {TIMEOUT:?}"));
    }
    if r.stderr.contains("panicked") || r.code == Some(101) || r.code.is_none() {
        return Some(format!("{door}: crashed ({:?}): {last}", r.code));
    }
    if r.peak_mb > bound_mb {
        return Some(format!("{door}: peak {} MB over {bound_mb} MB", r.peak_mb));
    }
    match case.expect.as_str() {
        "ok" if r.code != Some(0) => Some(format!("{door}: expected success, got {last}")),
        "error" if r.code == Some(0) => Some(format!("{door}: expected an error, it succeeded")),
        "error" => {
            let want = case.error_contains.clone().unwrap_or_default();
            let said = r.stderr.to_lowercase();
            if !said.contains(&want.to_lowercase()) {
                return Some(format!("{door}: the error lacks {want:?}: {last}"));
            }
            // p2g's own errors are one line (argument errors are clap's, with a usage hint).
            if r.code == Some(1) && !last.starts_with("p2g: error:") {
                return Some(format!(
                    "{door}: the error is not one 'p2g: error:' line: {last}"
                ));
            }
            if last.chars().count() > 2000 {
                return Some(format!("{door}: a {}-character error line", last.len()));
            }
            None
        }
        _ => None,
    }
}

#[test]
fn every_hostile_input_gets_a_clear_error_or_a_correct_result_through_every_door() {
    let cases = cases();
    let header = common::fixture("header.png");
    let os = |s: &str| std::ffi::OsString::from(s);
    let fake = FakeModel::start();
    let scratch = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let mut report = String::from(
        "| case | kind | expect | door | exit | peak MB | s | error (first 120 chars) |\n|---|---|---|---|---|---|---|---|\n",
    );
    // The question every door asks: the loop runs one decision (what is tested is the input's
    // way in, not the answer).
    let ask_tail = ["--max-steps", "1", "--max-zooms", "0", "--no-prompt-cache"];
    // `p2g ask IMAGE QUESTION EXTRA... <ask_tail>`.
    let ask = |image: std::ffi::OsString, question: &str, extra: Vec<std::ffi::OsString>| {
        let mut a = vec![os("ask"), image, os(question)];
        a.extend(extra);
        a.extend(ask_tail.iter().map(|s| os(s)));
        a
    };
    for case in &cases {
        let file = corpus().join(&case.file);
        assert!(file.is_file(), "{} is missing", file.display());
        let text = std::fs::read(&file).unwrap();
        let lossy = String::from_utf8_lossy(&text).into_owned();
        let mut doors: Vec<Door> = Vec::new();
        let img_bound = case.max_rss_mb.unwrap_or(1536);
        match case.kind.as_str() {
            "image" => {
                let f = file.clone().into_os_string();
                doors.push((
                    "ocr",
                    vec![os("ocr"), f.clone(), os("--json")],
                    vec![],
                    vec![],
                    img_bound,
                ));
                doors.push((
                    "detect",
                    vec![os("detect"), f.clone(), os("person"), os("--json")],
                    vec![],
                    vec![],
                    img_bound,
                ));
                // The agents have read the image through the two doors above; here the
                // question's own way in (decoding, the loop) is what is tested.
                let a = ask(f, "What does it say?", vec![os("--no-agents")]);
                doors.push(("ask", a, vec![], vec![], img_bound + 1536));
            }
            "question" => {
                let a = ask(
                    header.clone().into_os_string(),
                    "-",
                    vec![os("--no-agents")],
                );
                doors.push(("ask", a, vec![], text.clone(), 3072));
            }
            "region" => {
                let region = format!("--region={}", lossy.trim_end_matches('\n'));
                doors.push((
                    "ocr",
                    vec![os("ocr"), header.clone().into_os_string(), os(&region)],
                    vec![],
                    vec![],
                    1536,
                ));
                let a = ask(
                    header.clone().into_os_string(),
                    "What does it say?",
                    vec![os(&region)],
                );
                doors.push(("ask", a, vec![], vec![], 3072));
            }
            "controller_output" => {
                *fake.reply.lock().unwrap() = lossy.clone();
                let a = [
                    "ask",
                    header.to_str().unwrap(),
                    "What is the shop name?",
                    "--controller",
                    "openai",
                    "--base-url",
                    &fake.url(),
                    "--model",
                    "fake",
                    "--no-stream",
                    "--max-retries",
                    "0",
                    "--max-zooms",
                    "0",
                ]
                .map(os)
                .to_vec();
                doors.push(("ask", a, vec![], vec![], 1536));
            }
            "agent_manifest" => {
                let dir = scratch.path().join(format!("agents-{}", case.file));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("ocr.toml"), &text).unwrap();
                doors.push((
                    "ocr",
                    vec![
                        os("ocr"),
                        header.clone().into_os_string(),
                        os("--manifest"),
                        file.clone().into_os_string(),
                    ],
                    vec![],
                    vec![],
                    1536,
                ));
                let a = ask(header.clone().into_os_string(), "What does it say?", vec![]);
                doors.push(("ask", a, vec![("P2G_AGENTS_DIR", dir)], vec![], 3072));
            }
            "prompt" => {
                let dir = scratch.path().join(format!("prompts-{}", case.file));
                std::fs::create_dir_all(&dir).unwrap();
                let name = case.replaces.clone().unwrap_or_else(|| "system.md".into());
                std::fs::write(dir.join(&name), &text).unwrap();
                let extra = vec![os("--prompts"), dir.into_os_string(), os("--no-agents")];
                let a = ask(header.clone().into_os_string(), "What does it say?", extra);
                doors.push(("ask", a, vec![], vec![], 3072));
            }
            other => panic!("{}: unknown kind {other}", case.file),
        }
        for (door, args, env, stdin, bound) in doors {
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
            let r = p2g(&args, &env, &stdin);
            let last: String = r
                .stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .chars()
                .take(120)
                .collect();
            report.push_str(&format!(
                "| {} | {} | {} | {door} | {} | {} | {:.1} | {} |\n",
                case.file,
                case.kind,
                case.expect,
                r.code.map(|c| c.to_string()).unwrap_or("signal".into()),
                r.peak_mb,
                r.secs,
                last.replace('|', "\\|")
            ));
            if let Some(p) = judge(case, door, &r, bound) {
                problems.push(format!("{} ({}): {p}", case.file, case.what));
            }
        }
    }
    let out = common::root().join("target/bad_inputs_report.md");
    let _ = std::fs::write(&out, &report);
    assert!(
        problems.is_empty(),
        "{} problems (table in {}):\n{}",
        problems.len(),
        out.display(),
        problems.join("\n")
    );
}

/// What the server said to one request.
async fn request(
    c: &reqwest::Client,
    url: String,
    form: reqwest::multipart::Form,
) -> Result<(u16, String), String> {
    let r = c
        .post(url)
        .multipart(form)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let code = r.status().as_u16();
    let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    let text = body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    Ok((code, text))
}

/// Checks one HTTP answer against its case.
fn judge_http(case: &Case, door: &str, got: Result<(u16, String), String>) -> Option<String> {
    let (code, text) = match got {
        Err(e) => return Some(format!("{door}: no HTTP answer: {e}")),
        Ok(g) => g,
    };
    match case.expect.as_str() {
        "ok" if code != 200 => Some(format!("{door}: expected 200, got {code}: {text}")),
        "error" if code == 200 => Some(format!("{door}: expected an error, got 200")),
        // A client's bad input is a 4xx; a broken template or a model's bad output is the
        // server's own failure (5xx), still with its reason.
        "error" if code >= 500 && !matches!(case.kind.as_str(), "controller_output" | "prompt") => {
            Some(format!(
                "{door}: a server error ({code}) for bad input: {text}"
            ))
        }
        "error" => {
            let want = case
                .error_contains
                .clone()
                .unwrap_or_default()
                .to_lowercase();
            (!text.to_lowercase().contains(&want))
                .then(|| format!("{door}: the error lacks {want:?}: {text}"))
        }
        _ => None,
    }
}

fn form_with(image: &Path) -> reqwest::multipart::Form {
    let bytes = std::fs::read(image).unwrap();
    let name = image.file_name().unwrap().to_string_lossy().into_owned();
    reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(bytes).file_name(name),
    )
}

#[test]
fn every_hostile_input_gets_a_clear_answer_from_the_server() {
    use common::serve_proc::Server;
    let cases = cases();
    let header = common::fixture("header.png");
    let dir = corpus();
    let loop_args = ["--max-steps", "1", "--max-zooms", "0"];
    let mut args = vec!["--allow-dir", dir.to_str().unwrap()];
    args.extend(loop_args);
    let server = Server::start(&args, &[]);
    // Questions go to a server without agents: the agents read every image through /v1/ocr
    // and /v1/detect; /v1/ask is tested for the way a request comes in.
    let mut asker_args = args.clone();
    asker_args.push("--no-agents");
    let asker = Server::start(&asker_args, &[]);
    let fake = FakeModel::start();
    let fake_url = fake.url();
    let mut remote_args = vec![
        "--controller",
        "openai",
        "--base-url",
        &fake_url,
        "--model",
        "fake",
        "--no-stream",
        "--max-retries",
        "0",
    ];
    remote_args.extend(["--max-zooms", "0"]);
    let remote = Server::start(&remote_args, &[]);
    let scratch = tempfile::tempdir().unwrap();
    let c = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let rt = common::rt();
    let mut problems = Vec::new();
    for case in &cases {
        let file = dir.join(&case.file);
        let text = std::fs::read(&file).unwrap();
        let lossy = String::from_utf8_lossy(&text).into_owned();
        let mut note = |p: Option<String>| {
            if let Some(p) = p {
                problems.push(format!("{}: {p}", case.file));
            }
        };
        match case.kind.as_str() {
            "image" => rt.block_on(async {
                let path = |extra: &[(&str, &str)]| {
                    let mut f = reqwest::multipart::Form::new().text("path", case.file.clone());
                    for (k, v) in extra {
                        f = f.text(k.to_string(), v.to_string());
                    }
                    f
                };
                note(judge_http(
                    case,
                    "serve ocr",
                    request(&c, server.url("/v1/ocr"), path(&[])).await,
                ));
                note(judge_http(
                    case,
                    "serve detect",
                    request(&c, server.url("/v1/detect"), path(&[("objects", "person")])).await,
                ));
                note(judge_http(
                    case,
                    "serve ask",
                    request(
                        &c,
                        asker.url("/v1/ask"),
                        path(&[("question", "What does it say?")]),
                    )
                    .await,
                ));
            }),
            "question" => rt.block_on(async {
                let f = form_with(&header)
                    .part("question", reqwest::multipart::Part::bytes(text.clone()));
                note(judge_http(
                    case,
                    "serve ask",
                    request(&c, asker.url("/v1/ask"), f).await,
                ));
            }),
            "region" => rt.block_on(async {
                let f = form_with(&header).text("region", lossy.trim_end_matches('\n').to_string());
                note(judge_http(
                    case,
                    "serve ocr",
                    request(&c, server.url("/v1/ocr"), f).await,
                ));
            }),
            "controller_output" => rt.block_on(async {
                *fake.reply.lock().unwrap() = lossy.clone();
                let f = form_with(&header).text("question", "What is the shop name?");
                note(judge_http(
                    case,
                    "serve ask",
                    request(&c, remote.url("/v1/ask"), f).await,
                ));
            }),
            "agent_manifest" | "prompt" => {
                // A broken manifest or template either stops the server at start, with the
                // reason, or is refused when a question needs it; never a crash or a hang.
                let d = scratch.path().join(&case.file);
                std::fs::create_dir_all(&d).unwrap();
                let (env, extra): (Vec<(&str, &str)>, Vec<&str>) = if case.kind == "prompt" {
                    let name = case.replaces.clone().unwrap_or_else(|| "system.md".into());
                    std::fs::write(d.join(name), &text).unwrap();
                    (vec![], vec!["--prompts", d.to_str().unwrap()])
                } else {
                    std::fs::write(d.join("ocr.toml"), &text).unwrap();
                    (vec![("P2G_AGENTS_DIR", d.to_str().unwrap())], vec![])
                };
                let mut a = extra.clone();
                a.extend(loop_args);
                if case.kind == "prompt" {
                    a.push("--no-agents");
                }
                match Server::try_start(&a, &env) {
                    Err(log) => {
                        let last = log
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("");
                        if log.contains("panicked") {
                            note(Some(format!("serve start crashed: {last}")));
                        } else if case.expect == "ok" {
                            note(Some(format!("serve did not start: {last}")));
                        } else {
                            let want = case.error_contains.clone().unwrap_or_default();
                            if !log.to_lowercase().contains(&want.to_lowercase()) {
                                note(Some(format!("serve start error lacks {want:?}: {last}")));
                            }
                        }
                    }
                    Ok(s) => rt.block_on(async {
                        let f = form_with(&header).text("question", "What does it say?");
                        note(judge_http(
                            case,
                            "serve ask",
                            request(&c, s.url("/v1/ask"), f).await,
                        ));
                        if s.log().contains("panicked") {
                            note(Some(format!("serve panicked: {}", s.log())));
                        }
                    }),
                }
            }
            other => panic!("unknown kind {other}"),
        }
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!remote.log().contains("panicked"), "{}", remote.log());
    // Still up and answering after all of it.
    rt.block_on(async {
        let r = c.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    });
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
