//! The OCR agent with its models behind a real KServe V2 server (Seldon MLServer, PyPI
//! `mlserver`, with the small onnxruntime runtime in tests/servers/mlserver_onnx) on loopback:
//! the same PP-OCRv5 files served there read the same lines as in process, through the
//! library and through `P2G_AGENTS_DIR` at the command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use p2g::agents::ocr::{OcrAgent, OcrConfig};
use p2g::agents::AgentManifest;
use p2g::models::{ModelSource, Store};
use p2g::vision::{Image, LoadOptions};

fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| common::setup_python("setup_mlserver.sh", "MLServer"))
}

/// MLServer serving the OCR bundle's ONNX files; killed on drop.
struct MlServer {
    child: Child,
    port: u16,
    _work: tempfile::TempDir,
}

impl MlServer {
    fn start() -> Self {
        let store = Store::open_default().unwrap();
        let models = store.ensure("ocr").unwrap();
        let port = common::llama_server::free_port();
        let work = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(work.path().join("mlserver.log")).unwrap();
        let child = Command::new(python())
            .arg(common::root().join("tests/servers/start_mlserver.py"))
            .arg("--models")
            .arg(&models)
            .args(["--port", &port.to_string(), "--threads", "2"])
            .arg("--workdir")
            .arg(work.path().join("repo"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start MLServer");
        let mut s = Self {
            child,
            port,
            _work: work,
        };
        let t0 = Instant::now();
        loop {
            let ready = ["ppocrv5_det", "ppocrv5_cls", "ppocrv5_rec"]
                .iter()
                .all(|m| {
                    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                        && http_status(&format!("{}/ready", s.url(m))) == Some(200)
                });
            if ready {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("MLServer exited ({status}); see {:?}", s._work.path());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "MLServer did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self, model: &str) -> String {
        format!("http://127.0.0.1:{}/v2/models/{model}", self.port)
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_status(url: &str) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async { reqwest::get(url).await.ok().map(|r| r.status().as_u16()) })
}

/// The embedded OCR manifest with every model served by `server`.
fn remote_manifest(server: &MlServer) -> String {
    let text = std::fs::read_to_string(common::root().join("agents/ocr.toml")).unwrap();
    format!(
        "{text}\n[endpoints]\ndet = \"{}\"\ncls = \"{}\"\nrec = \"{}\"\n",
        server.url("ppocrv5_det"),
        server.url("ppocrv5_cls"),
        server.url("ppocrv5_rec")
    )
}

#[test]
fn ocr_through_mlserver_reads_the_same_lines_as_in_process() {
    let server = MlServer::start();
    let store = Store::open_default().unwrap();
    let mut cfg = OcrConfig::embedded().unwrap();
    cfg.manifest = AgentManifest::parse(&remote_manifest(&server), "remote ocr.toml").unwrap();
    let remote = OcrAgent::load(
        &ModelSource::Store(store),
        &Store::open_default().unwrap(),
        cfg,
    )
    .unwrap();
    let local = common::agent();
    for img in [
        common::fixture("header.png"),
        common::eval_dir("sroie-dev").join("img/001.jpg"),
    ] {
        let image = Image::open(&img, &LoadOptions::default()).unwrap();
        let a = local.read(&image, &Default::default()).unwrap();
        let b = remote.read(&image, &Default::default()).unwrap();
        let lines = |o: &p2g::agents::ocr::OcrOutput| -> Vec<(String, [i64; 4])> {
            o.lines
                .iter()
                .map(|l| {
                    let r = l.bbox.rounded();
                    (l.text.clone(), [r.x1, r.y1, r.x2, r.y2].map(|v| v as i64))
                })
                .collect()
        };
        assert!(!a.lines.is_empty());
        assert_eq!(lines(&a), lines(&b), "{}", img.display());
    }

    // At the command line: a manifest folder points every command at the server.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ocr.toml"), remote_manifest(&server)).unwrap();
    let run = |agents: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2g"));
        cmd.args(["ocr", "--json"])
            .arg(common::fixture("header.png"));
        match agents {
            Some(d) => cmd.env("P2G_AGENTS_DIR", d),
            None => cmd.env_remove("P2G_AGENTS_DIR"),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_object_mut().unwrap().remove("elapsed_ms");
        v
    };
    assert_eq!(run(Some(dir.path())), run(None));
}

#[test]
fn a_missing_server_or_model_is_a_clear_error() {
    let port = common::llama_server::free_port();
    let text = format!(
        "{}\n[endpoints]\ndet = \"http://127.0.0.1:{port}/v2/models/ppocrv5_det\"\n",
        std::fs::read_to_string(common::root().join("agents/ocr.toml")).unwrap()
    );
    let mut cfg = OcrConfig::embedded().unwrap();
    cfg.manifest = AgentManifest::parse(&text, "ocr.toml").unwrap();
    let store = Store::open_default().unwrap();
    let e = OcrAgent::load(&ModelSource::Store(store.clone()), &store, cfg)
        .err()
        .unwrap();
    let msg = p2g::error_line(&e);
    assert!(
        msg.contains("connection refused") && msg.contains(&port.to_string()),
        "{msg}"
    );

    let server = MlServer::start();
    let text = format!(
        "{}\n[endpoints]\nrec = \"{}\"\n",
        std::fs::read_to_string(common::root().join("agents/ocr.toml")).unwrap(),
        server.url("no_such_model")
    );
    let mut cfg = OcrConfig::embedded().unwrap();
    cfg.manifest = AgentManifest::parse(&text, "ocr.toml").unwrap();
    let e = OcrAgent::load(&ModelSource::Store(store.clone()), &store, cfg)
        .err()
        .unwrap();
    let msg = p2g::error_line(&e);
    assert!(
        msg.contains("HTTP 404") && msg.contains("no_such_model"),
        "{msg}"
    );
}
