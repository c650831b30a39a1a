//! `p2g eval qa`: open questions about images, in the JSON-lines format of
//! `../shared/eval/hires/questions.jsonl`:
//! `{"image", "question", "answers": [..], "match"?, "needs"}`.
//!
//! The scoring rule is that file's: an answer is right when, lower-cased and with everything
//! but letters and digits removed, it contains one of `answers` treated the same way
//! ("Lemon Lime!" matches "lemon-lime"); with `"match": "number"` it must contain the number as
//! a whole token ("8", not "18"). Consecutive questions about one image share a session, so
//! what was read for the first is reused, as in the REPL; earlier answers are not shown to
//! later questions (`--history evidence`), so each question is scored on its own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use p2g::orchestrator::{AskOptions, History};
use p2g::vision::{Image, LoadOptions};

use super::median;
use crate::cli::setup::{build, runtime, LoopArgs};

/// Ask the questions of QUESTIONS.jsonl about their images and score the answers.
#[derive(clap::Args, Debug)]
pub struct QaCmd {
    /// A JSON-lines file: {"image", "question", "answers": [..], "match"?: "number", "needs"}.
    questions: PathBuf,
    /// The folder the `image` names are relative to (default: the questions file's folder).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// One JSON line per question, then the summary object.
    #[arg(long)]
    json: bool,
    /// Append every step of every question to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Only the first N questions.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    args: LoopArgs,
}

/// What a question needs perceived; the summary counts each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum Needs {
    #[serde(rename = "text")]
    Text,
    #[serde(rename = "objects+text")]
    ObjectsText,
    #[serde(rename = "vision")]
    Vision,
}

/// How an answer is compared with the expected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Match {
    /// Contains the expected text (letters and digits only, lower case).
    #[default]
    Contains,
    /// Contains the expected number as a whole number.
    Number,
}

#[derive(Debug, Deserialize)]
struct Question {
    image: String,
    question: String,
    answers: Vec<String>,
    #[serde(default, rename = "match")]
    matching: Match,
    needs: Needs,
}

#[derive(Serialize)]
struct QuestionResult<'a> {
    image: &'a str,
    question: &'a str,
    answer: String,
    right: bool,
    seconds: f64,
    steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Counts per kind of question.
#[derive(Serialize, Default, Clone, Copy)]
struct PerNeeds {
    text: usize,
    #[serde(rename = "objects+text")]
    objects_text: usize,
    vision: usize,
}

impl PerNeeds {
    fn add(&mut self, needs: Needs) {
        match needs {
            Needs::Text => self.text += 1,
            Needs::ObjectsText => self.objects_text += 1,
            Needs::Vision => self.vision += 1,
        }
    }
}

#[derive(Serialize)]
struct Summary {
    n: usize,
    right: PerNeeds,
    of: PerNeeds,
    accuracy: f64,
    median_s: f64,
}

/// Lower case, letters and digits only.
fn letters_and_digits(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The maximal runs of digits in `s`: the whole numbers it contains.
fn numbers(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The questions file's scoring rule.
fn is_right(answer: &str, expected: &[String], matching: Match) -> bool {
    let got = letters_and_digits(answer);
    expected.iter().any(|e| {
        let want = letters_and_digits(e);
        if want.is_empty() {
            return false;
        }
        match matching {
            Match::Contains => got.contains(&want),
            // "8" is not in "18"; "08" is the number 8 written with a leading zero.
            Match::Number => match want.parse::<u64>() {
                Ok(n) => numbers(answer).iter().any(|t| t.parse::<u64>() == Ok(n)),
                Err(_) => numbers(answer).contains(&want.as_str()),
            },
        }
    })
}

fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: not a question object {{\"image\", \"question\", \"answers\": [..], \"match\"?, \"needs\": \"text\" | \"objects+text\" | \"vision\"}}",
                path.display(),
                n + 1
            )
        })?;
        if q.answers.iter().all(|a| letters_and_digits(a).is_empty()) {
            bail!(
                "{} line {}: no answer with a letter or digit to compare with",
                path.display(),
                n + 1
            );
        }
        out.push(q);
    }
    if out.is_empty() {
        bail!("{} holds no questions", path.display());
    }
    Ok(out)
}

pub fn run(cmd: QaCmd) -> Result<ExitCode> {
    let mut questions = read_questions(&cmd.questions)?;
    if let Some(n) = cmd.limit {
        questions.truncate(n);
    }
    let dir = match &cmd.images {
        Some(d) => d.clone(),
        None => cmd
            .questions
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let orch = build(&cmd.args, History::Evidence)?;
    let rt = runtime()?;
    let load = LoadOptions {
        max_pixels: cmd.args.max_pixels,
    };
    let mut out = std::io::stdout().lock();
    let (mut right, mut of) = (PerNeeds::default(), PerNeeds::default());
    let mut seconds = Vec::new();
    let mut session = None;
    let mut session_image = String::new();
    for (i, q) in questions.iter().enumerate() {
        let t0 = Instant::now();
        if session.is_none() || session_image != q.image {
            session = None;
            let path = dir.join(&q.image);
            match Image::open(&path, &load) {
                Ok(image) => {
                    let mut s = orch.session(image, &path);
                    if let Some(t) = &cmd.trace {
                        s.set_trace(p2g::trace::TraceSink::to_file(t)?);
                    }
                    session = Some(s);
                }
                Err(e) => eprintln!("p2g: {}: {e}", path.display()),
            }
            session_image = q.image.clone();
        }
        let (answer, steps, error) = match session.as_mut() {
            Some(s) => match rt.block_on(s.ask(&q.question, AskOptions::default())) {
                Ok(a) => (a.answer, a.steps, None),
                Err(e) => (String::new(), 0, Some(e.to_string())),
            },
            None => (
                String::new(),
                0,
                Some(format!("cannot open the image {}", q.image)),
            ),
        };
        let secs = t0.elapsed().as_secs_f64();
        let ok = error.is_none() && is_right(&answer, &q.answers, q.matching);
        of.add(q.needs);
        if ok {
            right.add(q.needs);
        }
        seconds.push(secs);
        let res = QuestionResult {
            image: &q.image,
            question: &q.question,
            answer,
            right: ok,
            seconds: secs,
            steps,
            error,
        };
        if cmd.json {
            serde_json::to_writer(&mut out, &res)?;
            writeln!(out)?;
        } else {
            eprintln!(
                "[{}/{}] {} {} {:?} -> {:?} (expected {:?}) {:.1} s{}",
                i + 1,
                questions.len(),
                q.image,
                if ok { "✓" } else { "✗" },
                q.question,
                res.answer,
                q.answers.join(" | "),
                secs,
                res.error
                    .as_ref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    let n = questions.len();
    let total_right = right.text + right.objects_text + right.vision;
    let summary = Summary {
        n,
        right,
        of,
        accuracy: total_right as f64 / n as f64,
        median_s: median(seconds),
    };
    if cmd.json {
        serde_json::to_writer(&mut out, &summary)?;
        writeln!(out)?;
    } else {
        writeln!(out, "questions: {n}")?;
        for (name, r, o) in [
            ("text", right.text, of.text),
            ("objects+text", right.objects_text, of.objects_text),
            ("vision", right.vision, of.vision),
        ] {
            if o > 0 {
                writeln!(out, "{name:<13} {r}/{o}")?;
            }
        }
        writeln!(out, "accuracy      {:.3}", summary.accuracy)?;
        writeln!(out, "median seconds per question: {:.2}", summary.median_s)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn right(answer: &str, expected: &[&str], m: Match) -> bool {
        let e: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        is_right(answer, &e, m)
    }

    #[test]
    fn answers_are_compared_on_letters_and_digits() {
        assert!(right("Lemon Lime!", &["lemon-lime"], Match::Contains));
        assert!(right(
            "It says HARBOUR on the flag",
            &["harbour"],
            Match::Contains
        ));
        assert!(right("Skyforge2", &["skyforge"], Match::Contains));
        assert!(right("4:51", &["4:51"], Match::Contains));
        assert!(!right("4:57", &["4:51"], Match::Contains));
        assert!(!right("I cannot tell", &["tiger"], Match::Contains));
        assert!(!right("", &["x"], Match::Contains));
    }

    #[test]
    fn a_number_must_be_a_whole_number() {
        assert!(right("8", &["8"], Match::Number));
        assert!(right("#8, shooting", &["8"], Match::Number));
        assert!(right("08", &["8"], Match::Number));
        assert!(!right("18", &["8"], Match::Number));
        assert!(!right("8.5", &["85"], Match::Number));
        assert!(!right("no number", &["8"], Match::Number));
    }

    #[test]
    fn a_bad_questions_file_says_which_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.jsonl");
        std::fs::write(
            &p,
            "{\"image\":\"a.jpg\",\"question\":\"q?\",\"answers\":[\"x\"],\"needs\":\"text\"}\n{\"image\":\"a.jpg\"}\n",
        )
        .unwrap();
        let e = read_questions(&p).unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        std::fs::write(
            &p,
            "{\"image\":\"a.jpg\",\"question\":\"q?\",\"answers\":[\"x\"],\"match\":\"number\",\"needs\":\"objects+text\"}\n",
        )
        .unwrap();
        let q = read_questions(&p).unwrap();
        assert_eq!(q[0].matching, Match::Number);
        assert_eq!(q[0].needs, Needs::ObjectsText);
    }
}
