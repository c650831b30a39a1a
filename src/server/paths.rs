//! Reading images by path, only inside `--allow-dir`.
//!
//! A path a client sends is relative to the allowed folder: absolute paths and `..` are
//! refused before anything is touched. Symbolic links are the subtle part: a link inside the
//! folder may point anywhere, and a checked path can be swapped for a link between the check
//! and the read. So the file is opened first and the check is made on what was opened (the
//! kernel's name for the open descriptor), then read from that same descriptor.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused. The messages never name anything outside the allowed folder.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error(
        "reading images by path is off; start the server with --allow-dir DIR, or upload the image"
    )]
    Disabled,
    #[error("the path must be relative to the server's --allow-dir folder (got an absolute path)")]
    Absolute,
    #[error("the path may not contain '..'")]
    Parent,
    #[error("the path is empty")]
    Empty,
    #[error("no such file under the allowed folder: {0}")]
    NotFound(String),
    #[error("{0} is outside the allowed folder (a symbolic link?)")]
    Outside(String),
    #[error("{0} is not a regular file")]
    NotAFile(String),
    #[error("{path} is {size} bytes; the limit is {limit}")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The folder images may be read from.
#[derive(Debug, Clone)]
pub struct AllowDir {
    root: PathBuf,
}

impl AllowDir {
    /// `dir` must exist; it is resolved once (a link to it is followed here, at start-up).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a folder", root.display()),
            ));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the file `rel` names under the folder, at most `limit` bytes.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, PathError> {
        let rel_path = Path::new(rel);
        if rel.trim().is_empty() {
            return Err(PathError::Empty);
        }
        for c in rel_path.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => return Err(PathError::Parent),
                Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
            }
        }
        let shown = rel.to_string();
        let full = self.root.join(rel_path);
        let file = std::fs::File::open(&full).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PathError::NotFound(shown.clone()),
            _ => PathError::Io {
                path: shown.clone(),
                source: e,
            },
        })?;
        let real = opened_path(&file, &full).map_err(|source| PathError::Io {
            path: shown.clone(),
            source,
        })?;
        if !real.starts_with(&self.root) {
            return Err(PathError::Outside(shown));
        }
        let meta = file.metadata().map_err(|source| PathError::Io {
            path: shown.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(PathError::NotAFile(shown));
        }
        if meta.len() > limit {
            return Err(PathError::TooLarge {
                path: shown,
                size: meta.len(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| PathError::Io {
                path: shown.clone(),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(PathError::TooLarge {
                path: shown,
                size: bytes.len() as u64,
                limit,
            });
        }
        Ok(bytes)
    }
}

/// The path the kernel holds for an open file: what was really opened, links resolved.
fn opened_path(file: &std::fs::File, fallback: &Path) -> std::io::Result<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let _ = fallback;
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        std::fs::canonicalize(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, AllowDir) {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(allowed.path().join("in.png"), b"inside").unwrap();
        std::fs::create_dir(allowed.path().join("sub")).unwrap();
        std::fs::write(allowed.path().join("sub/deep.png"), b"deep").unwrap();
        std::fs::write(outside.path().join("secret.txt"), b"secret").unwrap();
        let dir = AllowDir::new(allowed.path()).unwrap();
        (allowed, outside, dir)
    }

    #[test]
    fn reads_only_inside_the_folder() {
        let (allowed, outside, dir) = setup();
        assert_eq!(dir.read("in.png", 100).unwrap(), b"inside");
        assert_eq!(dir.read("./sub/deep.png", 100).unwrap(), b"deep");
        let secret = outside.path().join("secret.txt");
        assert!(matches!(
            dir.read(secret.to_str().unwrap(), 100),
            Err(PathError::Absolute)
        ));
        assert!(matches!(dir.read("../x", 100), Err(PathError::Parent)));
        assert!(matches!(
            dir.read("sub/../../x", 100),
            Err(PathError::Parent)
        ));
        assert!(matches!(dir.read("", 100), Err(PathError::Empty)));
        assert!(matches!(
            dir.read("nope.png", 100),
            Err(PathError::NotFound(_))
        ));
        assert!(matches!(dir.read("sub", 100), Err(PathError::NotAFile(_))));
        assert!(matches!(
            dir.read("in.png", 3),
            Err(PathError::TooLarge { .. })
        ));
        // A link inside the folder that points out of it is refused, and so is one to the
        // folder's parent; one that stays inside is followed.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&secret, allowed.path().join("link.png")).unwrap();
            let e = dir.read("link.png", 100).unwrap_err();
            assert!(matches!(e, PathError::Outside(_)), "{e}");
            assert!(!e.to_string().contains("secret"), "{e}");
            std::os::unix::fs::symlink(outside.path(), allowed.path().join("out")).unwrap();
            assert!(matches!(
                dir.read("out/secret.txt", 100),
                Err(PathError::Outside(_))
            ));
            std::os::unix::fs::symlink(allowed.path().join("in.png"), allowed.path().join("ok"))
                .unwrap();
            assert_eq!(dir.read("ok", 100).unwrap(), b"inside");
        }
    }
}
