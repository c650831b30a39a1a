//! An in-process language model read from one GGUF file: weights, tokenizer and chat template
//! all come from the file, so nothing else has to be fetched.
//!
//! [`LanguageModel`] is the loaded, immutable model; a [`Session`] is one conversation's state
//! (KV cache plus the tokens it holds). A session is driven in small steps — set the prompt,
//! push forced text, let the model [`choose`](Session::choose) among strings or generate
//! [`free`](Session::free) text under a filter — which is how the embedded controller makes its
//! tool calls well-formed by construction. Setting a prompt that shares a prefix with what the
//! session already holds only runs the new tokens.

pub mod kernels;
mod ops;
pub mod prompt_cache;
pub mod qgemm;
pub mod transformer;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;

use crate::controller::StepStats;

pub use transformer::{Arch, Config, KvCache, Transformer};

/// Errors of the in-process language model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable GGUF model: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("the model file is damaged or not supported: {0}")]
    BadModel(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(
        "the conversation needs {needed} tokens but the controller's context holds {max}; \
         ask about a smaller region or start a new conversation"
    )]
    ContextFull { needed: usize, max: usize },
    #[error("generation was cancelled")]
    Cancelled,
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Tokens fed to the model per forward pass: bounds the attention scratch memory.
const PREFILL_CHUNK: usize = 512;

/// A loaded model with its tokenizer.
pub struct LanguageModel {
    name: String,
    model: Transformer,
    tokenizer: Tokenizer,
    /// Every token's bytes (byte-level BPE undone), for constrained decoding and streaming.
    token_bytes: Vec<Vec<u8>>,
    /// Control tokens (`<|im_start|>` …): never produced by constrained steps.
    special: Vec<bool>,
    /// Tokens that end a turn.
    stop_tokens: Vec<u32>,
    chat_template: Option<String>,
    /// Which file this is, as far as a cache of its computations must know: path, size and
    /// modification time (see [`prompt_cache`]).
    fingerprint: String,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanguageModel")
            .field("name", &self.name)
            .field("config", self.model.config())
            .finish()
    }
}

/// GPT-2's byte-to-printable-character table, inverted: token strings in a byte-level BPE
/// vocabulary spell bytes with these characters.
fn byte_decoder() -> std::collections::HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8)))
        .collect()
}

/// What a GGUF says about text: its tokenizer and the token facts constrained decoding needs.
struct TextSide {
    name: String,
    tokenizer: Tokenizer,
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    stop_tokens: Vec<u32>,
    chat_template: Option<String>,
}

impl TextSide {
    fn from_gguf(ct: &gguf_file::Content, path: &Path) -> Result<Self, LlmError> {
        let bad = |reason: String| LlmError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut tokenizer = Tokenizer::from_gguf(ct).map_err(|e| bad(e.to_string()))?;
        let pre = ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        fix_pre_tokenizer(&mut tokenizer, &pre);
        let tokens: Vec<String> = ct
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| {
                v.iter()
                    .map(|t| t.to_string().cloned().unwrap_or_default())
                    .collect()
            })
            .ok_or_else(|| bad("no tokenizer.ggml.tokens".into()))?;
        let types: Vec<u32> = ct
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|t| t.to_u32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let dec = byte_decoder();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| {
                t.chars()
                    .map(|c| dec.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| t.as_bytes().to_vec())
            })
            .collect();
        let special: Vec<bool> = (0..tokens.len())
            .map(|i| matches!(types.get(i), Some(2..=5)))
            .collect();
        let mut stop_tokens = Vec::new();
        if let Some(eos) = ct
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            stop_tokens.push(eos);
        }
        for s in ["<|im_end|>", "<|endoftext|>"] {
            if let Some(id) = tokens.iter().position(|t| t == s) {
                stop_tokens.push(id as u32);
            }
        }
        let chat_template = ct
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        let name = ct
            .metadata
            .get("general.name")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self {
            name,
            tokenizer,
            token_bytes,
            special,
            stop_tokens,
            chat_template,
        })
    }
}

impl LanguageModel {
    /// Loads a GGUF file. `max_context` caps the positions the rotary tables (and so the KV
    /// cache) cover.
    pub fn load(path: &Path, max_context: usize) -> Result<Self, LlmError> {
        let file = File::open(path).map_err(|source| LlmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let bad = |reason: String| LlmError::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let ct = gguf_file::Content::read(&mut reader).map_err(|e| bad(e.to_string()))?;
        let cfg = Config::from_gguf(&ct).map_err(bad)?;
        // The tokenizer (0.8 s: 151k tokens and merges for Qwen) is built while the weights
        // are read (1.1 s): both only read the parsed header.
        let (text, model) = std::thread::scope(|scope| {
            let text = scope.spawn(|| {
                let _span = tracing::debug_span!("tokenizer").entered();
                TextSide::from_gguf(&ct, path)
            });
            let model = {
                let _span = tracing::debug_span!("weights").entered();
                Transformer::load(&ct, &mut reader, cfg, max_context)
            };
            let text = text
                .join()
                .unwrap_or_else(|_| Err(bad("the tokenizer could not be built".into())));
            (text, model)
        });
        let text = text?;
        let model = model.map_err(|e| match e {
            LlmError::BadModel(reason) => bad(reason),
            e => e,
        })?;
        let TextSide {
            name,
            tokenizer,
            token_bytes,
            special,
            stop_tokens,
            chat_template,
        } = text;
        let fingerprint = file_fingerprint(path);
        Ok(Self {
            name,
            model,
            tokenizer,
            token_bytes,
            special,
            stop_tokens,
            chat_template,
            fingerprint,
        })
    }

    /// Path, size and modification time of the file this model was read from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The length of the prompt's first turn (the system message), up to and including the
    /// token that ends it; `None` if no turn ends in `tokens`.
    pub fn first_turn_len(&self, tokens: &[u32]) -> Option<usize> {
        tokens.iter().position(|&t| self.is_stop(t)).map(|i| i + 1)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }

    pub fn max_context(&self) -> usize {
        self.model.max_context()
    }

    /// Token ids below this are the vocabulary's; the ones above stand for spliced
    /// embeddings ([`Session::splice`]).
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Uses `template` as the chat template (for a GGUF that carries none).
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
    }

    /// The chat template the GGUF carries (a Jinja template), if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Tokenises text; special-token strings (`<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| LlmError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The bytes a token stands for.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.token_bytes(i).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text tokens whose first byte is `first`.
    pub fn plain_tokens_starting_with(&self, first: u8) -> Vec<u32> {
        (0..self.token_bytes.len() as u32)
            .filter(|&id| {
                let bytes = self.token_bytes(id);
                self.is_plain(id, bytes) && bytes[0] == first
            })
            .collect()
    }

    /// A token that spells text: not empty, not a control token.
    pub fn is_plain(&self, id: u32, bytes: &[u8]) -> bool {
        !bytes.is_empty() && !self.special.get(id as usize).copied().unwrap_or(false)
    }

    fn is_stop(&self, id: u32) -> bool {
        self.stop_tokens.contains(&id)
    }
}

/// Path, size and modification time of a model file: what a cache of its computations keys on.
fn file_fingerprint(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {size} {mtime}", abs.display())
}

/// The GGUF metadata names a pre-tokenizer candle only knows for some models; SmolLM's
/// (`smollm`) splits digits one by one and adds no prefix space, as its tokenizer.json does.
fn fix_pre_tokenizer(tok: &mut Tokenizer, pre: &str) {
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    if pre == "smollm" {
        let seq: Vec<PreTokenizerWrapper> = vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ];
        tok.with_pre_tokenizer(Some(Sequence::new(seq)));
    }
}

/// Where `bytes`, appended to the JSON string contents `so_far`, holds the unescaped quote
/// that closes the string.
fn string_close(so_far: &[u8], bytes: &[u8]) -> Option<usize> {
    let trailing = so_far.iter().rev().take_while(|&&b| b == b'\\').count();
    let mut escaped = trailing % 2 == 1;
    for (i, &b) in bytes.iter().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Passes the whole characters of `text[shown..]` to `on_text` (a token may end inside a
/// multi-byte character); returns the new `shown`.
fn stream_whole_chars(text: &[u8], shown: usize, on_text: &mut impl FnMut(&str)) -> usize {
    let valid = match std::str::from_utf8(&text[shown..]) {
        Ok(s) => s.len(),
        Err(e) => e.valid_up_to(),
    };
    if let Ok(s) = std::str::from_utf8(&text[shown..shown + valid]) {
        if !s.is_empty() {
            on_text(s);
        }
    }
    shown + valid
}

/// The index of the largest logit.
fn argmax(logits: &[f32]) -> Option<u32> {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
}

/// Why free generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    /// The text reached a stop condition of the caller.
    Stop,
    /// The token budget ran out.
    Length,
}

/// One conversation's state on a shared model.
pub struct Session {
    lm: Arc<LanguageModel>,
    cache: KvCache,
    /// Tokens whose keys and values are in the cache.
    fed: Vec<u32>,
    /// Tokens decided but not yet run.
    pending: Vec<u32>,
    /// Logits after the last fed token, while nothing is pending.
    logits: Option<Vec<f32>>,
    cancel: Arc<AtomicBool>,
    /// Counters since the last [`Session::take_stats`].
    stats: StepStats,
    /// Sum of the log-probabilities of the tokens chosen since [`Session::take_logprob`].
    logprob: f64,
    /// [`Session::free_string`] gives up once `logprob` falls below this (a search that
    /// already has a better candidate need not finish a worse one).
    give_up_below: f64,
    /// Embeddings spliced into prompts (images'), see [`Session::splice`].
    spliced: Spliced,
}

/// Rows of embeddings a session's prompts may place at token positions, each block under a
/// key naming its content: ids past the vocabulary point into it. Blocks are only appended,
/// so an id keeps meaning the same rows, and the KV cache of a prompt holding it stays valid.
#[derive(Default)]
struct Spliced {
    rows: Vec<f32>,
    blocks: std::collections::HashMap<String, (u32, usize)>,
}

/// Spliced rows a session keeps before starting afresh (the images of a long REPL session).
const MAX_SPLICED_ROWS: usize = 1 << 15;

/// A point of a session to come back to: its length and the logits there.
pub struct Mark {
    len: usize,
    logits: Vec<f32>,
}

/// log Σ exp(logits): log-probabilities are logits minus this.
fn log_norm(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    max as f64 + sum.ln()
}

impl Session {
    pub fn new(lm: Arc<LanguageModel>) -> Self {
        Self {
            lm,
            cache: KvCache::default(),
            fed: Vec::new(),
            pending: Vec::new(),
            logits: None,
            cancel: Arc::new(AtomicBool::new(false)),
            stats: StepStats::default(),
            logprob: 0.0,
            give_up_below: f64::NEG_INFINITY,
            spliced: Spliced::default(),
        }
    }

    /// The token ids standing for the embeddings spliced under `key`, if they are.
    pub fn spliced(&self, key: &str) -> Option<Vec<u32>> {
        self.spliced
            .blocks
            .get(key)
            .map(|&(first, n)| (first..first + n as u32).collect())
    }

    /// Makes `rows` (flat, `n_embd` wide: an image's embeddings) placeable in a prompt, under
    /// `key` (what they show and how they were made): returns the token ids that stand for
    /// them. The same key gives the same ids, so a prompt that repeats an image reuses its
    /// cached positions.
    pub fn splice(&mut self, key: &str, rows: &[f32]) -> Result<Vec<u32>, LlmError> {
        if let Some(ids) = self.spliced(key) {
            return Ok(ids);
        }
        let width = self.lm.config().n_embd;
        if rows.is_empty() || !rows.len().is_multiple_of(width) {
            return Err(LlmError::Internal(format!(
                "{} values are not rows of the model's width {width}",
                rows.len()
            )));
        }
        let held = self.spliced.rows.len() / width;
        if held + rows.len() / width > MAX_SPLICED_ROWS {
            // Start afresh: no cached position may point at rows that are gone.
            self.spliced = Spliced::default();
            self.fed.clear();
            self.pending.clear();
            self.cache.truncate(0);
            self.logits = None;
        }
        let first = (self.lm.vocab_size() + self.spliced.rows.len() / width) as u32;
        let n = rows.len() / width;
        self.spliced.rows.extend_from_slice(rows);
        self.spliced.blocks.insert(key.to_string(), (first, n));
        Ok((first..first + n as u32).collect())
    }

    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.lm
    }

    /// Generation checks this flag between forward passes; a set flag ends it with
    /// [`LlmError::Cancelled`].
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = flag;
    }

    /// The prompt counters (prompt and reused tokens) so far, to put back with
    /// [`Session::restore_prompt_counts`] after switching prompts only to score something.
    pub fn stats_snapshot(&self) -> (usize, usize) {
        (self.stats.prompt_tokens, self.stats.reused_tokens)
    }

    pub fn restore_prompt_counts(&mut self, (prompt, reused): (usize, usize)) {
        self.stats.prompt_tokens = prompt;
        self.stats.reused_tokens = reused;
    }

    pub fn take_stats(&mut self) -> StepStats {
        std::mem::take(&mut self.stats)
    }

    /// The summed log-probability of the tokens chosen since the last call.
    pub fn take_logprob(&mut self) -> f64 {
        std::mem::take(&mut self.logprob)
    }

    /// Makes [`Session::free_string`] give up once the chosen tokens' summed log-probability
    /// falls below `floor` (`f64::NEG_INFINITY`: never).
    pub fn give_up_below(&mut self, floor: f64) {
        self.give_up_below = floor;
    }

    /// Remembers this point (running what is pending) so [`Session::rewind`] can return to it.
    pub fn mark(&mut self) -> Result<Mark, LlmError> {
        let logits = self.logits()?.to_vec();
        Ok(Mark {
            len: self.fed.len(),
            logits,
        })
    }

    /// Forgets everything after `mark`; its logits are restored, so nothing is run again.
    pub fn rewind(&mut self, mark: &Mark) {
        self.pending.clear();
        self.fed.truncate(mark.len);
        self.cache.truncate(mark.len);
        self.logits = Some(mark.logits.clone());
    }

    /// Every token of the conversation (fed or pending).
    pub fn tokens(&self) -> Vec<u32> {
        self.fed.iter().chain(&self.pending).copied().collect()
    }

    /// The tokens after `mark` (fed or pending).
    pub fn tokens_since(&self, mark: &Mark) -> Vec<u32> {
        self.fed
            .iter()
            .chain(&self.pending)
            .skip(mark.len)
            .copied()
            .collect()
    }

    /// Appends tokens chosen earlier (replaying a search's winner); they run lazily.
    pub fn push_tokens(&mut self, ids: &[u32]) {
        self.pending.extend_from_slice(ids);
        self.logits = None;
    }

    /// The `k` most likely next tokens that `allowed` accepts, with their log-probabilities,
    /// most likely first.
    pub fn top_allowed(
        &mut self,
        k: usize,
        mut allowed: impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<Vec<(u32, f64)>, LlmError> {
        let lm = self.lm.clone();
        let logits = self.logits()?;
        let norm = log_norm(logits);
        let mut ids: Vec<u32> = (0..logits.len() as u32)
            .filter(|&id| allowed(id, lm.token_bytes(id)))
            .collect();
        ids.sort_unstable_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        Ok(ids
            .into_iter()
            .take(k)
            .map(|id| (id, logits[id as usize] as f64 - norm))
            .collect())
    }

    /// The next-token logits after everything the session holds (running what is pending).
    pub fn next_logits(&mut self) -> Result<Vec<f32>, LlmError> {
        Ok(self.logits()?.to_vec())
    }

    /// The log-probability of each of `ids` as the next token.
    pub fn next_logprobs(&mut self, ids: &[u32]) -> Result<Vec<f64>, LlmError> {
        let logits = self.logits()?;
        let norm = log_norm(logits);
        Ok(ids
            .iter()
            .map(|&id| {
                logits
                    .get(id as usize)
                    .map_or(f64::NEG_INFINITY, |&l| l as f64 - norm)
            })
            .collect())
    }

    /// The log-probability of `ids` as the continuation (one forward pass, all of them run):
    /// scoring a few known candidates this way is exact where a greedy search is not.
    pub fn score(&mut self, ids: &[u32]) -> Result<f64, LlmError> {
        Ok(self.score_prefixes(ids, &[])?.last().map_or(0.0, |r| r.0))
    }

    /// Runs `ids` as the continuation (one forward pass) and returns, after each of its
    /// tokens, the log-probability of the continuation so far and the best log-probability
    /// among `enders` as the token after it. Every prefix of `ids` that is itself a candidate
    /// (a word of a longer span) is then scored exactly by the same pass: `prefix + ender`.
    pub fn score_prefixes(
        &mut self,
        ids: &[u32],
        enders: &[u32],
    ) -> Result<Vec<(f64, f64)>, LlmError> {
        let Some(&first) = ids.first() else {
            return Ok(Vec::new());
        };
        self.check_cancel()?;
        let mut total = self.next_logprobs(&[first])?[0];
        let vocab = self.logits()?.len();
        let started = Instant::now();
        let (model, cache) = (&self.lm.model, &mut self.cache);
        let spliced = &self.spliced.rows;
        let mut rows = rayon::scope(|_| model.forward_from(ids, cache, 0, spliced))?;
        self.fed.extend_from_slice(ids);
        self.stats.prefill_ms += started.elapsed().as_secs_f64() * 1e3;
        self.stats.prefill_tokens += ids.len();
        let mut out = Vec::with_capacity(ids.len());
        for (k, row) in rows.chunks(vocab).enumerate() {
            let norm = log_norm(row);
            let end = enders
                .iter()
                .filter_map(|&e| row.get(e as usize))
                .fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64 - norm));
            out.push((total, end));
            if let Some(&next) = ids.get(k + 1) {
                total += row
                    .get(next as usize)
                    .map_or(f64::NEG_INFINITY, |&l| l as f64 - norm);
            }
        }
        self.logits = Some(rows.split_off(rows.len().saturating_sub(vocab)));
        Ok(out)
    }

    /// Appends `id` as chosen with log-probability `logprob` (one of [`Session::top_allowed`]).
    pub fn force(&mut self, id: u32, logprob: f64) {
        self.logprob += logprob;
        self.accept(id);
    }

    /// The keys and values of the first `len` tokens run (see [`KvCache::export`]).
    pub fn snapshot(&self, len: usize) -> Result<Vec<f32>, LlmError> {
        if len > self.fed.len() {
            return Err(LlmError::Internal(format!(
                "snapshot of {len} tokens but {} have been run",
                self.fed.len()
            )));
        }
        Ok(self.cache.export(len)?)
    }

    /// Starts this session from a snapshot of `tokens` taken by [`Session::snapshot`] on the
    /// same model, as if they had been run here.
    pub fn restore(&mut self, tokens: &[u32], data: &[f32]) -> Result<(), LlmError> {
        let model = &self.lm.model;
        self.cache = KvCache::import(model.config(), tokens.len(), data, model.device())?;
        self.fed = tokens.to_vec();
        self.pending.clear();
        self.logits = None;
        Ok(())
    }

    /// Tokens the conversation holds (fed and pending).
    pub fn len(&self) -> usize {
        self.fed.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `tokens` the conversation so far, keeping the cached prefix it shares with what
    /// the session held.
    pub fn set_prompt(&mut self, tokens: &[u32]) {
        let held: Vec<u32> = self.fed.iter().chain(&self.pending).copied().collect();
        let mut common = held
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(self.fed.len());
        // The last prompt token is run again so its logits exist.
        if common == tokens.len() {
            common = common.saturating_sub(1);
        }
        self.fed.truncate(common);
        self.cache.truncate(common);
        self.pending = tokens[common..].to_vec();
        self.logits = None;
        self.stats.prompt_tokens += tokens.len();
        self.stats.reused_tokens += common;
    }

    /// Appends text the model did not choose (forced by the caller).
    pub fn push_text(&mut self, text: &str) -> Result<(), LlmError> {
        let ids = self.lm.encode(text)?;
        self.pending.extend(ids);
        self.logits = None;
        Ok(())
    }

    fn check_cancel(&self) -> Result<(), LlmError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(LlmError::Cancelled);
        }
        Ok(())
    }

    /// Runs whatever is pending and returns the next-token logits.
    fn logits(&mut self) -> Result<&[f32], LlmError> {
        if self.logits.is_none() || !self.pending.is_empty() {
            if self.pending.is_empty() {
                // Only possible right after a prompt equal to the cache: re-run the last token.
                let last = self
                    .fed
                    .pop()
                    .ok_or_else(|| LlmError::Internal("no tokens to run".into()))?;
                self.cache.truncate(self.fed.len());
                self.pending.push(last);
            }
            let pending = std::mem::take(&mut self.pending);
            let started = Instant::now();
            let mut out = Vec::new();
            // Equal chunks: a 543-token prompt as 272 + 271, not 512 + a 31-token tail that
            // runs as badly as either.
            let per = pending
                .len()
                .div_ceil(pending.len().div_ceil(PREFILL_CHUNK).max(1));
            for chunk in pending.chunks(per.max(1)) {
                self.check_cancel()?;
                let (model, cache) = (&self.lm.model, &mut self.cache);
                // On a rayon worker: the quantised products and candle-nn's norms, softmax and rope
                // split work across the rayon pool, and a caller outside it is one thread more
                // than there are cores, competing with workers that spin between the ~170
                // small products of a token (measured: decode 10.0 -> 10.8-11.0 tok/s).
                let spliced = &self.spliced.rows;
                let forward =
                    rayon::scope(|_| model.forward_from(chunk, cache, chunk.len() - 1, spliced));
                match forward {
                    Ok(l) => out = l,
                    Err(e) => {
                        // Keep the session consistent with the cache it has.
                        self.fed.truncate(self.cache.len().min(self.fed.len()));
                        return Err(e);
                    }
                }
                self.fed.extend_from_slice(chunk);
            }
            let ms = started.elapsed().as_secs_f64() * 1e3;
            if pending.len() == 1 {
                self.stats.decode_ms += ms;
            } else {
                self.stats.prefill_ms += ms;
                self.stats.prefill_tokens += pending.len();
            }
            self.logits = Some(out);
        }
        self.logits
            .as_deref()
            .ok_or_else(|| LlmError::Internal("no logits".into()))
    }

    fn accept(&mut self, id: u32) {
        self.pending.push(id);
        self.logits = None;
        self.stats.generated_tokens += 1;
    }

    /// The highest-scoring token that `allowed` accepts: the top candidates are tried first,
    /// then the whole vocabulary.
    fn best_allowed(
        &mut self,
        mut allowed: impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<Option<u32>, LlmError> {
        let lm = self.lm.clone();
        let logits = self.logits()?;
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        const TOP: usize = 64;
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if idx.len() > TOP {
            idx.select_nth_unstable_by(TOP, by_logit);
            let (top, _) = idx.split_at_mut(TOP);
            top.sort_unstable_by(by_logit);
        }
        let best = idx
            .iter()
            .take(TOP)
            .copied()
            .find(|&id| allowed(id, lm.token_bytes(id)))
            .or_else(|| {
                let mut best: Option<u32> = None;
                for &id in idx.iter().skip(TOP) {
                    if best.is_some_and(|b| logits[id as usize] <= logits[b as usize]) {
                        continue;
                    }
                    if allowed(id, lm.token_bytes(id)) {
                        best = Some(id);
                    }
                }
                best
            });
        let logprob = best.map_or(0.0, |id| logits[id as usize] as f64 - log_norm(logits));
        self.logprob += logprob;
        Ok(best)
    }

    /// Whether the model's most likely next token starts with `prefix` (or is a prefix of it).
    pub fn next_starts_with(&mut self, prefix: &[u8]) -> Result<bool, LlmError> {
        let b = self.peek()?;
        Ok(!b.is_empty() && (b.starts_with(prefix) || prefix.starts_with(&b)))
    }

    /// Lets the model pick one of `options` (none a prefix of another), token by token under
    /// the constraint that the text stays a prefix of some option. Returns the option's index.
    pub fn choose(&mut self, options: &[String]) -> Result<usize, LlmError> {
        if options.is_empty() {
            return Err(LlmError::Internal("choose among no options".into()));
        }
        let mut text: Vec<u8> = Vec::new();
        loop {
            self.check_cancel()?;
            if let Some(i) = options.iter().position(|o| o.as_bytes() == text.as_slice()) {
                return Ok(i);
            }
            let lm = self.lm.clone();
            let next = self.best_allowed(|id, bytes| {
                if !lm.is_plain(id, bytes) {
                    return false;
                }
                options.iter().any(|o| {
                    let o = o.as_bytes();
                    o.len() >= text.len() + bytes.len()
                        && o.starts_with(&text)
                        && &o[text.len()..text.len() + bytes.len()] == bytes
                })
            })?;
            let id =
                next.ok_or_else(|| LlmError::Internal("no token continues any option".into()))?;
            text.extend_from_slice(self.lm.token_bytes(id));
            self.accept(id);
        }
    }

    /// Free generation: greedy tokens (control tokens excluded, except those ending the turn),
    /// each accepted only if `allowed(text_so_far, token_bytes)`; stops at the end of the turn,
    /// when `done(text)` says so, or after `max_tokens`. `on_text` sees the text as it grows.
    pub fn free(
        &mut self,
        max_tokens: usize,
        mut allowed: impl FnMut(&[u8], &[u8]) -> bool,
        mut done: impl FnMut(&[u8]) -> bool,
        mut on_text: impl FnMut(&str),
    ) -> Result<(String, StopReason), LlmError> {
        let mut text: Vec<u8> = Vec::new();
        let mut shown = 0usize;
        for _ in 0..max_tokens {
            self.check_cancel()?;
            let lm = self.lm.clone();
            let next = self.best_allowed(|id, bytes| {
                if lm.is_stop(id) {
                    return true;
                }
                lm.is_plain(id, bytes) && allowed(&text, bytes)
            })?;
            let Some(id) = next else {
                return Ok((
                    String::from_utf8_lossy(&text).into_owned(),
                    StopReason::Stop,
                ));
            };
            if lm.is_stop(id) {
                // The end-of-turn token is part of the conversation the next prompt renders.
                self.accept(id);
                return Ok((
                    String::from_utf8_lossy(&text).into_owned(),
                    StopReason::EndOfTurn,
                ));
            }
            text.extend_from_slice(lm.token_bytes(id));
            self.accept(id);
            shown = stream_whole_chars(&text, shown, &mut on_text);
            if done(&text) {
                return Ok((
                    String::from_utf8_lossy(&text).into_owned(),
                    StopReason::Stop,
                ));
            }
        }
        Ok((
            String::from_utf8_lossy(&text).into_owned(),
            StopReason::Length,
        ))
    }

    /// Generates the contents of a JSON string (the opening quote already written) up to and
    /// including its closing quote, on one line. A token that would close the string and go
    /// on (`",`) is replaced by the bare quote, so what follows is the caller's to write.
    /// `allowed(so_far, piece, closes)` vets each candidate: `piece` is the token's text up to
    /// the closing quote, `closes` whether it closes the string. Returns the contents without
    /// the quote and whether the string was closed.
    pub fn free_string(
        &mut self,
        max_tokens: usize,
        mut allowed: impl FnMut(&[u8], &[u8], bool) -> bool,
        mut on_text: impl FnMut(&str),
    ) -> Result<(String, bool), LlmError> {
        let quote = self
            .lm
            .encode("\"")?
            .first()
            .copied()
            .ok_or_else(|| LlmError::Tokenizer("no token for a quote".into()))?;
        let mut text: Vec<u8> = Vec::new();
        let mut shown = 0usize;
        for _ in 0..max_tokens {
            self.check_cancel()?;
            let lm = self.lm.clone();
            let next = self.best_allowed(|id, bytes| {
                if !lm.is_plain(id, bytes) || bytes.iter().any(|&b| b < 0x20) {
                    return false;
                }
                match string_close(&text, bytes) {
                    Some(i) => allowed(&text, &bytes[..i], true),
                    None => allowed(&text, bytes, false),
                }
            })?;
            let Some(id) = next else { break };
            if self.logprob < self.give_up_below {
                break;
            }
            let bytes = lm.token_bytes(id);
            match string_close(&text, bytes) {
                Some(i) => {
                    text.extend_from_slice(&bytes[..i]);
                    self.accept(quote);
                    if let Ok(s) = std::str::from_utf8(&text[shown..]) {
                        on_text(s);
                    }
                    return Ok((String::from_utf8_lossy(&text).into_owned(), true));
                }
                None => {
                    text.extend_from_slice(bytes);
                    self.accept(id);
                }
            }
            shown = stream_whole_chars(&text, shown, &mut on_text);
        }
        Ok((String::from_utf8_lossy(&text).into_owned(), false))
    }

    /// Accepts the most likely next token, whatever it is (for benchmarks: no stop condition).
    pub fn step_greedy(&mut self) -> Result<u32, LlmError> {
        self.check_cancel()?;
        let logits = self.logits()?;
        let best = argmax(logits).ok_or_else(|| LlmError::Internal("empty logits".into()))?;
        self.accept(best);
        Ok(best)
    }

    /// The most likely next token's bytes.
    pub fn peek(&mut self) -> Result<Vec<u8>, LlmError> {
        let lm = self.lm.clone();
        let logits = self.logits()?;
        let best = argmax(logits).ok_or_else(|| LlmError::Internal("empty logits".into()))?;
        Ok(lm.token_bytes(best).to_vec())
    }

    /// Runs what is pending so the cache holds the whole conversation (e.g. after forced text
    /// that closes a turn), without choosing a token.
    pub fn flush(&mut self) -> Result<(), LlmError> {
        if !self.pending.is_empty() {
            self.logits()?;
        }
        Ok(())
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
}
