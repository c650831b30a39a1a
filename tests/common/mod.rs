//! Shared helpers for the integration tests: the real OCR agent (loaded once per test binary),
//! the shared evaluation data, and the accuracy metrics also used by `benches/score.py`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use p2g::agents::ocr::{OcrAgent, OcrConfig, TextLine};
use p2g::models::{ModelSource, Store};
use p2g::vision::BBox;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/eval/<sub>`; tests that need it fail loudly when it is absent.
pub fn eval_dir(sub: &str) -> PathBuf {
    let dir = root().join("..").join("shared").join("eval").join(sub);
    assert!(
        dir.is_dir(),
        "evaluation data {} is missing: these tests need the shared eval folder beside the repo",
        dir.display()
    );
    dir
}

pub mod llama_server;

/// Runs a `tests/servers/setup_*.sh` script (it installs a test peer into a venv in the p2g
/// cache, once) and returns the venv's python, the last line it prints. `what` names the
/// peer in a failure.
pub fn setup_python(script: &str, what: &str) -> PathBuf {
    let script = root().join("tests/servers").join(script);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("bash runs the set-up script");
    assert!(
        out.status.success(),
        "{} failed: {what} could not be installed",
        script.display()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default().trim().to_string();
    assert!(
        Path::new(&line).is_file(),
        "the set-up printed no python: {text:?}"
    );
    PathBuf::from(line)
}
pub mod serve_proc;

/// The async runtime tests drive the loop on (two workers, as the CLI).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests").join("fixtures").join(name)
}

/// The OCR agent with the embedded defaults, real models fetched on first use.
pub fn agent() -> &'static OcrAgent {
    static AGENT: OnceLock<OcrAgent> = OnceLock::new();
    AGENT.get_or_init(|| agent_with(|_| {}))
}

/// A separately loaded agent with changed options.
pub fn agent_with(change: impl FnOnce(&mut OcrConfig)) -> OcrAgent {
    let store = Store::open_default().expect("model store");
    let mut cfg = OcrConfig::embedded().expect("embedded OCR manifest");
    change(&mut cfg);
    OcrAgent::load(&ModelSource::Store(store.clone()), &store, cfg).expect("OCR agent loads")
}

/// One ground-truth line of an SROIE `box/*.csv`.
pub struct GtLine {
    pub bbox: BBox,
    pub text: String,
}

pub fn read_gt(path: &Path) -> Vec<GtLine> {
    let text = std::fs::read_to_string(path).expect("ground truth csv");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let parts: Vec<&str> = l.trim_end_matches('\r').splitn(9, ',').collect();
            let n: Vec<f32> = parts[..8]
                .iter()
                .map(|v| v.trim().parse().expect("coordinate"))
                .collect();
            let xs = [n[0], n[2], n[4], n[6]];
            let ys = [n[1], n[3], n[5], n[7]];
            GtLine {
                bbox: BBox::new(
                    xs.iter().cloned().fold(f32::MAX, f32::min),
                    ys.iter().cloned().fold(f32::MAX, f32::min),
                    xs.iter().cloned().fold(f32::MIN, f32::max),
                    ys.iter().cloned().fold(f32::MIN, f32::max),
                ),
                text: parts.get(8).copied().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// Counts for micro-averaged word F1 and line-matched CER (see benches/score.py).
#[derive(Debug, Default, Clone, Copy)]
pub struct Score {
    pub tp: usize,
    pub n_pred: usize,
    pub n_gt: usize,
    pub edits: usize,
    pub gt_chars: usize,
}

impl Score {
    pub fn add(&mut self, o: Score) {
        self.tp += o.tp;
        self.n_pred += o.n_pred;
        self.n_gt += o.n_gt;
        self.edits += o.edits;
        self.gt_chars += o.gt_chars;
    }

    pub fn f1(&self) -> f64 {
        let p = self.tp as f64 / self.n_pred.max(1) as f64;
        let r = self.tp as f64 / self.n_gt.max(1) as f64;
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    pub fn cer(&self) -> f64 {
        self.edits as f64 / self.gt_chars.max(1) as f64
    }
}

fn words(s: &str) -> Vec<String> {
    s.to_uppercase()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn no_space_upper(s: &str) -> Vec<char> {
    s.to_uppercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// Word counts (upper-cased multiset intersection) and line-matched CER for one image: each
/// predicted line goes to the ground-truth line it overlaps most (vertical overlap at least
/// half the smaller height); unmatched predictions count as insertions.
pub fn score(gt: &[GtLine], pred: &[TextLine]) -> Score {
    let mut gt_words: std::collections::HashMap<String, usize> = Default::default();
    for g in gt {
        for w in words(&g.text) {
            *gt_words.entry(w).or_default() += 1;
        }
    }
    let n_gt = gt_words.values().sum();
    let mut n_pred = 0;
    let mut tp = 0;
    for p in pred {
        for w in words(&p.text) {
            n_pred += 1;
            if let Some(c) = gt_words.get_mut(&w) {
                if *c > 0 {
                    *c -= 1;
                    tp += 1;
                }
            }
        }
    }
    let mut assigned: Vec<Vec<&TextLine>> = vec![Vec::new(); gt.len()];
    let mut edits = 0;
    for p in pred {
        let best = gt
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.bbox.vertical_overlap(&p.bbox) >= 0.5 * g.bbox.height().min(p.bbox.height())
                    && g.bbox.intersection(&p.bbox) > 0.0
            })
            .max_by(|a, b| {
                a.1.bbox
                    .intersection(&p.bbox)
                    .total_cmp(&b.1.bbox.intersection(&p.bbox))
            });
        match best {
            Some((i, _)) => assigned[i].push(p),
            None => edits += no_space_upper(&p.text).len(),
        }
    }
    let mut gt_chars = 0;
    for (g, mut preds) in gt.iter().zip(assigned) {
        preds.sort_by(|a, b| a.bbox.x1.total_cmp(&b.bbox.x1));
        let joined: String = preds
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let (a, b) = (no_space_upper(&g.text), no_space_upper(&joined));
        gt_chars += a.len();
        edits += levenshtein(&a, &b);
    }
    Score {
        tp,
        n_pred,
        n_gt,
        edits,
        gt_chars,
    }
}

/// All text of an OCR result, upper-cased, one string.
pub fn joined_upper(lines: &[TextLine]) -> String {
    lines
        .iter()
        .map(|l| l.text.to_uppercase())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Word F1 of `pred` against `reference` lines' words (used to compare two readings).
pub fn word_f1(reference: &[TextLine], pred: &[TextLine]) -> f64 {
    let gt: Vec<GtLine> = reference
        .iter()
        .map(|l| GtLine {
            bbox: l.bbox,
            text: l.text.clone(),
        })
        .collect();
    score(&gt, pred).f1()
}
