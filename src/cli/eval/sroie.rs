//! `p2g eval sroie`: key-field questions on SROIE-layout receipts, scored against `key/*.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use p2g::orchestrator::AskOptions;
use p2g::vision::{Image, LoadOptions};

use super::median;
use crate::cli::setup::{build, LoopArgs};

/// Ask for company, date, address and total on each receipt of DIR (img/, key/).
#[derive(clap::Args, Debug)]
pub struct SroieCmd {
    dir: PathBuf,
    /// One JSON line per question, then the summary object.
    #[arg(long)]
    json: bool,
    /// Only the first N receipts (by name).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Append every step of every question to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Receipts asked at once (one thread each, one shared orchestrator): a load test of a
    /// remote controller's server. The embedded controller answers one question at a time.
    #[arg(long, value_name = "N", default_value_t = 1)]
    parallel: usize,
    /// Ask only these fields (comma-separated), in this order; the others are not scored.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FIELDS")]
    fields: Vec<Field>,
    #[command(flatten)]
    args: LoopArgs,
}

/// A key field of an SROIE receipt.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Company,
    Date,
    Address,
    Total,
}

impl Field {
    const ALL: [Field; 4] = [Field::Company, Field::Date, Field::Address, Field::Total];

    fn key(self) -> &'static str {
        match self {
            Field::Company => "company",
            Field::Date => "date",
            Field::Address => "address",
            Field::Total => "total",
        }
    }

    fn question(self) -> &'static str {
        match self {
            Field::Company => "What is the company name?",
            Field::Date => "What is the date?",
            Field::Address => "What is the address?",
            Field::Total => "What is the total amount?",
        }
    }
}

/// Upper case, no whitespace, no punctuation: "No. 5, Jalan" and "NO 5 JALAN" compare equal.
pub fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

/// 1 - edit distance / longer length, on normalised strings.
pub fn similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = normalise(a).chars().collect();
    let b: Vec<char> = normalise(b).chars().collect();
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let d = p2g::orchestrator::grounding::levenshtein(&a, &b);
    1.0 - d as f64 / a.len().max(b.len()) as f64
}

#[derive(Serialize)]
struct QuestionResult {
    receipt: String,
    field: &'static str,
    answer: String,
    expected: String,
    correct: bool,
    similarity: f64,
    seconds: f64,
    steps: usize,
    error: Option<String>,
}

/// Per-field scores; a field that was not asked (`--fields`) is `null`.
#[derive(Serialize, Default)]
struct Accuracy {
    company: Option<f64>,
    date: Option<f64>,
    address: Option<f64>,
    total: Option<f64>,
    overall: Option<f64>,
}

#[derive(Serialize)]
struct Summary {
    n: usize,
    accuracy: Accuracy,
    similarity: Accuracy,
    median_s: f64,
    /// Questions that ended in an error (a server down, a timeout).
    failures: usize,
    /// Receipts asked at once, and the whole run's seconds.
    parallel: usize,
    wall_s: f64,
}

fn receipts(dir: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    let img = dir.join("img");
    let key = dir.join("key");
    if !img.is_dir() || !key.is_dir() {
        bail!(
            "{} is not an SROIE-layout folder: it needs img/ (receipt images) and key/ (NAME.json with company, date, address, total)",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&img).with_context(|| format!("cannot list {}", img.display()))? {
        let p = e?.path();
        let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let k = key.join(format!("{stem}.json"));
        if k.is_file() {
            out.push((stem, p, k));
        }
    }
    out.sort();
    if out.is_empty() {
        bail!(
            "no image in {} has a key file in {}",
            img.display(),
            key.display()
        );
    }
    Ok(out)
}

pub fn run(cmd: SroieCmd) -> Result<ExitCode> {
    let SroieCmd {
        dir,
        json,
        limit,
        trace,
        fields,
        parallel,
        args,
    } = cmd;
    let fields: &[Field] = if fields.is_empty() {
        &Field::ALL
    } else {
        &fields
    };
    let mut items = receipts(&dir)?;
    if let Some(n) = limit {
        items.truncate(n);
    }
    if trace.is_some() && parallel > 1 {
        bail!("--trace with --parallel > 1 would interleave questions in one file; trace one at a time");
    }
    let orch = build(&args, p2g::orchestrator::History::Evidence)?;
    let rt = crate::cli::setup::runtime()?;
    let job = Job {
        orch: &orch,
        rt: &rt,
        fields,
        trace: trace.as_deref(),
        max_pixels: args.max_pixels,
        json,
        total: items.len(),
    };
    // Workers take the next receipt; results are put back in the receipts' order.
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<(usize, Vec<QuestionResult>)>> = Default::default();
    let first_error: std::sync::Mutex<Option<anyhow::Error>> = Default::default();
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, 64) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(item) = items.get(i) else {
                    return;
                };
                match job.receipt(i, item) {
                    Ok(Some(r)) => done.lock().map(|mut d| d.push((i, r))).unwrap_or(()),
                    Ok(None) => {}
                    Err(e) => {
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut done = done.into_inner().unwrap_or_default();
    done.sort_by_key(|(i, _)| *i);
    let receipts_read = done.len();
    let results: Vec<QuestionResult> = done.into_iter().flat_map(|(_, r)| r).collect();
    let mut out = std::io::stdout().lock();
    let acc = |f: Option<Field>, sim: bool| -> Option<f64> {
        if f.is_some_and(|f| !fields.contains(&f)) {
            return None;
        }
        let sel: Vec<&QuestionResult> = results
            .iter()
            .filter(|r| f.is_none_or(|f| r.field == f.key()))
            .collect();
        if sel.is_empty() {
            return Some(0.0);
        }
        let total: f64 = sel
            .iter()
            .map(|r| {
                if sim {
                    r.similarity
                } else {
                    f64::from(u8::from(r.correct))
                }
            })
            .sum();
        Some(total / sel.len() as f64)
    };
    let summarise = |sim: bool| Accuracy {
        company: acc(Some(Field::Company), sim),
        date: acc(Some(Field::Date), sim),
        address: acc(Some(Field::Address), sim),
        total: acc(Some(Field::Total), sim),
        overall: acc(None, sim),
    };
    let median_s = median(results.iter().map(|r| r.seconds).collect());
    let summary = Summary {
        n: receipts_read,
        accuracy: summarise(false),
        similarity: summarise(true),
        median_s,
        failures: results.iter().filter(|r| r.error.is_some()).count(),
        parallel: parallel.clamp(1, 64),
        wall_s: started.elapsed().as_secs_f64(),
    };
    if json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        writeln!(out, "receipts: {}  questions: {}", summary.n, results.len())?;
        writeln!(out, "{:<9} {:>8} {:>10}", "field", "accuracy", "similarity")?;
        for (f, a, s) in [
            (
                "company",
                summary.accuracy.company,
                summary.similarity.company,
            ),
            ("date", summary.accuracy.date, summary.similarity.date),
            (
                "address",
                summary.accuracy.address,
                summary.similarity.address,
            ),
            ("total", summary.accuracy.total, summary.similarity.total),
            (
                "overall",
                summary.accuracy.overall,
                summary.similarity.overall,
            ),
        ] {
            if let (Some(a), Some(s)) = (a, s) {
                writeln!(out, "{f:<9} {a:>8.3} {s:>10.3}")?;
            }
        }
        writeln!(out, "median seconds per question: {median_s:.2}")?;
        writeln!(
            out,
            "failures: {}  wall: {:.1} s ({} at once)",
            summary.failures, summary.wall_s, summary.parallel
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What every receipt of one run shares.
struct Job<'a> {
    orch: &'a p2g::orchestrator::Orchestrator,
    rt: &'a tokio::runtime::Runtime,
    fields: &'a [Field],
    trace: Option<&'a Path>,
    max_pixels: u64,
    json: bool,
    total: usize,
}

impl Job<'_> {
    /// Asks every field of one receipt (`None`: its image could not be read, said on stderr).
    fn receipt(
        &self,
        i: usize,
        (name, img, key): &(String, PathBuf, PathBuf),
    ) -> Result<Option<Vec<QuestionResult>>> {
        let keys: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(key)
                .with_context(|| format!("cannot read {}", key.display()))?,
        )
        .with_context(|| format!("{} is not JSON", key.display()))?;
        let image = match Image::open(
            img,
            &LoadOptions {
                max_pixels: self.max_pixels,
            },
        ) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("p2g: {name}: {e}");
                return Ok(None);
            }
        };
        // One conversation per receipt: later questions reuse what the first one read.
        let mut session = self.orch.session(image, img);
        if let Some(t) = self.trace {
            session.set_trace(p2g::trace::TraceSink::to_file(t)?);
        }
        let mut results = Vec::with_capacity(self.fields.len());
        for &f in self.fields {
            let field = f.key();
            let expected = keys[field].as_str().unwrap_or_default().to_string();
            let t0 = Instant::now();
            let r = self
                .rt
                .block_on(session.ask(f.question(), AskOptions::default()));
            let seconds = t0.elapsed().as_secs_f64();
            let (answer, steps, error) = match r {
                Ok(a) => (a.answer, a.steps, None),
                Err(e) => (String::new(), 0, Some(e.to_string())),
            };
            let res = QuestionResult {
                receipt: name.clone(),
                field,
                correct: error.is_none() && normalise(&answer) == normalise(&expected),
                similarity: similarity(&answer, &expected),
                answer,
                expected,
                seconds,
                steps,
                error,
            };
            if self.json {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, &res)?;
                writeln!(out)?;
            } else {
                eprintln!(
                    "[{}/{}] {name} {field:<8} {} {:?} (expected {:?}) {:.1} s{}",
                    i + 1,
                    self.total,
                    if res.correct { "✓" } else { "✗" },
                    res.answer,
                    res.expected,
                    seconds,
                    res.error
                        .as_deref()
                        .map(|e| format!(" error: {e}"))
                        .unwrap_or_default()
                );
            }
            results.push(res);
        }
        Ok(Some(results))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_space_and_punctuation() {
        assert_eq!(
            normalise("No. 5, Jalan  Sagu"),
            normalise("NO 5 JALAN SAGU")
        );
        assert!(similarity("9.00", "9.00") == 1.0);
        assert!(similarity("9.80", "9.00") < 1.0);
    }
}
