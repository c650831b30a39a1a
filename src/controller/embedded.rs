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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::llm::prompt_cache::PromptCache;
use super::llm::{LanguageModel, LlmError, Session};
use super::parse::parse_decision;
use super::prompt::{render_conversation, Prompts};
use super::shapes::{shape_for, AnswerShape, Rank, RowOf};
use super::{
    Citation, Controller, ControllerError, Conversation, Decision, RegionText, Step, StepContext,
};
use crate::agents::BoxFuture;
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
        let lm = Arc::new(lm);
        Ok(Self {
            name: name.to_string(),
            session: Arc::new(Mutex::new(Session::new(lm.clone()))),
            lm,
            cfg: Arc::new(cfg),
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

    /// The prompt text a conversation renders to (for inspection and tests).
    pub fn render(&self, conv: &Conversation) -> Result<String, ControllerError> {
        let template = self.lm.chat_template().unwrap_or_default();
        render_conversation(&self.cfg.prompts, template, conv, false)
    }
}

impl Controller for EmbeddedController {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide<'a>(
        &'a self,
        conv: &'a Conversation,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<Step, ControllerError>> {
        Box::pin(async move {
            let prompt = self.render(conv)?;
            // The whole prompt, for `RUST_LOG=p2g::controller=trace`: what the model was shown.
            tracing::trace!(%prompt, "controller prompt");
            let tokens = self.lm.encode(&prompt)?;
            let session = self.session.clone();
            let cfg = self.cfg.clone();
            let ctx = ctx.clone();
            let tools: Vec<String> = conv.tools.iter().map(|t| t.name.clone()).collect();
            let regions = conv.regions.clone();
            let must_answer = conv.must_answer;
            let question = conv.turns.iter().rev().find_map(|t| match t {
                super::Turn::Question { text, .. } => Some(text.clone()),
                _ => None,
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
                        quoted,
                    }) => Ok(Step {
                        decision,
                        raw,
                        stats,
                        how,
                        quoted,
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
    // A prompt that is all one turn shares nothing with the next question's.
    if n >= tokens.len() {
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

/// `t` as it appears inside a JSON string (what the answer string holds), without the quotes.
fn json_escaped(t: &str) -> String {
    let quoted = serde_json::to_string(t).unwrap_or_default();
    // Strip exactly one quote each side: a text ending in `"` ends in `\""` here.
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

/// The evidence texts an answer may be copied from: every region's text (JSON-escaped, as the
/// answer string holds it) joined with spaces in region order, so a copy may run across
/// consecutive lines (an address).
struct CopySource {
    text: Vec<u8>,
    /// Byte offsets where words start.
    starts: Vec<usize>,
    /// (start, end, region id) of each region's text in `text`.
    spans: Vec<(usize, usize, String)>,
}

impl CopySource {
    fn new(regions: &[RegionText]) -> Self {
        let mut text = Vec::new();
        let mut spans = Vec::new();
        for RegionText { id, text: t, .. } in regions {
            if !text.is_empty() {
                text.push(b' ');
            }
            let start = text.len();
            text.extend_from_slice(json_escaped(t).as_bytes());
            spans.push((start, text.len(), id.clone()));
        }
        let starts = (0..text.len())
            .filter(|&i| text[i] != b' ' && (i == 0 || text[i - 1] == b' '))
            .collect();
        Self {
            text,
            starts,
            spans,
        }
    }

    /// Whether `prefix` (leading spaces ignored) begins a word of the evidence.
    fn starts_with_word(&self, prefix: &[u8]) -> bool {
        let p = prefix.trim_ascii_start();
        !p.is_empty() && self.has_at_word(p)
    }

    /// Whether `t` occurs in the evidence starting at a word.
    fn has_at_word(&self, t: &[u8]) -> bool {
        self.find(t).is_some()
    }

    fn find(&self, t: &[u8]) -> Option<usize> {
        self.starts
            .iter()
            .copied()
            .find(|&p| self.text.len() >= p + t.len() && &self.text[p..p + t.len()] == t)
    }

    /// The regions the copy `t` came from: its first occurrence that ends a word ("9.00" is
    /// the line "TOTAL 9.00", not the start of "9.000"), else its first occurrence.
    fn regions_of(&self, t: &[u8]) -> Vec<String> {
        let t = t.trim_ascii_end();
        let whole = self.starts.iter().copied().find(|&p| {
            let e = p + t.len();
            self.text.len() >= e
                && &self.text[p..e] == t
                && (e == self.text.len() || self.text[e] == b' ')
        });
        let Some(p) = whole.or_else(|| self.find(t)) else {
            return Vec::new();
        };
        let e = p + t.len();
        self.spans
            .iter()
            .filter(|(a, b, _)| *a < e && p < *b)
            .map(|(_, _, id)| id.clone())
            .collect()
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

/// What a copied answer may be: `copy_search` asks it about every token.
trait CopyConstraint {
    /// Whether a copy may begin with `t` (a first token).
    fn begins(&self, t: &[u8]) -> bool;
    /// Whether the copy may be `t` so far (`closes`: and end there).
    fn allows(&self, t: &[u8], closes: bool) -> bool;
    /// The regions the finished copy `t` came from.
    fn regions_of(&self, t: &[u8]) -> Vec<String>;
    /// How finished copies are ranked against each other.
    fn rank(&self) -> Rank {
        Rank::Search
    }
    /// Every copy allowed, where the constraint is a list of them (a shape's spans); free
    /// copying from the evidence has no such list.
    fn complete(&self) -> Option<Vec<&[u8]>> {
        None
    }
}

impl CopyConstraint for CopySource {
    fn begins(&self, t: &[u8]) -> bool {
        self.has_at_word(t)
    }

    fn allows(&self, t: &[u8], _closes: bool) -> bool {
        self.has_at_word(t)
    }

    fn regions_of(&self, t: &[u8]) -> Vec<String> {
        CopySource::regions_of(self, t)
    }
}

/// The spans of the evidence with a question's answer shape (JSON-escaped, as the answer
/// string holds them), each with the regions it covers: a copy must be one of them, whole.
struct ShapedSpans {
    spans: Vec<(Vec<u8>, Vec<String>)>,
    rank: Rank,
    /// The shape's name, for the trace.
    shape: String,
}

impl ShapedSpans {
    fn new(regions: &[RegionText], shape: &AnswerShape) -> Self {
        let lines: Vec<String> = regions.iter().map(|r| json_escaped(&r.text)).collect();
        // Each region's row as the controller reads it: its regions' texts, " | " between.
        let mut cells: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for r in regions {
            cells.entry(r.row).or_default().push(&r.text);
        }
        let joined: BTreeMap<usize, String> =
            cells.into_iter().map(|(n, c)| (n, c.join(" | "))).collect();
        let rows: Vec<RowOf> = regions
            .iter()
            .map(|r| RowOf {
                number: r.row,
                text: joined[&r.row].clone(),
            })
            .collect();
        let spans = shape
            .find(&lines, &rows)
            .into_iter()
            .map(|span| {
                let ids = regions[span.lines].iter().map(|r| r.id.clone());
                (span.text.into_bytes(), ids.collect())
            })
            .collect();
        Self {
            spans,
            rank: shape.rank,
            shape: shape.name.clone(),
        }
    }

    /// How a copy from these spans was chosen, in words, for a person reading the trace.
    fn how_chosen(&self) -> String {
        let by = match self.rank {
            Rank::Search => "the model's likeliest copy, token by token",
            Rank::Whole => "the one the model found likeliest as a whole",
            Rank::Start => "the one whose first token the model found likeliest",
            Rank::First => "the first in reading order (a rule: the model was not asked)",
        };
        format!(
            "copied: one of {} spans of the `{}` answer shape in the evidence, {by}",
            self.spans.len(),
            self.shape
        )
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl CopyConstraint for ShapedSpans {
    fn begins(&self, t: &[u8]) -> bool {
        self.allows(t, false)
    }

    fn allows(&self, t: &[u8], closes: bool) -> bool {
        self.spans
            .iter()
            .any(|(s, _)| if closes { s == t } else { s.starts_with(t) })
    }

    fn regions_of(&self, t: &[u8]) -> Vec<String> {
        self.spans
            .iter()
            .find(|(s, _)| s == t)
            .map(|(_, ids)| ids.clone())
            .unwrap_or_default()
    }

    fn rank(&self) -> Rank {
        self.rank
    }

    fn complete(&self) -> Option<Vec<&[u8]>> {
        Some(self.spans.iter().map(|(s, _)| s.as_slice()).collect())
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
}

/// A step's decision, the text it amounts to, and how an answer's text was chosen.
struct Decided {
    decision: Decision,
    raw: String,
    how: Option<String>,
    /// The answer is one of a shape's spans, whole (`Step::quoted`).
    quoted: bool,
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
        regions,
        must_answer,
        observed,
        ..
    } = *input;
    let answer = cfg.prompts.answer_tool.name.clone();
    // A text controller knows nothing of the image before a tool has looked at it: answering
    // then could only be a guess, so its first step is a call.
    let blind = !observed;
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
        s.push_text("{\"text\": \"")?;
        let on_text = ctx.on_text.clone();
        let stream = |chunk: &str| {
            if let Some(f) = &on_text {
                f(chunk);
            }
        };
        let source = CopySource::new(regions);
        // A question with an answer shape (a date, an amount) whose shape occurs in the
        // evidence is answered with one of those spans, whatever the model's first token.
        let shaped = input
            .question
            .filter(|_| cfg.copy_answers)
            .and_then(|q| shape_for(&cfg.prompts.shapes, q))
            .map(|shape| ShapedSpans::new(regions, shape))
            .filter(|spans| !spans.is_empty());
        let mut copy = None;
        let mut how = None;
        if let Some(spans) = &shaped {
            copy = copy_search(s, cfg, spans)?;
            how = copy.as_ref().map(|_| spans.how_chosen());
        }
        let quoted = copy.is_some();
        // Otherwise copy mode when the model's own next words start a word of the evidence:
        // the text is then copied from the evidence by construction (a small model otherwise
        // "normalises" 25/12/2018 into 2018-12-25, or misreads a digit).
        if copy.is_none() && cfg.copy_answers && source.starts_with_word(&s.peek()?) {
            copy = copy_search(s, cfg, &source)?;
            if copy.is_some() {
                how = Some("copied: words of the evidence, the model's likeliest copy".into());
            }
        }
        let how = how.unwrap_or_else(|| "written by the model, not copied".into());
        let copying = copy.is_some();
        let (body, closed, mut cited) = if let Some((body, closed, cited)) = copy {
            stream(&body);
            (body, closed, cited)
        } else {
            let (body, closed) = s.free_string(cfg.max_answer_tokens, |_, _, _| true, stream)?;
            (body, closed, Vec::new())
        };
        s.push_text(if closed {
            ", \"regions\": ["
        } else {
            "\", \"regions\": ["
        })?;
        let ids: Vec<String> = regions.iter().map(|r| format!("\"{}\"", r.id)).collect();
        if copying {
            // The regions are where the text was copied from; p2g writes them.
            let list: Vec<String> = cited.iter().map(|c| format!("\"{c}\"")).collect();
            s.push_text(&format!("{}]", list.join(", ")))?;
        } else if !ids.is_empty() {
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
        return Ok(Decided {
            decision: Decision::Answer {
                text: value.trim().to_string(),
                grounding: cited
                    .into_iter()
                    .map(|region| Citation {
                        region,
                        phrase: None,
                    })
                    .collect(),
            },
            raw,
            how: Some(how),
            quoted,
        });
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
        quoted: false,
    })
}

/// Copies the answer from the evidence. The few most likely first tokens that start a word of
/// the evidence are each continued greedily under the copy constraint, and the copy the model
/// finds most likely as a whole, closing quote included, wins. The first token alone is a
/// poor guide: Qwen writes numbers digit by digit, so the "2" of the "2018-10-19" it would
/// like to write starts the copy "20" (of the time "20:49:59"), while the copy that starts
/// with "1" ("19/10/2018") is the one it then finds likely to the end.
///
/// Returns the copied text (JSON-escaped, as written), whether its string was closed and the
/// regions it came from, or `None` when no allowed token starts a copy.
fn copy_search(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    source: &dyn CopyConstraint,
) -> Result<Option<(String, bool, Vec<String>)>, StepFailure> {
    match (source.rank(), source.complete()) {
        (Rank::Whole, Some(copies)) => return exact_copy(s, source, &copies),
        (Rank::First, Some(copies)) => return first_copy(s, source, &copies),
        _ => {}
    }
    let lm = s.model().clone();
    let mark = s.mark()?;
    let firsts = s.top_allowed(cfg.copy_alternatives.max(1), |id, bytes| {
        lm.is_plain(id, bytes)
            && !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
            && source.begins(bytes)
    })?;
    // (log-probability, text, closed, tokens)
    let mut best: Option<(f64, String, bool, Vec<u32>)> = None;
    let mut session_holds_best = false;
    let by_start = source.rank() == Rank::Start;
    for (i, &(id, first_lp)) in firsts.iter().enumerate() {
        // Ranked by their start, copies are not compared as wholes: nothing to give up on.
        let floor = match &best {
            Some(b) if !by_start => b.0,
            _ => f64::NEG_INFINITY,
        };
        // Alternatives come most likely first: one already below the best copy cannot win.
        if first_lp < floor {
            break;
        }
        if i > 0 {
            s.rewind(&mark);
        }
        s.take_logprob();
        s.give_up_below(floor);
        s.force(id, first_lp);
        let head = lm.token_bytes(id).to_vec();
        let copied = s.free_string(
            cfg.max_answer_tokens.saturating_sub(1),
            |so_far, piece, closes| {
                let mut t = head.clone();
                t.extend_from_slice(so_far);
                t.extend_from_slice(piece);
                source.allows(&t, closes)
            },
            |_| {},
        );
        s.give_up_below(f64::NEG_INFINITY);
        let (rest, closed) = copied?;
        let total = s.take_logprob();
        tracing::debug!(
            copy = %format_args!("{}{rest}", String::from_utf8_lossy(&head)),
            closed,
            logprob = total,
            first_logprob = first_lp,
            tokens = s.tokens_since(&mark).len(),
            "copy candidate"
        );
        // A copy that was given up (or ran out of tokens) only counts when nothing else does.
        let counts = best
            .as_ref()
            .is_none_or(|b| closed && (!b.2 || (!by_start && total > b.0)));
        session_holds_best = counts;
        if counts {
            let text = format!("{}{rest}", String::from_utf8_lossy(&head));
            best = Some((total, text, closed, s.tokens_since(&mark)));
        }
        // Alternatives come likeliest start first: the first finished copy is the one.
        if by_start && closed {
            break;
        }
    }
    let Some((_, text, closed, tokens)) = best else {
        return Ok(None);
    };
    if !session_holds_best {
        s.rewind(&mark);
        s.push_tokens(&tokens);
    }
    let cited = source.regions_of(text.as_bytes());
    Ok(Some((text, closed, cited)))
}

/// Copies the answer from a known list of copies: the one the model finds most likely as a
/// whole, closing quote included, scored exactly (each copy is one forward pass). The greedy
/// search above follows one path per first token, so of "33.92" and "33.90" it only ever
/// sees the one whose last digit it prefers after "33.9"; here both are scored. As in the
/// greedy search, a copy ends with the likeliest token that closes the string there (`"`,
/// `",`, ...). A copy's first token bounds its score, so copies are tried likeliest first
/// token first and the search stops once no remaining copy can win.
fn exact_copy(
    s: &mut Session,
    source: &dyn CopyConstraint,
    copies: &[&[u8]],
) -> Result<Option<(String, bool, Vec<String>)>, StepFailure> {
    let lm = s.model().clone();
    let quote = lm.encode("\"")?.first().copied();
    let Some(quote) = quote else {
        return Ok(None);
    };
    let mut scored: Vec<(Vec<u32>, &[u8])> = Vec::new();
    for &copy in copies {
        let ids = lm.encode(&String::from_utf8_lossy(copy))?;
        if !ids.is_empty() {
            scored.push((ids, copy));
        }
    }
    let firsts: Vec<u32> = scored.iter().map(|(ids, _)| ids[0]).collect();
    let bounds = s.next_logprobs(&firsts)?;
    let mut order: Vec<usize> = (0..scored.len()).collect();
    order.sort_by(|&a, &b| bounds[b].total_cmp(&bounds[a]));
    let mark = s.mark()?;
    // The tokens that close the string where they start, looked up once for every copy.
    let closers = lm.plain_tokens_starting_with(b'"');
    // (log-probability, index)
    let mut best: Option<(f64, usize)> = None;
    for (n, &i) in order.iter().enumerate() {
        if best.is_some_and(|(lp, _)| bounds[i] <= lp) {
            break;
        }
        if n > 0 {
            s.rewind(&mark);
        }
        let text = s.score(&scored[i].0)?;
        let close = s
            .next_logprobs(&closers)?
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        let lp = text + close;
        tracing::debug!(
            copy = %String::from_utf8_lossy(scored[i].1),
            logprob = lp,
            first_logprob = bounds[i],
            tokens = scored[i].0.len() + 1,
            "copy candidate"
        );
        if best.is_none_or(|(b, _)| lp > b) {
            best = Some((lp, i));
        }
    }
    let Some((_, i)) = best else {
        return Ok(None);
    };
    s.rewind(&mark);
    Ok(Some(take_copy(s, source, &scored[i].0, scored[i].1, quote)))
}

/// Takes the first of `copies` (the shape's spans in reading order) as the answer string,
/// closing it. The model is not asked; the debug log says the rule chose.
fn first_copy(
    s: &mut Session,
    source: &dyn CopyConstraint,
    copies: &[&[u8]],
) -> Result<Option<(String, bool, Vec<String>)>, StepFailure> {
    let lm = s.model().clone();
    let (Some(quote), Some(&copy)) = (lm.encode("\"")?.first().copied(), copies.first()) else {
        return Ok(None);
    };
    let ids = lm.encode(&String::from_utf8_lossy(copy))?;
    if ids.is_empty() {
        return Ok(None);
    }
    let taken = take_copy(s, source, &ids, copy, quote);
    tracing::debug!(copy = %taken.0, of = copies.len(), "copy by rank = first");
    Ok(Some(taken))
}

/// Writes the chosen copy (its tokens `ids`) and the closing quote into the session; returns
/// the copied text, closed, with the regions it came from.
fn take_copy(
    s: &mut Session,
    source: &dyn CopyConstraint,
    ids: &[u32],
    copy: &[u8],
    quote: u32,
) -> (String, bool, Vec<String>) {
    s.push_tokens(ids);
    s.push_tokens(&[quote]);
    let text = String::from_utf8_lossy(copy).into_owned();
    (text, true, source.regions_of(copy))
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
            quoted: false,
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

    fn regions(texts: &[&str]) -> Vec<RegionText> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| RegionText {
                id: format!("r{}", i + 1),
                text: t.to_string(),
                row: i,
            })
            .collect()
    }

    #[test]
    fn copies_come_from_words_of_the_evidence() {
        let src = CopySource::new(&regions(&[
            "DATE: 25/12/2018",
            "TAMAN DAYA,",
            "81100 JOHOR",
        ]));
        assert!(src.starts_with_word(b"25/12"));
        assert!(src.starts_with_word(b" TAMAN"));
        assert!(!src.starts_with_word(b"5/12"));
        assert!(!src.starts_with_word(b"It"));
        assert_eq!(src.regions_of(b"25/12/2018"), ["r1"]);
        assert_eq!(src.regions_of(b"TAMAN DAYA, 81100 JOHOR"), ["r2", "r3"]);
        let src = CopySource::new(&regions(&["9.000", "TOTAL 9.00"]));
        assert_eq!(src.regions_of(b"9.00"), ["r2"]);
        assert_eq!(src.regions_of(b"9.0"), ["r1"]);
    }

    #[test]
    fn evidence_is_escaped_as_the_answer_string_holds_it() {
        assert_eq!(json_escaped("9.00"), "9.00");
        assert_eq!(json_escaped("say \"hi\""), "say \\\"hi\\\"");
        assert_eq!(json_escaped(""), "");
    }

    #[test]
    fn arguments_end_at_the_closing_brace() {
        assert_eq!(json_closed(b"}", 1), Some(0));
        assert_eq!(json_closed(b"\"region\": [1, 2", 1), None);
        assert_eq!(json_closed(b"\"a\": \"}\"}}", 1), Some(8));
    }
}
