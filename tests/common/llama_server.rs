//! llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-python[server]`) on loopback, for the
//! tests of `--controller openai`: installed once by `tests/servers/setup_llama_server.sh`
//! (a ~10-minute build the first time, cached under the p2g cache), started per test on a free
//! port, killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use p2g::models::{ModelSource, Store};

/// The venv's python with `llama_cpp.server`, set up on first use (once per test binary).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        super::setup_python(
            "setup_llama_server.sh",
            "the llama.cpp server (llama-cpp-python[server])",
        )
    })
}

/// The controller GGUF p2g fetches (Qwen2.5-Coder-0.5B-Instruct, with its tool-calling template).
pub fn qwen_gguf() -> PathBuf {
    let store = Store::open_default().expect("model store");
    ModelSource::Store(store)
        .file("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct.gguf")
        .expect("the Qwen GGUF is fetched")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

/// A running server; killed on drop.
pub struct LlamaServer {
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl LlamaServer {
    /// Serves `model` on `port` with `extra` server options, waiting until it answers.
    pub fn start_on(port: u16, model: &Path, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("p2g-llama-server-{port}.log"));
        let file = std::fs::File::create(&log).expect("server log");
        let child = Command::new(python())
            .args(["-m", "llama_cpp.server", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .arg("--model")
            .arg(model)
            .args([
                "--model_alias",
                "qwen",
                "--n_ctx",
                "8192",
                "--n_threads",
                "2",
            ])
            .args(["--n_threads_batch", "2", "--verbose", "False"])
            .args(extra)
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("the server starts");
        let mut s = Self { port, child, log };
        s.wait_ready(Duration::from_secs(180));
        s
    }

    pub fn start(model: &Path, extra: &[&str]) -> Self {
        Self::start_on(free_port(), model, extra)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn wait_ready(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the llama.cpp server exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let models = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{}/models", self.base_url()))
                .output();
            // Any answer (401 too, for a server started with a key) means it is up.
            if models.is_ok_and(|o| o.stdout.starts_with(b"200") || o.stdout.starts_with(b"401")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("the llama.cpp server did not answer within {limit:?}");
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
