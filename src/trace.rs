//! Traces: every step of every question as one JSON line, so a person can read why an answer
//! was given (`p2g trace show`), see the evidence and the cited regions on the image
//! (`p2g trace draw`), and a program can replay or score a run.
//!
//! A trace file is a sequence of [`TraceEvent`]s, one JSON object per line, each tagged with
//! `"event"`. A question starts with `question` and ends with `answer` or `error`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::answer::grounding::Grounding;
use crate::controller::{Decision, StepStats};
use crate::orchestrator::evidence::Region;
use crate::orchestrator::ZoomRecord;
use crate::vision::draw::{default_thickness, draw_quad, save, PALETTE};
use crate::vision::{BBox, Image, LoadOptions, Quad, VisionError};

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TraceEvent {
    Question {
        question: String,
        region: Option<BBox>,
        image: String,
        width: u32,
        height: u32,
        controller: String,
        tools: Vec<String>,
    },
    /// A controller decision.
    Step {
        step: usize,
        #[serde(flatten)]
        stats: StepStats,
        decision: Decision,
        raw: String,
        /// How an answer's text was chosen (a copy the model preferred, or a shape's rule).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        how: Option<String>,
        elapsed_ms: f64,
    },
    /// An output that could not be used, sent back to the controller.
    Repair {
        step: usize,
        output: String,
        error: String,
        #[serde(flatten)]
        stats: StepStats,
    },
    /// An agent call and what it returned.
    Tool {
        step: usize,
        agent: String,
        arguments: serde_json::Value,
        /// `ok`, `error`, `timeout`, `repeated`, `unknown_tool` or `cancelled`.
        status: crate::agents::CallStatus,
        summary: String,
        regions: Vec<Region>,
        /// A read the loop chose to make magnified (a zoom): where, how much, why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zoom: Option<ZoomRecord>,
        elapsed_ms: f64,
    },
    /// The images a vision-language controller was shown for one decision: P²G's policy
    /// (MLP or resampler per image) and the visual tokens it cost.
    Visual {
        step: usize,
        images: Vec<crate::controller::ShownImage>,
        /// Visual tokens in all.
        tokens: usize,
    },
    /// The loop narrowed the regions an answer may come from (e.g. to text of the colours
    /// the question names).
    Narrow {
        step: usize,
        why: String,
        /// The regions still in view.
        kept: Vec<String>,
    },
    Answer {
        text: String,
        /// What the controller wrote before grounding.
        controller_text: String,
        /// Whether the text was copied from the cited regions.
        copied: bool,
        linked: String,
        grounding: Vec<Grounding>,
        steps: usize,
        elapsed_ms: f64,
    },
    Error {
        error: String,
        steps: usize,
        elapsed_ms: f64,
    },
}

/// Errors reading or drawing a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot open the trace {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a trace event ({reason})")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0} holds no question; is it a p2g trace?")]
    Empty(PathBuf),
    #[error(transparent)]
    Vision(#[from] VisionError),
}

/// Where trace events go: kept in memory, and appended to a file if one is set.
#[derive(Debug, Default)]
pub struct TraceSink {
    events: Vec<TraceEvent>,
    file: Option<BufWriter<File>>,
}

impl TraceSink {
    /// Appends to `path` (created if missing), so several runs can share a file.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            events: Vec::new(),
            file: Some(BufWriter::new(f)),
        })
    }

    pub fn record(&mut self, e: TraceEvent) {
        tracing::debug!(event = ?e, "trace");
        if let Some(f) = &mut self.file {
            // A trace is a diagnostic: failing to write it must not fail the question.
            let ok = serde_json::to_writer(&mut *f, &e).is_ok()
                && f.write_all(b"\n").is_ok()
                && f.flush().is_ok();
            if !ok {
                tracing::warn!("could not write the trace file");
            }
        }
        self.events.push(e);
    }

    pub fn events(&self) -> &[TraceEvent] {
        &self.events
    }
}

/// Reads a trace file.
pub fn read(path: &Path) -> Result<Vec<TraceEvent>, TraceError> {
    let f = File::open(path).map_err(|source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| TraceError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?);
    }
    if !out.iter().any(|e| matches!(e, TraceEvent::Question { .. })) {
        return Err(TraceError::Empty(path.to_path_buf()));
    }
    Ok(out)
}

fn clip(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ⏎ ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n).collect::<String>())
    }
}

/// Renders events for a person.
pub fn show(events: &[TraceEvent]) -> String {
    let mut o = String::new();
    for e in events {
        match e {
            TraceEvent::Question {
                question,
                region,
                image,
                width,
                height,
                controller,
                tools,
            } => {
                o.push_str(&format!("\n━━ {question}\n"));
                if let Some(r) = region {
                    o.push_str(&format!(
                        "   about region [{:.0},{:.0},{:.0},{:.0}]\n",
                        r.x1, r.y1, r.x2, r.y2
                    ));
                }
                o.push_str(&format!(
                    "   image {image} ({width}x{height}), controller {controller}, tools: {}\n",
                    tools.join(", ")
                ));
            }
            TraceEvent::Step {
                step,
                stats,
                decision,
                how,
                elapsed_ms,
                ..
            } => {
                let what = match decision {
                    Decision::Answer { text, grounding } => format!(
                        "answer {:?} citing {}",
                        text,
                        if grounding.is_empty() {
                            "nothing".to_string()
                        } else {
                            grounding
                                .iter()
                                .map(|c| c.region.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                    Decision::Call { agent, arguments } => format!("call {agent} {arguments}"),
                    Decision::NotFound { .. } => "not found in the evidence".to_string(),
                };
                o.push_str(&format!(
                    "  {step}. {what}\n     prompt {} tokens ({} reused, {} run in {:.0} ms), {} generated in {:.0} ms; step {:.0} ms\n",
                    stats.prompt_tokens,
                    stats.reused_tokens,
                    stats.prefill_tokens,
                    stats.prefill_ms,
                    stats.generated_tokens,
                    stats.decode_ms,
                    elapsed_ms
                ));
                if let Some(how) = how {
                    o.push_str(&format!("     {how}\n"));
                }
            }
            TraceEvent::Repair {
                step,
                output,
                error,
                ..
            } => {
                o.push_str(&format!(
                    "  {step}. unusable output {}\n     → told the controller: {error}\n",
                    clip(output, 80)
                ));
            }
            TraceEvent::Tool {
                agent,
                status,
                summary,
                regions,
                zoom,
                elapsed_ms,
                ..
            } => {
                if let Some(z) = zoom {
                    let w = z.window.rounded();
                    o.push_str(&format!(
                        "     zoom into [{:.0},{:.0},{:.0},{:.0}]{}: {}\n",
                        w.x1,
                        w.y1,
                        w.x2,
                        w.y2,
                        z.scale.map(|s| format!(" x{s:.1}")).unwrap_or_default(),
                        z.why
                    ));
                }
                o.push_str(&format!(
                    "     {agent}: {status}, {summary} ({elapsed_ms:.0} ms)\n"
                ));
                for r in regions.iter().take(60) {
                    let b = r.bbox.rounded();
                    o.push_str(&format!(
                        "       {:<4} [{:.0},{:.0},{:.0},{:.0}] {}\n",
                        r.id,
                        b.x1,
                        b.y1,
                        b.x2,
                        b.y2,
                        clip(&r.text, 70)
                    ));
                }
                if regions.len() > 60 {
                    o.push_str(&format!("       … {} more\n", regions.len() - 60));
                }
            }
            TraceEvent::Visual { images, tokens, .. } => {
                let each: Vec<String> = images
                    .iter()
                    .map(|i| {
                        format!(
                            "{} {} {}",
                            i.region.as_deref().unwrap_or("image"),
                            i.encoder,
                            i.tokens
                        )
                    })
                    .collect();
                o.push_str(&format!(
                    "     shown {tokens} visual tokens: {}\n",
                    clip(&each.join(", "), 300)
                ));
            }
            TraceEvent::Narrow { why, .. } => {
                o.push_str(&format!("     narrowed to {}\n", clip(why, 200)));
            }
            TraceEvent::Answer {
                text,
                controller_text,
                copied,
                grounding,
                steps,
                elapsed_ms,
                ..
            } => {
                o.push_str(&format!("  ⇒ {text}\n"));
                if *copied && controller_text != text {
                    o.push_str(&format!(
                        "     (the controller wrote {controller_text:?}; the text was copied from the cited region)\n"
                    ));
                }
                for g in grounding {
                    let b = g.bbox.rounded();
                    o.push_str(&format!(
                        "     {} [{:.0},{:.0},{:.0},{:.0}] {:?}\n",
                        g.region, b.x1, b.y1, b.x2, b.y2, g.phrase
                    ));
                }
                o.push_str(&format!(
                    "     {steps} steps, {:.1} s\n",
                    elapsed_ms / 1000.0
                ));
            }
            TraceEvent::Error {
                error,
                steps,
                elapsed_ms,
            } => {
                o.push_str(&format!(
                    "  ✗ {error} (after {steps} steps, {:.1} s)\n",
                    elapsed_ms / 1000.0
                ));
            }
        }
    }
    o
}

/// Renders again every Set-of-Mark image the trace says a remote controller was sent, from
/// the trace's image: beside `out`, named `STEM-mosaic-Q-STEP.EXT` (question Q, step STEP).
pub fn draw_mosaics(
    events: &[TraceEvent],
    image: Option<&Path>,
    out: &Path,
) -> Result<Vec<PathBuf>, TraceError> {
    let layouts: Vec<(usize, usize, &crate::vision::mosaic::Layout)> = {
        let mut q = 0;
        let mut found = Vec::new();
        for e in events {
            match e {
                TraceEvent::Question { .. } => q += 1,
                TraceEvent::Visual { step, images, .. } => found.extend(
                    images
                        .iter()
                        .filter_map(|i| i.layout.as_ref())
                        .map(|l| (q, *step, l)),
                ),
                _ => {}
            }
        }
        found
    };
    if layouts.is_empty() {
        return Ok(Vec::new());
    }
    let Some(path) = image_of(events, image) else {
        return Ok(Vec::new());
    };
    let img = Image::open(&path, &LoadOptions::default())?;
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "trace".into());
    let ext = out
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    let mut written = Vec::new();
    for (q, step, layout) in layouts {
        let file = out.with_file_name(format!("{stem}-mosaic-{q}-{step}.{ext}"));
        save(&layout.render(img.rgb()), &file)?;
        written.push(file);
    }
    Ok(written)
}

/// The image to draw on: `image` if given, else the trace's first question's.
fn image_of(events: &[TraceEvent], image: Option<&Path>) -> Option<PathBuf> {
    image.map(Path::to_path_buf).or_else(|| {
        events.iter().find_map(|e| match e {
            TraceEvent::Question { image, .. } => Some(PathBuf::from(image)),
            _ => None,
        })
    })
}

/// Draws a trace on its image: every evidence region thin, zoomed windows dashed-thick in
/// their own colour, cited regions thick. Uses the image
/// of the trace's first question unless `image` is given; only questions about that image are
/// drawn.
pub fn draw(events: &[TraceEvent], image: Option<&Path>, out: &Path) -> Result<usize, TraceError> {
    let path = image_of(events, image).ok_or_else(|| TraceError::Empty(out.to_path_buf()))?;
    let img = Image::open(&path, &LoadOptions::default())?;
    let mut canvas = img.rgb().clone();
    let t = default_thickness(&canvas);
    let wanted = path.display().to_string();
    let mut on_image = true;
    let mut cited = 0;
    for e in events {
        match e {
            TraceEvent::Question { image, .. } => {
                on_image = image.as_str() == wanted || image.is_empty()
            }
            TraceEvent::Tool { regions, zoom, .. } if on_image => {
                if let Some(z) = zoom {
                    draw_quad(&mut canvas, &Quad::from_bbox(&z.window), PALETTE[1], t);
                }
                for r in regions {
                    draw_quad(
                        &mut canvas,
                        &Quad::from_bbox(&r.bbox),
                        PALETTE[2],
                        t.div_ceil(2),
                    );
                }
            }
            TraceEvent::Answer { grounding, .. } if on_image => {
                for g in grounding {
                    let b = BBox::new(
                        g.bbox.x1 - t as f32,
                        g.bbox.y1 - t as f32,
                        g.bbox.x2 + t as f32,
                        g.bbox.y2 + t as f32,
                    );
                    draw_quad(&mut canvas, &Quad::from_bbox(&b), PALETTE[0], t * 2);
                    cited += 1;
                }
            }
            _ => {}
        }
    }
    save(&canvas, out)?;
    Ok(cited)
}
