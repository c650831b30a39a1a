//! The keys and values of a prompt's first turn, kept on disk between processes.
//!
//! Every question about an image starts with the same system message and tool list (~570
//! tokens for the embedded controller). Within one process the session's KV cache already skips
//! them after the first question; a `p2g ask` per question (an app driving the CLI) would run
//! them every time, 5-7 s on two cores. They take ~23 KB per token for Qwen2.5-0.5B, so saving
//! them once (~13 MB) and reading them back costs milliseconds.
//!
//! An entry is named by a hash of what it depends on and holds it in full, so a lookup
//! compares exactly rather than trusting the hash: the model file (path, size, modification
//! time — a replaced file misses), p2g's version and numerics ([`FORMAT`]), and the tokens.
//! A damaged or foreign file is an error the caller reports and otherwise ignores: the prompt
//! is then simply run. At most [`MAX_ENTRIES`] files are kept, the least recently written go
//! first.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{LanguageModel, Session};

/// Bumped whenever the forward pass's numerics change (kernels, softmax), so entries computed
/// by another build are not mixed with this one's.
pub const FORMAT: u32 = 1;

/// Entries kept in one folder.
pub const MAX_ENTRIES: usize = 8;

const MAGIC: &[u8; 8] = b"P2GKVC\0\x01";

/// Why an entry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PromptCacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable prompt cache entry ({reason}); it will be rewritten")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot snapshot the prompt: {0}")]
    Model(#[from] super::LlmError),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    format: u32,
    p2g: String,
    model: String,
    tokens: Vec<u32>,
}

/// A folder of saved prompt prefixes.
#[derive(Debug, Clone)]
pub struct PromptCache {
    dir: PathBuf,
}

impl PromptCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn header(lm: &LanguageModel, tokens: &[u32]) -> Header {
        Header {
            format: FORMAT,
            p2g: env!("CARGO_PKG_VERSION").to_string(),
            model: lm.fingerprint().to_string(),
            tokens: tokens.to_vec(),
        }
    }

    /// The header as stored, and the entry's file, named by the header's hash.
    fn entry(&self, header: &Header) -> (Vec<u8>, PathBuf) {
        let json = serde_json::to_vec(header).unwrap_or_default();
        let hash = Sha256::digest(&json);
        let name: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(format!("{name}.kv"));
        (json, path)
    }

    /// Starts `session` from the saved keys and values of `tokens`, if there are any;
    /// `Ok(false)` when there are none (or they belong to another model or build).
    pub fn load(&self, session: &mut Session, tokens: &[u32]) -> Result<bool, PromptCacheError> {
        let want = Self::header(session.model(), tokens);
        let (_, path) = self.entry(&want);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(PromptCacheError::Io { path, source }),
        };
        let damaged = |reason: &str| PromptCacheError::Damaged {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let mut r = BufReader::new(file);
        let mut magic = [0u8; 8];
        read_exact(&mut r, &mut magic, &path)?;
        if &magic != MAGIC {
            return Err(damaged("wrong magic bytes"));
        }
        let header_len = read_u64(&mut r, &path)? as usize;
        if header_len > 64 << 20 {
            return Err(damaged("header too long"));
        }
        let mut header = vec![0u8; header_len];
        read_exact(&mut r, &mut header, &path)?;
        let header: Header =
            serde_json::from_slice(&header).map_err(|e| damaged(&format!("header: {e}")))?;
        if header != want {
            // A hash collision or an entry of another build: not ours.
            return Ok(false);
        }
        let n = read_u64(&mut r, &path)? as usize;
        let cfg = session.model().config();
        let expected = 2 * cfg.n_layer * cfg.n_head_kv * cfg.head_dim * tokens.len();
        if n != expected {
            return Err(damaged(&format!(
                "{n} values where {expected} were expected"
            )));
        }
        let mut bytes = vec![0u8; n * 4];
        read_exact(&mut r, &mut bytes, &path)?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        session.restore(tokens, &data)?;
        Ok(true)
    }

    /// Saves the keys and values of `tokens`, the first tokens `session` has run. The entry
    /// is written to a temporary file and renamed, so a reader never sees half of one.
    pub fn store(&self, session: &Session, tokens: &[u32]) -> Result<(), PromptCacheError> {
        let (json, path) = self.entry(&Self::header(session.model(), tokens));
        let data = session.snapshot(tokens.len())?;
        let io = |source: std::io::Error| PromptCacheError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        {
            let mut w = BufWriter::new(tmp.as_file());
            w.write_all(MAGIC).map_err(io)?;
            w.write_all(&(json.len() as u64).to_le_bytes())
                .map_err(io)?;
            w.write_all(&json).map_err(io)?;
            w.write_all(&(data.len() as u64).to_le_bytes())
                .map_err(io)?;
            for v in &data {
                w.write_all(&v.to_le_bytes()).map_err(io)?;
            }
            w.flush().map_err(io)?;
        }
        tmp.persist(&path).map_err(|e| io(e.error))?;
        self.prune(&path);
        Ok(())
    }

    /// Removes the oldest entries beyond [`MAX_ENTRIES`], never `keep`.
    fn prune(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "kv") && p != keep)
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        if entries.len() < MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, p) in &entries[..entries.len() + 1 - MAX_ENTRIES] {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<(), PromptCacheError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PromptCacheError::Damaged {
            path: path.to_path_buf(),
            reason: "cut short".into(),
        },
        _ => PromptCacheError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

fn read_u64(r: &mut impl Read, path: &Path) -> Result<u64, PromptCacheError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, path)?;
    Ok(u64::from_le_bytes(b))
}
