//! The embedded controller: a small chat model (Qwen2.5-Coder-0.5B-Instruct by default,
//! SmolLM2-135M-Instruct optionally) run in-process, no server and no GPU.
//!
//! A 0.5B model writes tool calls well but not reliably, and misreads digits it has to repeat.
//! So by default its output is built under constraints ([`EmbeddedConfig::constrained`]): p2g
//! writes the fixed parts of the tool-call JSON itself, the model *chooses* the tool name among
//! the tools offered and the cited region ids among those that exist, and writes free text only
//! where free text belongs (an answer's text, an agent's arguments). A call is therefore
//! well-formed by construction except for an agent's arguments, which are checked and, when
//! wrong, shown back to the model (the orchestrator's repair step).
//!
//! The model's KV cache lives in one [`Session`] reused by every decision: each new prompt
//! shares the previous one's prefix (system prompt, tools, earlier turns), so only the new turn
//! is run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::llava::{Shown, Vision};
use super::llm::prompt_cache::PromptCache;
use super::llm::{LanguageModel, LlmError, Session};
use super::parse::parse_decision;
use super::prompt::{render_conversation, ImageSlots, Prompts};
use super::{
    AnswerSource, Citation, Controller, ControllerError, Conversation, Decision, RegionText, Step,
    StepContext,
};
use crate::agents::BoxFuture;
use crate::answer::candidates::Asked;
use crate::answer::copy::{json_escaped, ShapedSpans};
use crate::answer::rank::{
    choose, copy_search, write_answer, Calibration, ChooseLimits, SearchLimits,
};
use crate::answer::shapes::shape_for;
use crate::answer::{candidates, looks_like_box_or_id, reads_as_document};
use crate::models::{ModelSource, Store};

/// The embedded models p2g can fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerChoice {
    /// Qwen2.5-Coder-0.5B-Instruct (tool-calling chat template), Q5_0 with p2g's AVX2 kernel.
    #[default]
    Qwen,
    /// SmolLM2-135M-Instruct Q4_1: four times smaller, far weaker.
    Smollm2,
}

impl ControllerChoice {
    /// (bundle, file) in `models.toml`.
    pub fn model_file(self) -> (&'static str, &'static str) {
        match self {
            ControllerChoice::Qwen => ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct.gguf"),
            ControllerChoice::Smollm2 => ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            ControllerChoice::Qwen => "qwen2.5-coder-0.5b",
            ControllerChoice::Smollm2 => "smollm2-135m",
        }
    }
}

/// Settings of the embedded controller.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub prompts: Prompts,
    /// Positions the KV cache may hold (prompt plus everything generated).
    pub max_context: usize,
    /// Build tool calls under constraints (see the module docs); `false` lets the model write
    /// them freely and parses the result.
    pub constrained: bool,
    /// Token budget of an answer's text.
    pub max_answer_tokens: usize,
    /// Token budget of an agent call's arguments.
    pub max_argument_tokens: usize,
    /// At most this many regions cited per answer.
    pub max_citations: usize,
    /// When an answer starts like a word of the evidence, copy it from the evidence by
    /// construction (the cited regions are those it was copied from).
    pub copy_answers: bool,
    /// First tokens a copied answer is tried with (1: greedy).
    pub copy_alternatives: usize,
    /// Where the KV cache of the prompt's first turn (system message, tools) is saved and
    /// read back by a new process; `None` runs it in every process.
    pub prompt_cache: Option<PromptCache>,
}

impl EmbeddedConfig {
    pub fn new(prompts: Prompts) -> Self {
        Self {
            prompts,
            max_context: 8192,
            constrained: true,
            max_answer_tokens: 96,
            max_argument_tokens: 64,
            max_citations: 8,
            copy_answers: true,
            copy_alternatives: 8,
            prompt_cache: None,
        }
    }
}

/// A GGUF chat model as the controller.
pub struct EmbeddedController {
    name: String,
    lm: Arc<LanguageModel>,
    session: Arc<Mutex<Session>>,
    cfg: Arc<EmbeddedConfig>,
    /// The vision side of a vision-language pair ([`super::llava`]); `None`: text only.
    vision: Option<Arc<Vision>>,
}

impl std::fmt::Debug for EmbeddedController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedController")
            .field("name", &self.name)
            .finish()
    }
}

impl EmbeddedController {
    /// Loads one of the pinned models (fetching it on first use) or, with
    /// [`ModelSource::Dir`], the same file name from the user's folder.
    pub fn load(
        choice: ControllerChoice,
        source: &ModelSource,
        cfg: EmbeddedConfig,
    ) -> Result<Self, ControllerError> {
        let (bundle, file) = choice.model_file();
        let path = source.file(bundle, file)?;
        Self::from_file(&path, choice.short_name(), cfg)
    }

    /// Loads any supported GGUF (qwen2 or llama architecture with a chat template).
    pub fn from_file(
        path: &Path,
        name: &str,
        cfg: EmbeddedConfig,
    ) -> Result<Self, ControllerError> {
        let _span = tracing::info_span!("load_controller", path = %path.display()).entered();
        let lm = LanguageModel::load(path, cfg.max_context)?;
        if lm.chat_template().is_none() {
            return Err(LlmError::BadFile {
                path: PathBuf::from(path),
                reason: "it carries no chat template (tokenizer.chat_template)".into(),
            }
            .into());
        }
        Self::from_model(lm, name, cfg, None)
    }

    /// A controller on a loaded model, with eyes when `vision` is given.
    pub(crate) fn from_model(
        lm: LanguageModel,
        name: &str,
        cfg: EmbeddedConfig,
        vision: Option<Arc<Vision>>,
    ) -> Result<Self, ControllerError> {
        let lm = Arc::new(lm);
        Ok(Self {
            name: name.to_string(),
            session: Arc::new(Mutex::new(Session::new(lm.clone()))),
            lm,
            cfg: Arc::new(cfg),
            vision,
        })
    }

    /// The default: Qwen2.5-Coder-0.5B from the pinned store.
    pub fn default_model(store: &Store) -> Result<Self, ControllerError> {
        Self::load(
            ControllerChoice::Qwen,
            &ModelSource::Store(store.clone()),
            EmbeddedConfig::new(Prompts::embedded()?),
        )
    }

    pub fn model(&self) -> &Arc<LanguageModel> {
        &self.lm
    }

    /// The prompt text a conversation renders to (for inspection and tests); images stand
    /// as markers.
    pub fn render(&self, conv: &Conversation) -> Result<String, ControllerError> {
        let shown = self.vision.as_ref().map(|v| v.show(conv));
        self.render_with(conv, shown.as_ref().map(|s| &s.slots), None)
    }

    fn render_with(
        &self,
        conv: &Conversation,
        images: Option<&ImageSlots>,
        neutral: Option<&str>,
    ) -> Result<String, ControllerError> {
        let template = self.lm.chat_template().unwrap_or_default();
        render_conversation(&self.cfg.prompts, template, conv, images, neutral)
    }

    /// The prompt with the last question replaced by the neutral one (`answers.toml`), to
    /// calibrate answers against; `None` when calibration is off.
    fn neutral_text(
        &self,
        conv: &Conversation,
        images: Option<&ImageSlots>,
    ) -> Result<Option<String>, ControllerError> {
        let answers = &self.cfg.prompts.answers;
        if answers.calibration <= 0.0 || conv.regions.is_empty() {
            return Ok(None);
        }
        self.render_with(conv, images, Some(&answers.neutral_question))
            .map(Some)
    }
}

impl Controller for EmbeddedController {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts_images(&self) -> bool {
        self.vision.is_some()
    }

    fn decide<'a>(
        &'a self,
        conv: &'a Conversation,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<Step, ControllerError>> {
        Box::pin(async move {
            let shown: Option<Shown> = self.vision.as_ref().map(|v| v.show(conv));
            let slots = shown.as_ref().map(|s| &s.slots);
            let prompt = self.render_with(conv, slots, None)?;
            // The whole prompt, for `RUST_LOG=p2g::controller=trace`: what the model was shown.
            tracing::trace!(%prompt, "controller prompt");
            let neutral_text = self.neutral_text(conv, slots)?;
            let vision = self.vision.clone();
            let sees = vision.is_some();
            let session = self.session.clone();
            let cfg = self.cfg.clone();
            let ctx = ctx.clone();
            let tools: Vec<String> = conv.tools.iter().map(|t| t.name.clone()).collect();
            let regions = conv.regions.clone();
            let must_answer = conv.must_answer;
            let narrowed = conv.narrowed;
            let question = conv.question().map(str::to_string);
            let document = conv.document.unwrap_or_else(|| {
                reads_as_document(
                    &conv.regions,
                    conv.image.width,
                    conv.image.height,
                    &self.cfg.prompts.answers,
                )
            });
            let observed = conv
                .turns
                .iter()
                .any(|t| matches!(t, super::Turn::Observation { .. }));
            let work = move || -> Result<Step, ControllerError> {
                let mut s = session
                    .lock()
                    .map_err(|_| LlmError::Internal("controller session poisoned".into()))?;
                s.set_cancel_flag(ctx.cancel.clone());
                let (tokens, neutral, shown) = match (&vision, &shown) {
                    (Some(v), Some(sh)) => {
                        let (tokens, record) = v.tokens(&mut s, &prompt, sh)?;
                        let neutral = match &neutral_text {
                            Some(t) => Some(v.tokens(&mut s, t, sh)?.0),
                            None => None,
                        };
                        (tokens, neutral, record)
                    }
                    _ => {
                        let lm = s.model().clone();
                        let neutral = match &neutral_text {
                            Some(t) => Some(lm.encode(t)?),
                            None => None,
                        };
                        (lm.encode(&prompt)?, neutral, Vec::new())
                    }
                };
                let to_save = cfg
                    .prompt_cache
                    .as_ref()
                    .and_then(|pc| warm_start(pc, &mut s, &tokens));
                s.set_prompt(&tokens);
                let result = if cfg.constrained {
                    let step = StepInput {
                        tools: &tools,
                        regions: &regions,
                        question: question.as_deref(),
                        must_answer,
                        observed,
                        document,
                        narrowed,
                        sees,
                        neutral: neutral.as_deref(),
                        prompt_len: tokens.len(),
                    };
                    constrained_step(&mut s, &cfg, &step, &ctx)
                } else {
                    free_step(&mut s, &cfg, &tools, &ctx)
                };
                if let (Some(pc), Some(n)) = (&cfg.prompt_cache, to_save) {
                    if let Err(e) = pc.store(&s, &tokens[..n]) {
                        tracing::warn!("prompt cache not saved: {e}");
                    }
                }
                // One prompt per step: the counters are this step's.
                let stats = s.take_stats();
                match result {
                    Ok(Decided {
                        decision,
                        raw,
                        how,
                        source,
                    }) => Ok(Step {
                        decision,
                        raw,
                        stats,
                        how,
                        quoted: source != AnswerSource::Model,
                        source,
                        shown,
                    }),
                    Err(StepFailure::Malformed { output, reason }) => {
                        Err(ControllerError::Malformed {
                            output,
                            reason,
                            stats,
                        })
                    }
                    Err(StepFailure::Model(LlmError::Cancelled)) => Err(ControllerError::Cancelled),
                    Err(StepFailure::Model(e)) => Err(e.into()),
                }
            };
            crate::agents::off_async_workers(work)
                .await
                .map_err(LlmError::Internal)?
        })
    }
}

/// Starts a fresh session from the saved first turn of `tokens`; returns that turn's length
/// when nothing usable was saved, so the caller saves it once it has run.
fn warm_start(cache: &PromptCache, s: &mut Session, tokens: &[u32]) -> Option<usize> {
    if !s.is_empty() {
        return None;
    }
    let n = s.model().first_turn_len(tokens)?;
    // A prompt that is all one turn shares nothing with the next question's; spliced ids
    // (an image's) mean nothing to another process.
    let vocab = s.model().vocab_size() as u32;
    if n >= tokens.len() || tokens[..n].iter().any(|&t| t >= vocab) {
        return None;
    }
    let _span = tracing::debug_span!("prompt_cache", tokens = n).entered();
    match cache.load(s, &tokens[..n]) {
        Ok(true) => {
            tracing::debug!(dir = %cache.dir().display(), "first turn read from the prompt cache");
            None
        }
        Ok(false) => Some(n),
        Err(e) => {
            tracing::warn!("prompt cache not used: {e}");
            Some(n)
        }
    }
}

enum StepFailure {
    Malformed { output: String, reason: String },
    Model(LlmError),
}

impl From<LlmError> for StepFailure {
    fn from(e: LlmError) -> Self {
        StepFailure::Model(e)
    }
}

/// What one constrained step is decided on, besides the prompt.
struct StepInput<'a> {
    tools: &'a [String],
    regions: &'a [RegionText],
    /// The question being answered (for its answer shape).
    question: Option<&'a str>,
    must_answer: bool,
    observed: bool,
    /// The evidence reads as a document (document answer shapes apply).
    document: bool,
    /// The regions were narrowed to where the question points.
    narrowed: bool,
    /// The model sees the image (a vision-language pair): it may answer before any tool.
    sees: bool,
    /// The prompt with a neutral question, to calibrate answers against.
    neutral: Option<&'a [u32]>,
    /// Tokens of the prompt (before the step's own output).
    prompt_len: usize,
}

/// A step's decision, the text it amounts to, and how an answer's text was chosen.
struct Decided {
    decision: Decision,
    raw: String,
    how: Option<String>,
    /// Where an answer's text came from; a copy (a shape's span, an evidence span) is quoted
    /// whole (`Step::quoted`).
    source: AnswerSource,
}

/// One decision built under constraints; returns it with the text it amounts to.
///
/// The model first decides, as it was trained to, whether its turn opens with a tool call;
/// if not, it is answering, and the answer is written as a call of the answer tool: text first
/// (its natural next words), then the ids of the regions it copied from, chosen among those
/// that exist — after writing "9.00", pointing at the line that says "9.00" is easy.
fn constrained_step(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    input: &StepInput<'_>,
    ctx: &StepContext,
) -> Result<Decided, StepFailure> {
    let StepInput {
        tools,
        must_answer,
        observed,
        sees,
        ..
    } = *input;
    let answer = cfg.prompts.answer_tool.name.clone();
    // A text controller knows nothing of the image before a tool has looked at it: answering
    // then could only be a guess, so its first step is a call. One that sees the image may
    // answer from it directly.
    let blind = !observed && !sees;
    let wants_tool =
        !must_answer && !tools.is_empty() && (blind || s.next_starts_with(b"<tool_call>")?);
    let name = if wants_tool {
        let mut names: Vec<String> = tools.iter().map(|t| format!("{t}\"")).collect();
        if !blind {
            names.push(format!("{answer}\""));
        }
        s.push_text("<tool_call>\n{\"name\": \"")?;
        let pick = s.choose(&names)?;
        names[pick].trim_end_matches('"').to_string()
    } else {
        s.push_text(&format!("<tool_call>\n{{\"name\": \"{answer}\""))?;
        answer.clone()
    };
    s.push_text(", \"arguments\": ")?;
    if name == answer {
        return answer_step(s, cfg, input, ctx, &name);
    }
    // An agent call: the arguments object is the model's, checked here and by the agent.
    s.push_text("{")?;
    let (rest, _) = s.free(
        cfg.max_argument_tokens,
        |_, tok| !tok.contains(&b'\n'),
        |text| json_closed(text, 1).is_some(),
        |_| {},
    )?;
    // A token may close the object and go on (`}}`): the arguments end at the closing brace.
    let rest = match json_closed(rest.as_bytes(), 1) {
        Some(end) => &rest[..=end],
        None => rest.as_str(),
    };
    let args_text = format!("{{{rest}");
    let raw =
        format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args_text}}}\n</tool_call>");
    let arguments: Value =
        serde_json::from_str(&args_text).map_err(|e| StepFailure::Malformed {
            output: raw.clone(),
            reason: format!("the arguments of {name} are not a valid JSON object ({e})"),
        })?;
    s.push_text("}\n</tool_call>")?;
    Ok(Decided {
        decision: Decision::Call {
            agent: name,
            arguments,
        },
        raw,
        how: None,
        source: AnswerSource::Model,
    })
}

/// The answer tool's arguments, the text first.
///
/// With evidence, the text is a copy of it: one of the spans of the question's answer shape
/// when it has one and the evidence holds such spans, else the span of the evidence the model
/// finds likeliest, if it is likelier than saying "not in the evidence" — otherwise the step
/// is [`Decision::NotFound`] and the loop looks again. Without evidence (no agents offered),
/// or with `copy_answers` off, the model writes the text itself; a box or a region id is
/// never taken as an answer.
fn answer_step(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    input: &StepInput<'_>,
    ctx: &StepContext,
    name: &str,
) -> Result<Decided, StepFailure> {
    let regions = input.regions;
    s.push_text("{\"text\": \"")?;
    if cfg.copy_answers {
        let shape = input
            .question
            .and_then(|q| shape_for(&cfg.prompts.shapes, q, input.document))
            .map(|shape| ShapedSpans::new(regions, shape))
            .filter(|spans| !spans.is_empty());
        if let Some(spans) = shape {
            let limits = SearchLimits {
                alternatives: cfg.copy_alternatives,
                max_tokens: cfg.max_answer_tokens,
            };
            if let Some((body, _, cited)) = copy_search(s, limits, &spans)? {
                let how = spans.how_chosen();
                return Ok(copied(s, ctx, name, body, cited, how, AnswerSource::Shape)?);
            }
        }
        if !regions.is_empty() {
            return extract(s, cfg, input, ctx, name);
        }
    }
    if regions.is_empty() && input.observed && !input.sees {
        return Ok(not_found(
            "no text or object has been found in the image so far".into(),
        ));
    }
    written(s, cfg, regions, ctx, name)
}

/// The general case: every span of the evidence, scored against "not in the evidence".
fn extract(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    input: &StepInput<'_>,
    ctx: &StepContext,
    name: &str,
) -> Result<Decided, StepFailure> {
    let regions = input.regions;
    let settings = &cfg.prompts.answers;
    let mut found = candidates(regions, &settings.limits());
    // "What word…" is not answered with a number, "what number…" not with a word (when
    // spans of the asked form exist).
    let asked = Asked::of(input.question.unwrap_or(""));
    if found.iter().any(|c| asked.fits(&c.text)) {
        found.retain(|c| asked.fits(&c.text));
    }
    if found.is_empty() {
        return Ok(not_found(format!(
            "none of the {} regions read holds a word that could answer",
            regions.len()
        )));
    }
    let texts: Vec<String> = found.iter().map(|c| json_escaped(&c.text)).collect();
    let reads: Vec<f64> = found.iter().map(|c| c.read).collect();
    let choice = choose(
        s,
        &texts,
        &reads,
        &settings.not_found,
        ChooseLimits {
            margin: settings.margin
                + if input.narrowed {
                    settings.narrowed_margin
                } else {
                    0.0
                },
            max_passes: settings.max_passes,
            window: settings.window,
            recheck: settings.recheck,
            reading: settings.reading,
        },
        input.neutral.map(|neutral_prompt| Calibration {
            neutral_prompt,
            prompt_len: input.prompt_len,
            weight: settings.calibration,
        }),
    )?;
    let rivals: Vec<String> = choice
        .top
        .iter()
        .map(|&(i, lp, c)| format!("{:?} {lp:.2} ({c:.2})", found[i].text))
        .collect();
    tracing::debug!(
        not_found = choice.not_found,
        scored = choice.scored,
        of = found.len(),
        passes = choice.passes,
        best = %rivals.join(", "),
        "answer candidates"
    );
    let phrase = settings.not_found.first().cloned().unwrap_or_default();
    match choice.chosen {
        Some(i) => {
            let lp = choice.top.first().map_or(f64::NAN, |t| t.1);
            let calibrated = match (input.neutral.is_some(), settings.reading > 0.0) {
                (true, true) => ", ranked by how much likelier the question makes it than a neutral question and by how surely it was read",
                (true, false) => ", ranked by how much likelier the question makes it than a neutral question",
                (false, true) => ", ranked by its likelihood and by how surely it was read",
                (false, false) => "",
            };
            let how = format!(
                "copied: the likeliest of {} spans of the evidence as the answer{calibrated} (log-probability {lp:.2}; {:?} {:.2}; {} scored exactly, the rest could not win)",
                found.len(),
                phrase,
                choice.not_found,
                choice.scored
            );
            write_answer(s, &texts[i])?;
            let c = &found[i];
            let (body, cited) = (texts[i].clone(), c.regions.clone());
            Ok(copied(s, ctx, name, body, cited, how, AnswerSource::Evidence)?)
        }
        None => Ok(not_found(format!(
            "{phrase:?} (log-probability {:.2}) was likelier than any of {} spans of the evidence (best: {})",
            choice.not_found,
            found.len(),
            if rivals.is_empty() {
                "none could come close".to_string()
            } else {
                rivals.join(", ")
            }
        ))),
    }
}

/// A step that says the evidence does not answer.
fn not_found(reason: String) -> Decided {
    Decided {
        raw: format!("(not found: {reason})"),
        how: Some(format!("not found: {reason}")),
        decision: Decision::NotFound { reason },
        source: AnswerSource::Model,
    }
}

/// Finishes an answer whose text `body` (JSON-escaped, its string already closed in the
/// session) was copied from the regions `cited`.
fn copied(
    s: &mut Session,
    ctx: &StepContext,
    name: &str,
    body: String,
    cited: Vec<String>,
    how: String,
    source: AnswerSource,
) -> Result<Decided, LlmError> {
    if let Some(f) = &ctx.on_text {
        f(&body);
    }
    let list: Vec<String> = cited.iter().map(|c| format!("\"{c}\"")).collect();
    s.push_text(&format!(
        ", \"regions\": [{}]}}}}\n</tool_call>",
        list.join(", ")
    ))?;
    let raw = format!(
        "<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{\"text\": \"{body}\", \"regions\": [{}]}}}}\n</tool_call>",
        list.join(", ")
    );
    let text: String = serde_json::from_str(&format!("\"{body}\"")).unwrap_or(body);
    Ok(answered(&text, cited, raw, how, source))
}

/// An answer decision citing `cited`.
fn answered(
    text: &str,
    cited: Vec<String>,
    raw: String,
    how: String,
    source: AnswerSource,
) -> Decided {
    Decided {
        decision: Decision::Answer {
            text: text.trim().to_string(),
            grounding: cited
                .into_iter()
                .map(|region| Citation {
                    region,
                    phrase: None,
                    bbox: None,
                })
                .collect(),
        },
        raw,
        how: Some(how),
        source,
    }
}

/// The model writes the answer's text, then picks the regions it relies on among those that
/// exist. Only without evidence to copy from (no agents) or with copying off; a text that is
/// a box or region ids is not an answer.
fn written(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    regions: &[RegionText],
    ctx: &StepContext,
    name: &str,
) -> Result<Decided, StepFailure> {
    let on_text = ctx.on_text.clone();
    let stream = |chunk: &str| {
        if let Some(f) = &on_text {
            f(chunk);
        }
    };
    let (body, closed) = s.free_string(cfg.max_answer_tokens, |_, _, _| true, stream)?;
    s.push_text(if closed {
        ", \"regions\": ["
    } else {
        "\", \"regions\": ["
    })?;
    let mut cited: Vec<String> = Vec::new();
    let ids: Vec<String> = regions.iter().map(|r| format!("\"{}\"", r.id)).collect();
    if !ids.is_empty() {
        let mut first: Vec<String> = ids.clone();
        first.push("]".into());
        let k = s.choose(&first)?;
        if k < ids.len() {
            cited.push(regions[k].id.clone());
            let sep = vec![", ".to_string(), "]".to_string()];
            while cited.len() < cfg.max_citations && s.choose(&sep)? == 0 {
                let k = s.choose(&ids)?;
                if !cited.contains(&regions[k].id) {
                    cited.push(regions[k].id.clone());
                }
            }
            if cited.len() >= cfg.max_citations {
                s.push_text("]")?;
            }
        }
    } else {
        s.push_text("]")?;
    }
    let raw = format!(
        "<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{\"text\": \"{body}\", \"regions\": [{}]}}}}\n</tool_call>",
        cited
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let value: String =
        serde_json::from_str(&format!("\"{body}\"")).map_err(|e| StepFailure::Malformed {
            output: raw.clone(),
            reason: format!("the answer text is not a valid JSON string ({e})"),
        })?;
    s.push_text("}}\n</tool_call>")?;
    if looks_like_box_or_id(value.trim()) {
        return Ok(not_found(format!(
            "the model wrote {:?}, a box or region ids, not an answer",
            value.trim()
        )));
    }
    let how = "written by the model, not copied".to_string();
    Ok(answered(&value, cited, raw, how, AnswerSource::Model))
}

/// Where the braces opened (`open` already before `text`) are all closed, outside strings.
fn json_closed(text: &[u8], open: i32) -> Option<usize> {
    let mut depth = open;
    let mut in_str = false;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// One decision written freely by the model and parsed.
fn free_step(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    tools: &[String],
    ctx: &StepContext,
) -> Result<Decided, StepFailure> {
    let on_text = ctx.on_text.clone();
    let (text, _) = s.free(
        cfg.max_answer_tokens + 64,
        |_, _| true,
        |t| t.windows(12).any(|w| w == b"</tool_call>"),
        |chunk| {
            if let Some(f) = &on_text {
                f(chunk)
            }
        },
    )?;
    let names: Vec<&str> = tools.iter().map(String::as_str).collect();
    match parse_decision(&text, &cfg.prompts.answer_tool.name, &names) {
        Ok(decision) => Ok(Decided {
            how: matches!(decision, Decision::Answer { .. })
                .then(|| "written by the model (unconstrained)".into()),
            decision,
            raw: text,
            source: AnswerSource::Model,
        }),
        Err(reason) => Err(StepFailure::Malformed {
            output: text,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_end_at_the_closing_brace() {
        assert_eq!(json_closed(b"}", 1), Some(0));
        assert_eq!(json_closed(b"\"region\": [1, 2", 1), None);
        assert_eq!(json_closed(b"\"a\": \"}\"}}", 1), Some(8));
    }
}
