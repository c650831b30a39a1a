//! Loading ONNX Runtime and opening model sessions.
//!
//! p2g links ONNX Runtime dynamically (the `ort` crate's `load-dynamic`), because its
//! download-at-build-time path cannot work offline. The shared library is itself a pinned model
//! file (bundle `onnxruntime`), so the user sets nothing; `P2G_ORT_DYLIB` overrides it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

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
    /// ONNX Runtime's CPU memory arena, shrunk after every run (see [`run_options`]) and
    /// trimmed after every image (see [`release_freed_memory`]). On receipt 028 (1080x1527):
    /// 1.68 s and 316 MB peak RSS with it, 1.95-2.02 s and 392-423 MB with plain malloc.
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

/// A model's declared inputs and outputs: name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<(String, Vec<i64>)>,
    pub outputs: Vec<(String, Vec<i64>)>,
}

/// An ONNX Runtime session behind a lock (sessions run one call at a time), with its run
/// options made once. [`OnnxModel::run`] serves models with one float tensor in and one out —
/// every PaddleOCR model; [`OnnxModel::with_session`] any other interface.
///
/// A model may also live behind a KServe V2 server ([`OnnxModel::remote`]): then `run` sends
/// the tensor there, and only `with_session` (models with several inputs) is unavailable.
pub struct OnnxModel {
    backend: Backend,
}

enum Backend {
    Local(Mutex<(Session, ort::session::RunOptions)>),
    Remote(super::kserve::RemoteModel),
}

impl OnnxModel {
    /// Opens the model at `path` (see [`open_session`]).
    pub fn open(env: &Environment, path: &Path, opts: &SessionOptions) -> Result<Self, ModelError> {
        let session = open_session(env, path, opts)?;
        Ok(Self {
            backend: Backend::Local(Mutex::new((session, run_options(opts.arena)?))),
        })
    }

    /// The model served at `url` (`http://host:port/v2/models/NAME`, KServe V2).
    pub fn remote(url: &str) -> Result<Self, ModelError> {
        let m = super::kserve::RemoteModel::connect(url).map_err(|reason| ModelError::Remote {
            url: url.to_string(),
            reason,
        })?;
        Ok(Self {
            backend: Backend::Remote(m),
        })
    }

    /// The declared shape of the first output (`-1` for dynamic axes), if the model has one.
    pub fn output_dims(&self) -> Option<Vec<i64>> {
        let session = match &self.backend {
            Backend::Local(s) => s,
            Backend::Remote(m) => return Some(m.output_shape().to_vec()),
        };
        let guard = session.lock().ok()?;
        let out = guard.0.outputs().first()?;
        out.dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
    }

    /// The declared inputs and outputs (name and shape, `-1` for a dynamic axis), for models
    /// whose outputs are found by shape rather than by name.
    pub fn signature(&self) -> Result<Signature, String> {
        if let Backend::Remote(m) = &self.backend {
            let list = |t: &[super::kserve::TensorMeta]| {
                t.iter()
                    .map(|t| (t.name.clone(), t.shape.clone()))
                    .collect()
            };
            return Ok(Signature {
                inputs: list(m.inputs()),
                outputs: list(m.outputs()),
            });
        }
        self.with_session(
            |e| e,
            |s, _| {
                let dims = |d: &ort::value::ValueType| -> Vec<i64> {
                    d.tensor_shape()
                        .map(|s| s.iter().copied().collect())
                        .unwrap_or_default()
                };
                Ok(Signature {
                    inputs: s
                        .inputs()
                        .iter()
                        .map(|o| (o.name().to_string(), dims(o.dtype())))
                        .collect(),
                    outputs: s
                        .outputs()
                        .iter()
                        .map(|o| (o.name().to_string(), dims(o.dtype())))
                        .collect(),
                })
            },
        )
    }

    /// A custom metadata value of the model (e.g. the class names a PaddleDetection export
    /// stores under `character`).
    pub fn custom_metadata(&self, key: &str) -> Option<String> {
        self.with_session(
            |e| e,
            |s, _| Ok(s.metadata().ok().and_then(|m| m.custom(key))),
        )
        .ok()
        .flatten()
    }

    /// Runs the model on `input` laid out as `shape` and hands the first output's shape and
    /// data to `f` (no copy). Runtime failures are turned into the caller's error by `err`.
    pub fn run<R, E>(
        &self,
        shape: &[usize],
        input: &[f32],
        err: impl Fn(String) -> E,
        f: impl FnOnce(&[i64], &[f32]) -> Result<R, E>,
    ) -> Result<R, E> {
        if let Backend::Remote(m) = &self.backend {
            let (dims, data) = m.infer(shape, input).map_err(&err)?;
            return f(&dims, &data);
        }
        let tensor = TensorRef::from_array_view((shape, input)).map_err(|e| err(e.to_string()))?;
        self.with_session(&err, |session, run_opts| {
            let outputs = session
                .run_with_options(ort::inputs![tensor], run_opts)
                .map_err(|e| err(e.to_string()))?;
            let (out_shape, data) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(e.to_string()))?;
            let dims: Vec<i64> = out_shape.iter().copied().collect();
            f(&dims, data)
        })
    }

    /// Runs `f` with the session and its run options, holding the lock.
    pub fn with_session<R, E>(
        &self,
        err: impl Fn(String) -> E,
        f: impl FnOnce(&mut Session, &ort::session::RunOptions) -> Result<R, E>,
    ) -> Result<R, E> {
        let session = match &self.backend {
            Backend::Local(s) => s,
            Backend::Remote(m) => {
                return Err(err(format!(
                    "the model at {} is served over KServe V2, which p2g supports for \
                     one-tensor models only; this agent needs it in process",
                    m.url()
                )))
            }
        };
        let mut guard = session
            .lock()
            .map_err(|_| err("an earlier call panicked inside this model".into()))?;
        let (session, run_opts) = &mut *guard;
        f(session, run_opts)
    }
}

/// Hands memory freed by the last inference back to the operating system.
///
/// ONNX Runtime's arena, shrunk after each run, returns its chunks to the C allocator, and
/// glibc keeps freed heap memory (raising its mmap threshold after each large free, so later
/// large buffers land on the heap too). Over images of different sizes that ratchets a
/// long-lived process up: 863 MB peak after nine receipts in one `p2g ocr` call; trimming
/// after each image keeps it at 348 MB, about the largest single image (316 MB).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages of the allocator's own heap to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}
