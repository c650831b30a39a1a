//! Loading ONNX Runtime and opening model sessions.
//!
//! p2g links ONNX Runtime dynamically (the `ort` crate's `load-dynamic`), because its
//! download-at-build-time path cannot work offline. The shared library is itself a pinned model
//! file (bundle `onnxruntime`), so the user sets nothing; `P2G_ORT_DYLIB` overrides it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use super::{ModelError, Store};

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
static ENV_PATH: OnceLock<PathBuf> = OnceLock::new();

/// The ONNX Runtime library this process should load: `$P2G_ORT_DYLIB`, else the pinned one
/// (fetched on first use).
pub fn library_path(store: &Store) -> Result<PathBuf, ModelError> {
    if let Some(p) = std::env::var_os("P2G_ORT_DYLIB").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        return Err(ModelError::RuntimeUnsupported(format!(
            "{}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        )));
    }
    let bundle = store.manifest().bundle("onnxruntime")?;
    let name = bundle.files[0].name.clone();
    Ok(store.ensure("onnxruntime")?.join(name))
}

/// The process-wide ONNX Runtime environment, loading the library on first call. ONNX Runtime
/// allows one environment per process, so later calls return the first one whatever `store`.
pub fn environment(store: &Store) -> Result<&'static Environment, ModelError> {
    if let Some(res) = ENV.get() {
        return res.as_ref().map_err(|reason| ModelError::Runtime {
            path: ENV_PATH.get().cloned().unwrap_or_default(),
            reason: reason.clone(),
        });
    }
    let path = library_path(store)?;
    let res = ENV.get_or_init(|| {
        let _ = ENV_PATH.set(path.clone());
        if !path.is_file() {
            return Err("the file does not exist".to_string());
        }
        ort::init_from(&path)
            .map_err(|e| e.to_string())?
            .with_name("p2g")
            .build()
            .map_err(|e| e.to_string())
    });
    res.as_ref().map_err(|reason| ModelError::Runtime {
        path: ENV_PATH.get().cloned().unwrap_or(path),
        reason: reason.clone(),
    })
}

/// How to run a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Threads inside one operator (the knob that matters on a CPU); 0 lets ONNX Runtime decide.
    pub intra_threads: usize,
    /// ONNX Runtime's CPU memory arena, shrunk after every run (see [`run_options`]). On
    /// receipt 028 (1080x1527): 1.72 s and 318 MB peak RSS with it, 2.02 s and 392 MB with
    /// plain malloc (whose freed heap is not returned), 1.9 s and 360 MB without shrinking.
    pub arena: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            intra_threads: default_threads(),
            arena: true,
        }
    }
}

/// The number of cores available to this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Options for one inference call. With the arena on (`arena`), it is shrunk back after every
/// call, so buffers sized for the largest input seen are not held for the rest of the process.
pub fn run_options(arena: bool) -> Result<ort::session::RunOptions, ModelError> {
    let err = |e: ort::Error| ModelError::Session {
        path: PathBuf::new(),
        reason: e.to_string(),
    };
    let mut o = ort::session::RunOptions::new().map_err(err)?;
    if arena {
        o.set("memory.enable_memory_arena_shrinkage", "cpu:0")
            .map_err(err)?;
    }
    Ok(o)
}

/// Opens an ONNX model. A file that is not a valid model gets [`ModelError::Session`] naming it.
pub fn open_session(
    env: &Environment,
    path: &Path,
    opts: &SessionOptions,
) -> Result<Session, ModelError> {
    let err = |reason: String| ModelError::Session {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(err("the file does not exist".into()));
    }
    let builder = Session::builder(env).map_err(|e| err(e.to_string()))?;
    // ort's builder errors carry the builder back; only the message matters here.
    let fail = |e: ort::Error<ort::session::builder::SessionBuilder>| err(e.to_string());
    let mut builder = builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(fail)?
        .with_intra_threads(opts.intra_threads)
        .map_err(fail)?
        .with_inter_threads(1)
        .map_err(fail)?
        .with_memory_pattern(opts.arena)
        .map_err(fail)?
        .with_execution_providers([ort::ep::CPU::default()
            .with_arena_allocator(opts.arena)
            .build()])
        .map_err(fail)?;
    builder
        .commit_from_file(path)
        .map_err(|e| err(e.to_string()))
}
