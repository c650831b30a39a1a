//! `--controller openai` against a real llama.cpp server (PyPI `llama-cpp-python[server]`)
//! on loopback, serving the Qwen2.5-Coder-0.5B GGUF p2g fetches: tool calls in the text and in
//! the `tool_calls` field, a whole `p2g ask` through it, streaming, a server killed mid-answer,
//! and the errors of wrong URLs, keys and bodies (some from a small raw-HTTP peer, for the
//! replies a llama.cpp server never sends).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::llama_server::{free_port, qwen_gguf, LlamaServer};
use p2g::controller::openai::client::{ApiError, Client, ClientConfig};
use p2g::controller::openai::{OpenAiConfig, OpenAiController};
use p2g::controller::prompt::Prompts;
use p2g::controller::{
    Controller, ControllerError, Conversation, Decision, ImageFacts, RegionText, StepContext, Turn,
    VisualInput,
};
use p2g::orchestrator::{AskOptions, Orchestrator};
use p2g::vision::{BBox, Image, LoadOptions};
use serde_json::json;

/// One server at a time: each loads the model on both cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn controller(base_url: &str, change: impl FnOnce(&mut OpenAiConfig)) -> OpenAiController {
    let mut cfg = OpenAiConfig::new(base_url, "qwen", Prompts::embedded().unwrap()).unwrap();
    cfg.client.max_retries = 2;
    change(&mut cfg);
    OpenAiController::new(cfg).unwrap()
}

fn ocr_tool() -> p2g::agents::ToolDefinition {
    p2g::agents::AgentManifest::embedded("ocr")
        .unwrap()
        .definition()
}

fn question(text: &str) -> Conversation {
    Conversation {
        image: ImageFacts {
            name: "receipt.jpg".into(),
            width: 463,
            height: 1013,
        },
        turns: vec![Turn::Question {
            text: text.into(),
            region: None,
        }],
        tools: vec![ocr_tool()],
        regions: Vec::new(),
        visual: Vec::new(),
        must_answer: false,
        narrowed: false,
        document: None,
    }
}

/// A question with no agents offered (the controller may answer at once).
fn untooled(text: &str) -> Conversation {
    Conversation {
        tools: Vec::new(),
        ..question(text)
    }
}

#[test]
fn tool_calls_come_back_in_the_text_and_in_the_field() {
    let _one = serial();
    let server = LlamaServer::start(&qwen_gguf(), &[]);
    let rt = common::rt();
    let c = controller(&server.base_url(), |_| {});
    // A model that cannot see and has no evidence must look first: the one tool is named in
    // `tool_choice`, the server constrains the output to its schema and returns the call in
    // the `tool_calls` field (the trace's raw form `ocr(ARGUMENTS)`).
    let conv = question("What is the total amount on this receipt?");
    let step = rt
        .block_on(c.decide(&conv, &StepContext::default()))
        .unwrap();
    assert!(step.raw.starts_with("ocr("), "{:?}", step.raw);
    assert!(
        matches!(&step.decision, Decision::Call { agent, .. } if agent == "ocr"),
        "{:?}",
        step.decision
    );
    // With evidence, `tool_choice: auto`: llama.cpp's server renders the model's chat template
    // with the tools and returns what the model wrote, the call as text.
    let mut conv = conv;
    conv.turns.push(Turn::Call {
        agent: "ocr".into(),
        arguments: json!({}),
    });
    conv.turns.push(Turn::Observation {
        agent: "ocr".into(),
        content: "[top] r1 BOOK TA .K (TAMAN DAYA) SDN BHD\n[bottom] r2 TOTAL | r3 9.00".into(),
    });
    conv.regions = [
        (
            "r1",
            "BOOK TA .K (TAMAN DAYA) SDN BHD",
            [69.0, 89.0, 422.0, 115.0],
            0,
        ),
        ("r2", "TOTAL", [242.0, 637.0, 298.0, 660.0], 1),
        ("r3", "9.00", [406.0, 635.0, 448.0, 657.0], 1),
    ]
    .into_iter()
    .map(|(id, text, b, row)| RegionText {
        id: id.into(),
        text: text.into(),
        row,
        bbox: BBox::from(b),
        score: 0.95,
    })
    .collect();
    let step = rt
        .block_on(c.decide(&conv, &StepContext::default()))
        .unwrap();
    assert!(
        step.raw.contains("\"name\""),
        "a call written as text: {:?}",
        step.raw
    );
    assert!(
        !step.raw.starts_with("ocr(") && !step.raw.starts_with("answer("),
        "{:?}",
        step.raw
    );
    // The last step must answer: the answer tool is named, the server constrains its output
    // to the tool's schema and returns it in `tool_calls`.
    conv.must_answer = true;
    let step = rt
        .block_on(c.decide(&conv, &StepContext::default()))
        .unwrap();
    assert!(step.raw.starts_with("answer("), "{:?}", step.raw);
    let Decision::Answer { text, .. } = &step.decision else {
        panic!("not an answer: {:?}", step.decision)
    };
    assert!(!text.trim().is_empty());
    assert!(
        step.stats.prompt_tokens > 0,
        "usage is read: {:?}",
        step.stats
    );
}

#[test]
fn p2g_ask_answers_through_the_server() {
    let _one = serial();
    let server = LlamaServer::start(&qwen_gguf(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_p2g"))
        .arg("ask")
        .arg(common::fixture("receipt.jpg"))
        .arg("What is the total amount?")
        .args(["--controller", "openai", "--model", "qwen", "--json"])
        .args(["--base-url", &server.base_url()])
        .arg("--trace")
        .arg(&trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(answer["answer"], "9.00", "{answer}");
    assert!(
        !answer["grounding"].as_array().unwrap().is_empty(),
        "{answer}"
    );
    let events = p2g::trace::read(&trace).unwrap();
    let controller = events.iter().find_map(|e| match e {
        p2g::trace::TraceEvent::Question { controller, .. } => Some(controller.clone()),
        _ => None,
    });
    assert_eq!(controller.as_deref(), Some("openai:qwen"));
}

#[test]
fn replies_stream_and_a_killed_server_is_one_clear_error_then_the_session_recovers() {
    let _one = serial();
    let port = free_port();
    let server = Arc::new(Mutex::new(LlamaServer::start_on(port, &qwen_gguf(), &[])));
    let url = format!("http://127.0.0.1:{port}/v1");
    let rt = common::rt();
    let mut cfg = ClientConfig::new(&url);
    cfg.max_retries = 1;
    let client = Client::new(cfg).unwrap();
    let body = |n: u32| {
        json!({ "model": "qwen", "max_tokens": n, "temperature": 0.0, "messages": [
            { "role": "user", "content": "Write a long story about a lighthouse keeper." }] })
    };
    // Streaming: the text arrives in pieces that add up to the reply.
    let pieces = Arc::new(Mutex::new(Vec::<String>::new()));
    let p = pieces.clone();
    let reply = rt
        .block_on(client.chat(
            &body(24),
            true,
            &mut move |t: &str| p.lock().unwrap().push(t.to_string()),
            &AtomicBool::new(false),
        ))
        .unwrap();
    let pieces = pieces.lock().unwrap().clone();
    assert!(pieces.len() >= 5, "{pieces:?}");
    assert_eq!(pieces.concat(), reply.content);
    assert_eq!(reply.finish_reason.as_deref(), Some("length"));
    // Killed after the first words: the reply is cut, and the error says so on one line.
    let s = server.clone();
    let mut killed = false;
    let err = rt
        .block_on(client.chat(
            &body(400),
            true,
            &mut move |_: &str| {
                if !killed {
                    s.lock().unwrap().kill();
                    killed = true;
                }
            },
            &AtomicBool::new(false),
        ))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ApiError::Truncated { .. }), "{msg}");
    assert!(msg.contains(&url) && !msg.contains('\n'), "{msg}");
    // A session keeps its evidence while the server is down, and answers once it is back.
    let orch = Orchestrator::builder()
        .controller(controller(&url, |_| {}))
        .agent(common::agent_with(|_| {}))
        .answer_by(Duration::from_secs(600))
        .build()
        .unwrap();
    let path = common::fixture("receipt.jpg");
    let image = Image::open(&path, &LoadOptions::default()).unwrap();
    let mut session = orch.session(image, &path);
    let down = rt
        .block_on(session.ask("What is the total amount?", AskOptions::default()))
        .unwrap_err();
    let msg = down.to_string();
    assert!(
        msg.contains("cannot connect") && msg.contains("is the server running"),
        "{msg}"
    );
    *server.lock().unwrap() = LlamaServer::start_on(port, &qwen_gguf(), &[]);
    let a = rt
        .block_on(session.ask("What is the total amount?", AskOptions::default()))
        .unwrap();
    assert_eq!(a.answer, "9.00");
}

#[test]
fn a_key_the_server_refuses_is_named() {
    let _one = serial();
    let server = LlamaServer::start(&qwen_gguf(), &["--api_key", "sesame"]);
    let rt = common::rt();
    let wrong = controller(&server.base_url(), |c| {
        c.client.api_key = Some("guess".into())
    });
    let err = rt
        .block_on(wrong.decide(&question("What is the total?"), &StepContext::default()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ControllerError::Api(ApiError::Unauthorized { .. })),
        "{msg}"
    );
    assert!(msg.contains("P2G_API_KEY"), "{msg}");
    let right = controller(&server.base_url(), |c| {
        c.client.api_key = Some("sesame".into())
    });
    assert_eq!(rt.block_on(right.served_models()).unwrap(), ["qwen"]);
}

/// A raw HTTP peer: answers each connection with the next canned response, then closes.
fn canned(responses: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for r in responses {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 65536];
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = s.read(&mut buf);
            let _ = s.write_all(&r);
        }
    });
    format!("http://127.0.0.1:{port}/v1")
}

fn http(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn wrong_urls_unknown_models_and_broken_bodies_say_what_to_check() {
    let rt = common::rt();
    let ask = |url: &str| {
        let c = controller(url, |c| {
            c.client.max_retries = 1;
            c.stream = false;
        });
        rt.block_on(c.decide(&untooled("What is the total?"), &StepContext::default()))
            .unwrap_err()
            .to_string()
    };
    let refused = ask(&format!("http://127.0.0.1:{}/v1", free_port()));
    assert!(refused.contains("is the server running"), "{refused}");
    let html = ask(&canned(vec![http(
        "200 OK",
        "",
        "<html>welcome to nginx</html>",
    )]));
    assert!(
        html.contains("not the API's JSON") && html.contains("nginx"),
        "{html}"
    );
    let cut = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{}",
        r#"{"choices":[{"message":{"content":"The to"#
    );
    let truncated = ask(&canned(vec![cut.into_bytes()]));
    assert!(truncated.contains("cut off"), "{truncated}");
    let ollama = r#"{"error":"model \"qwen\" not found, try pulling it first"}"#;
    let listing = r#"{"object":"list","data":[{"id":"llava:7b"},{"id":"qwen2.5vl:7b"}]}"#;
    let unknown = ask(&canned(vec![
        http("404 Not Found", "", ollama),
        http("200 OK", "", listing),
    ]));
    assert!(
        unknown.contains("does not serve the model \"qwen\"") && unknown.contains("qwen2.5vl:7b"),
        "{unknown}"
    );
    let no_v1 = ask(&canned(vec![http(
        "404 Not Found",
        "",
        r#"{"detail":"Not Found"}"#,
    )]));
    assert!(no_v1.contains("end in /v1"), "{no_v1}");
    // 503 with Retry-After, then an answer: retried after the wait it asked for.
    let ok = r#"{"choices":[{"message":{"content":"9.00"},"finish_reason":"stop"}]}"#;
    let url = canned(vec![
        http(
            "503 Service Unavailable",
            "Retry-After: 1\r\n",
            r#"{"error":"loading"}"#,
        ),
        http("200 OK", "", ok),
    ]);
    let c = controller(&url, |c| c.stream = false);
    let t0 = std::time::Instant::now();
    let step = rt
        .block_on(c.decide(&untooled("What is the total?"), &StepContext::default()))
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert!(matches!(step.decision, Decision::Answer { ref text, .. } if text == "9.00"));
}

/// The whole image and `crops` crops of it, as the loop gives a controller that sees.
fn seeing(crops: usize) -> Conversation {
    let path = common::fixture("mmproj").join("tiny_image.png");
    let img = Image::open(&path, &LoadOptions::default()).unwrap();
    let (w, h) = (img.width() as f32, img.height() as f32);
    let whole = BBox::new(0.0, 0.0, w, h);
    let mut visual = vec![VisualInput {
        region: None,
        bbox: whole,
        window: whole,
        image: img.clone(),
    }];
    for i in 0..crops {
        let (x, y) = ((i % 4) as u32 * 5, (i / 4) as u32 * 5);
        let b = BBox::new(x as f32, y as f32, (x + 20) as f32, (y + 15) as f32);
        let cut = image::imageops::crop_imm(img.rgb(), x, y, 20, 15).to_image();
        visual.push(VisualInput {
            region: Some(format!("r{}", i + 1)),
            bbox: b,
            window: b,
            image: Image::from_rgb(cut),
        });
    }
    Conversation {
        image: ImageFacts {
            name: "tiny_image.png".into(),
            width: img.width(),
            height: img.height(),
        },
        visual,
        ..untooled("What is in the picture?")
    }
}

#[test]
fn image_parts_reach_the_servers_multimodal_handler() {
    let _one = serial();
    // The tiny generated LLaVA pair of the vision issue, loaded by llama.cpp's own clip code.
    let server = LlamaServer::start(
        &common::fixture("llava").join("tiny_llm_llama.gguf"),
        &[
            "--clip_model_path",
            common::fixture("mmproj")
                .join("tiny_mmproj_mlp.gguf")
                .to_str()
                .unwrap(),
            "--chat_format",
            "llava-1-5",
            "--n_ctx",
            "4096",
        ],
    );
    let rt = common::rt();
    let c = controller(&server.base_url(), |c| {
        c.images = Some(true);
        c.manifest.tools = false;
        c.max_tokens = 4;
        c.stream = false;
    });
    assert!(c.accepts_images());
    // Random weights write noise, cut at 4 tokens: the step is "malformed" either way; what
    // counts is what the server took in.
    let prompt_tokens = |crops: usize| {
        let conv = seeing(crops);
        let (stats, shown) = match rt.block_on(c.decide(&conv, &StepContext::default())) {
            Ok(step) => (step.stats, step.shown),
            Err(ControllerError::Malformed { stats, .. }) => (stats, Vec::new()),
            Err(e) => panic!("the server refused the images: {e}"),
        };
        (stats.prompt_tokens, shown)
    };
    let (whole, _) = prompt_tokens(0);
    let (two, _) = prompt_tokens(2);
    let (three, _) = prompt_tokens(3);
    let (five, _) = prompt_tokens(5);
    let (six, _) = prompt_tokens(6);
    // The server took every image in: each separate crop costs its label and the tower's
    // grid of tokens; past four crops they share one Set-of-Mark image, so one more crop
    // costs only its id in the caption — the fixed budget.
    let label_and_image = three - two;
    let in_the_mosaic = six - five;
    eprintln!("prompt tokens by crops: 0 {whole}, 2 {two}, 3 {three}, 5 {five}, 6 {six}");
    assert!(two > whole, "{whole} {two}");
    assert!(
        label_and_image >= in_the_mosaic + 10,
        "one more separate crop: +{label_and_image} tokens; one more in the mosaic: +{in_the_mosaic}"
    );
    assert!(five < whole + 4 * label_and_image, "{whole} {five}");
}

#[test]
fn trace_show_and_draw_give_what_a_remote_model_was_sent() {
    use p2g::controller::openai::images::{prepare, ImageBudget, PartCache};
    let dir = tempfile::tempdir().unwrap();
    let conv = seeing(6);
    let sent = prepare(&conv.visual, &ImageBudget::default(), &PartCache::default());
    let trace = dir.path().join("t.jsonl");
    let mut sink = p2g::trace::TraceSink::to_file(&trace).unwrap();
    let image = common::fixture("mmproj").join("tiny_image.png");
    sink.record(p2g::trace::TraceEvent::Question {
        question: "What is in the picture?".into(),
        region: None,
        image: image.display().to_string(),
        width: conv.image.width,
        height: conv.image.height,
        controller: "openai:tiny".into(),
        tools: Vec::new(),
    });
    sink.record(p2g::trace::TraceEvent::Visual {
        step: 1,
        tokens: 0,
        images: sent.records.clone(),
    });
    drop(sink);
    let p2g = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_p2g"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (shown, _) = p2g(&["trace", "show", trace.to_str().unwrap()]);
    assert!(shown.contains("set-of-mark"), "{shown}");
    assert!(shown.contains("r1,r2,r3,r4,r5,r6"), "{shown}");
    let out = dir.path().join("d.png");
    let (_, said) = p2g(&[
        "trace",
        "draw",
        trace.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let mosaic = dir.path().join("d-mosaic-1-1.png");
    assert!(said.contains("d-mosaic-1-1.png"), "{said}");
    // The same pixels as were sent: rendered again from the image by the recorded layout.
    let drawn = image::open(&mosaic).unwrap().to_rgb8();
    let (_, part) = sent.mosaic.as_ref().unwrap();
    assert_eq!((drawn.width(), drawn.height()), (part.width, part.height));
}

/// A peer that accepts, reads the request, and then says nothing for `secs` seconds.
fn silent(secs: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            std::thread::sleep(Duration::from_secs(secs));
        }
    });
    format!("http://127.0.0.1:{port}/v1")
}

#[test]
fn a_silent_server_times_out_and_a_question_can_be_cancelled() {
    let rt = common::rt();
    let c = controller(&silent(30), |c| {
        c.client.read_timeout = Duration::from_secs(1);
        c.client.max_retries = 0;
    });
    let t0 = std::time::Instant::now();
    let e = rt
        .block_on(c.decide(&untooled("What is the total?"), &StepContext::default()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sent nothing for 1 s") && e.contains("--read-timeout"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Cancelled from another task while waiting: it stops at once, as Ctrl-C does in the REPL.
    let c = controller(&silent(30), |_| {});
    let ctx = StepContext::default();
    let flag = ctx.cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let t0 = std::time::Instant::now();
    let e = rt
        .block_on(c.decide(&untooled("What is the total?"), &ctx))
        .unwrap_err();
    assert!(matches!(e, ControllerError::Cancelled), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[test]
fn the_command_line_says_which_flag_to_fix() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_p2g"))
            .arg("ask")
            .arg(common::fixture("receipt.jpg"))
            .arg("What is the total?")
            .args(args)
            .env_remove("P2G_BASE_URL")
            .env_remove("P2G_MODEL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    let e = run(&["--controller", "openai"]);
    assert!(
        e.contains("needs --base-url URL") && e.contains("--model ID"),
        "{e}"
    );
    let e = run(&[
        "--controller",
        "openai",
        "--base-url",
        "localhost:8080",
        "--model",
        "m",
    ]);
    assert!(
        e.contains("not a usable URL") && e.lines().count() == 1,
        "{e}"
    );
    let e = run(&[
        "--controller",
        "openai",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--box-convention",
        "inches",
    ]);
    assert!(e.contains("valid: pixels, shikra"), "{e}");
    let e = run(&["--box-convention", "kosmos-2"]);
    assert!(e.contains("are for --controller openai"), "{e}");
}
