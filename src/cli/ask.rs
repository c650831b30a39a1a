//! `p2g ask`: one question about one image.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use p2g::orchestrator::{AskOptions, Grounding};
use p2g::trace::TraceSink;
use p2g::vision::{BBox, Image, LoadOptions};

use super::setup::{build, LoopArgs};

#[derive(clap::Args, Debug)]
pub struct AskCmd {
    /// The image (JPEG, PNG, WebP, TIFF, BMP).
    image: PathBuf,

    /// The question; `-` reads it from standard input (for long or scripted questions).
    question: String,

    /// Print {"answer","grounding","steps","elapsed_ms","linked"} as one JSON object.
    #[arg(long)]
    json: bool,

    /// Append every step as a JSON line to FILE (read it with `p2g trace show FILE`).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// Ask about this region: x1,y1,x2,y2 in image pixels.
    #[arg(long, value_name = "X1,Y1,X2,Y2", value_parser = super::ocr::parse_bbox, allow_hyphen_values = true)]
    region: Option<BBox>,

    #[command(flatten)]
    args: LoopArgs,
}

#[derive(Serialize)]
struct JsonAnswer<'a> {
    answer: &'a str,
    grounding: &'a [Grounding],
    steps: usize,
    elapsed_ms: u64,
    linked: &'a str,
}

pub fn run(cmd: AskCmd) -> Result<ExitCode> {
    let question = if cmd.question == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .context("cannot read the question from standard input")?;
        String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("the question on standard input is not UTF-8 text"))?
    } else {
        cmd.question.clone()
    };
    let image = Image::open(
        &cmd.image,
        &LoadOptions {
            max_pixels: cmd.args.max_pixels,
        },
    )?;
    let orch = build(&cmd.args, p2g::orchestrator::History::Full)?;
    let rt = super::setup::runtime()?;
    let mut session = orch.session(image, &cmd.image);
    if let Some(path) = &cmd.trace {
        session.set_trace(
            TraceSink::to_file(path)
                .with_context(|| format!("cannot open the trace file {}", path.display()))?,
        );
    }
    let opts = AskOptions {
        region: cmd.region,
        ..Default::default()
    };
    let answer = rt.block_on(session.ask(&question, opts))?;
    let mut out = std::io::stdout().lock();
    if cmd.json {
        serde_json::to_writer(
            &mut out,
            &JsonAnswer {
                answer: &answer.answer,
                grounding: &answer.grounding,
                steps: answer.steps,
                elapsed_ms: answer.elapsed_ms,
                linked: &answer.linked,
            },
        )?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", answer.linked)?;
    }
    Ok(ExitCode::SUCCESS)
}
