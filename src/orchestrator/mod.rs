//! The grounding loop: per question, ask the controller for a decision, run the agent it calls,
//! feed back what the agent found, until it answers.
//!
//! ```text
//! question ─▶ controller ─▶ Call{agent,args} ─▶ agent ─▶ findings ─▶ evidence (r1, r2, …) ─┐
//!                 ▲                                                                        │
//!                 └──────────────────────── observation ◀──────────────────────────────────┘
//!             controller ─▶ Answer{text, cited regions} ─▶ grounding ─▶ Answer
//! ```
//!
//! The loop owns the rules a controller cannot be trusted with: a step budget (the last step
//! may only answer), no identical call twice (the controller is pointed at the regions it
//! already has), agent errors and timeouts returned as observations, one repair attempt for an
//! unusable output, cancellation between and during steps. A [`Session`] keeps the evidence
//! and the conversation of one image, so follow-up questions reuse what was read.

mod appearance;
mod blocks;
mod calls;
mod colour_focus;
pub mod evidence;
mod objects;
mod visual;
pub mod zoom;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::agents::{Capability, DynAgent, FindingKind, Lead, ToolSet};
use crate::controller::{
    AnswerSource, Controller, ControllerError, Conversation, Decision, ImageFacts, RegionText,
    Step, StepContext, Turn,
};
use crate::trace::{TraceEvent, TraceSink};
use crate::vision::{BBox, Image};

pub use crate::answer::grounding::{self, Grounding};
pub use appearance::asks_about_appearance;
use calls::Caller;
pub use evidence::{Evidence, Region};
use zoom::{inside, Round, ZoomSpent};
pub use zoom::{ZoomBudget, ZoomRecord};

/// The longest question the loop takes: a question is a sentence or a few, and a longer one
/// would crowd the evidence out of the controller's context.
pub const MAX_QUESTION_CHARS: usize = 4000;

/// The longest answer the loop takes from a controller.
pub const MAX_ANSWER_CHARS: usize = 4000;

/// Errors of the loop. Agent failures are not among them: they go back to the controller.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(
        "the controller gave an unusable answer twice ({}); its last output was {:?}. \
         Try rephrasing the question or a larger controller (--controller)",
        crate::one_line(.reason, 300), crate::one_line(.output, 200)
    )]
    Unusable { output: String, reason: String },
    #[error(
        "the controller gave no answer within {steps} steps{failure}. Try rephrasing the \
         question, more --max-steps, or a larger controller (--controller)"
    )]
    NoAnswer { steps: usize, failure: String },
    #[error("the question was cancelled")]
    Cancelled,
    #[error("an orchestrator needs a controller; call .controller(..) on the builder")]
    NoController,
    #[error("two agents are named {0:?}; tool names must be unique")]
    DuplicateAgent(String),
    #[error("the question is empty")]
    EmptyQuestion,
    #[error(
        "the question is too long ({chars} characters; the limit is {limit}): ask about one \
         thing; the image's text is read by the agents, not pasted in"
    )]
    QuestionTooLong { chars: usize, limit: usize },
    #[error(
        "the question holds the control character U+{0:04X}; send plain text (tabs and line \
         breaks are fine)"
    )]
    ControlCharacter(u32),
    #[error(
        "the region [{0},{1},{2},{3}] is not inside the {4}x{5} image (at least a pixel of it \
         must be)"
    )]
    BadRegion(f32, f32, f32, f32, u32, u32),
}

/// What earlier questions of a session leave in the controller's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum History {
    /// Every question, call, observation and answer (a conversation: "and the one below?").
    #[default]
    Full,
    /// Only the evidence: the first question with every call and observation since, then the
    /// current question. Earlier answers cannot bias independent questions, and the prompt
    /// prefix (system, first question, evidence) stays cached.
    Evidence,
}

/// Limits of the loop.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Controller decisions per question; the last one may only answer.
    pub max_steps: usize,
    /// An agent call that takes longer is abandoned and reported to the controller.
    pub agent_timeout: Duration,
    pub history: History,
    /// How much the loop may zoom on its own per question ([`zoom`]).
    pub zoom: ZoomBudget,
    /// When the text read makes the image a document (its unread margins are not read
    /// before answering).
    pub document: crate::answer::DocumentTest,
    /// After this long on one question, the controller's next decision must answer: no more
    /// calls or zooms (its first decision may still call an agent: before that there is
    /// nothing to answer from).
    pub answer_by: Duration,
    /// Crops of found regions a vision-language controller is shown per decision, at most
    /// (besides the whole image); see `visual`.
    pub max_crops: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_steps: 6,
            agent_timeout: Duration::from_secs(300),
            history: History::Full,
            zoom: ZoomBudget::default(),
            document: Default::default(),
            answer_by: Duration::from_secs(40),
            max_crops: 8,
        }
    }
}

/// A controller and the agents it may call.
pub struct Orchestrator {
    controller: Arc<dyn Controller>,
    tools: ToolSet,
    cfg: LoopConfig,
}

/// Builds an [`Orchestrator`].
#[derive(Default)]
pub struct OrchestratorBuilder {
    controller: Option<Arc<dyn Controller>>,
    /// Each agent, and whether the controller is offered it as a tool.
    agents: Vec<(Arc<dyn DynAgent>, bool)>,
    cfg: LoopConfig,
}

impl OrchestratorBuilder {
    pub fn controller(mut self, c: impl Controller + 'static) -> Self {
        self.controller = Some(Arc::new(c));
        self
    }

    pub fn controller_arc(mut self, c: Arc<dyn Controller>) -> Self {
        self.controller = Some(c);
        self
    }

    /// Offers an agent to the controller.
    pub fn agent(mut self, a: impl DynAgent + 'static) -> Self {
        self.agents.push((Arc::new(a), true));
        self
    }

    pub fn agent_arc(mut self, a: Arc<dyn DynAgent>) -> Self {
        self.agents.push((a, true));
        self
    }

    /// Gives the loop an agent it runs on its own policies (e.g. finding the objects a
    /// question names) without offering it to the controller as a tool: a small controller
    /// offered a detector calls it with made-up arguments where it should read.
    pub fn loop_agent_arc(mut self, a: Arc<dyn DynAgent>) -> Self {
        self.agents.push((a, false));
        self
    }

    pub fn max_steps(mut self, n: usize) -> Self {
        self.cfg.max_steps = n.max(1);
        self
    }

    pub fn agent_timeout(mut self, d: Duration) -> Self {
        self.cfg.agent_timeout = d;
        self
    }

    pub fn history(mut self, h: History) -> Self {
        self.cfg.history = h;
        self
    }

    /// After this long on one question, the controller must answer with what it has.
    pub fn answer_by(mut self, d: Duration) -> Self {
        self.cfg.answer_by = d;
        self
    }

    /// How much the loop zooms on its own when the evidence does not answer
    /// (`max_zooms = 0`: never).
    pub fn zoom_budget(mut self, b: ZoomBudget) -> Self {
        self.cfg.zoom = b;
        self
    }

    pub fn build(self) -> Result<Orchestrator, OrchestratorError> {
        let controller = self.controller.ok_or(OrchestratorError::NoController)?;
        let mut tools = ToolSet::new();
        for (a, offered) in self.agents {
            tools
                .add(a, offered)
                .map_err(|d| OrchestratorError::DuplicateAgent(d.0))?;
        }
        Ok(Orchestrator {
            controller,
            tools,
            cfg: self.cfg,
        })
    }
}

impl Orchestrator {
    pub fn builder() -> OrchestratorBuilder {
        OrchestratorBuilder::default()
    }

    pub fn controller(&self) -> &dyn Controller {
        self.controller.as_ref()
    }

    /// Every agent, offered to the controller or kept to the loop.
    pub fn tools(&self) -> &ToolSet {
        &self.tools
    }

    pub fn agents(&self) -> impl Iterator<Item = &dyn DynAgent> {
        self.tools.all().map(|a| a.as_ref())
    }

    /// The agents the controller is offered as tools.
    pub fn offered(&self) -> impl Iterator<Item = &dyn DynAgent> {
        self.tools.offered().map(|a| a.as_ref())
    }

    /// Starts a conversation about one image. `path` names it in traces.
    pub fn session(&self, image: Image, path: &Path) -> Session<'_> {
        Session::new(self, image, path)
    }
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub answer: String,
    /// The regions it relies on.
    pub grounding: Vec<Grounding>,
    /// The answer with Kosmos-2-style links `[phrase](x1,y1,x2,y2)`.
    pub linked: String,
    /// Controller decisions taken.
    pub steps: usize,
    pub elapsed_ms: u64,
    /// What the controller wrote, before the text was copied from the cited regions.
    #[serde(skip)]
    pub controller_text: String,
}

/// Per-question options.
#[derive(Clone, Default)]
pub struct AskOptions {
    /// Ask about this region of the image (referring).
    pub region: Option<BBox>,
    /// Streaming and cancellation.
    pub ctx: StepContext,
}

/// A conversation about one image: its evidence and turns persist across questions.
pub struct Session<'o> {
    orch: &'o Orchestrator,
    image: Image,
    path: String,
    facts: ImageFacts,
    turns: Vec<Turn>,
    evidence: Evidence,
    /// Each successful call (`agent arguments`) with the regions it returned, to point a
    /// repeated call at them.
    call_regions: HashMap<String, Vec<String>>,
    /// Places the agents could not read well, from every call so far (the zoom policy's
    /// leads).
    leads: Vec<Lead>,
    /// Windows read magnified so far.
    zoomed: Vec<BBox>,
    /// The objects the current question names, where found: answers come from the text
    /// inside them when there is any.
    object_focus: Vec<BBox>,
    /// The text regions of the colours the current question names, when any match (see
    /// `colour_focus`).
    colour_focus: Option<Vec<String>>,
    /// The basic colour names each text region shows, measured once.
    region_colours: HashMap<String, std::collections::BTreeSet<String>>,
    /// The whole image as a vision-language controller is shown it, made on first use.
    shown_whole: visual::ShownWhole,
    trace: TraceSink,
}

impl<'o> Session<'o> {
    fn new(orch: &'o Orchestrator, image: Image, path: &Path) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let facts = ImageFacts {
            name,
            width: image.width(),
            height: image.height(),
        };
        let path = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        Self {
            orch,
            image,
            path,
            facts,
            turns: Vec::new(),
            evidence: Evidence::default(),
            call_regions: HashMap::new(),
            object_focus: Vec::new(),
            colour_focus: None,
            region_colours: HashMap::new(),
            leads: Vec::new(),
            zoomed: Vec::new(),
            shown_whole: Default::default(),
            trace: TraceSink::default(),
        }
    }

    /// Sends trace events to `sink` (e.g. [`TraceSink::to_file`]) from now on.
    pub fn set_trace(&mut self, sink: TraceSink) {
        self.trace = sink;
    }

    pub fn trace(&self) -> &[TraceEvent] {
        self.trace.events()
    }

    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    pub fn image(&self) -> &Image {
        &self.image
    }

    pub fn image_path(&self) -> &str {
        &self.path
    }

    /// Answers `question`, calling agents as the controller decides.
    pub async fn ask(
        &mut self,
        question: &str,
        opts: AskOptions,
    ) -> Result<Answer, OrchestratorError> {
        let span = tracing::info_span!("ask", question = %question);
        let started = Instant::now();
        let question = question.trim();
        if question.is_empty() {
            return Err(OrchestratorError::EmptyQuestion);
        }
        if let Some(c) = question
            .chars()
            .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(OrchestratorError::ControlCharacter(c as u32));
        }
        let chars = question.chars().count();
        if chars > MAX_QUESTION_CHARS {
            return Err(OrchestratorError::QuestionTooLong {
                chars,
                limit: MAX_QUESTION_CHARS,
            });
        }
        if let Some(r) = opts.region {
            let (w, h) = (self.facts.width as f32, self.facts.height as f32);
            // At least a pixel of it must be inside the image: a box a thousandth of a pixel
            // wide holds nothing to read.
            let inside_w = r.x2.min(w) - r.x1.max(0.0);
            let inside_h = r.y2.min(h) - r.y1.max(0.0);
            if !(r.x1 < r.x2 && r.y1 < r.y2 && inside_w >= 1.0 && inside_h >= 1.0) {
                return Err(OrchestratorError::BadRegion(
                    r.x1,
                    r.y1,
                    r.x2,
                    r.y2,
                    self.facts.width,
                    self.facts.height,
                ));
            }
        }
        let turns_before = self.turns.len();
        self.trace.record(TraceEvent::Question {
            question: question.to_string(),
            region: opts.region,
            image: self.path.clone(),
            width: self.facts.width,
            height: self.facts.height,
            controller: self.orch.controller.name().to_string(),
            tools: self.orch.offered().map(|a| a.name().to_string()).collect(),
        });
        if let Some(a) = self.colour_answer(question, &opts, started).await {
            return Ok(a);
        }
        if let Some(a) = self.unanswerable(question, started) {
            return Ok(a);
        }
        self.turns.push(Turn::Question {
            text: question.to_string(),
            region: opts.region,
        });
        let result = self
            .run_loop(&opts, started, turns_before)
            .instrument(span)
            .await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(a) => Ok(a),
            Err((e, steps)) => {
                // A failed or cancelled question leaves no half-finished turns behind; the
                // evidence it gathered stays.
                self.turns.truncate(turns_before);
                self.trace.record(TraceEvent::Error {
                    error: e.to_string(),
                    steps,
                    elapsed_ms,
                });
                Err(e)
            }
        }
    }

    fn cancelled(opts: &AskOptions) -> bool {
        opts.ctx.cancel.load(Ordering::Relaxed)
    }

    /// The turns the controller sees for the question starting at `current`.
    fn visible_turns(&self, current: usize) -> Vec<Turn> {
        match self.orch.cfg.history {
            History::Full => self.turns.clone(),
            History::Evidence => {
                let first_q = self
                    .turns
                    .iter()
                    .position(|t| matches!(t, Turn::Question { .. }));
                self.turns
                    .iter()
                    .enumerate()
                    .filter(|(i, t)| {
                        *i >= current
                            || Some(*i) == first_q
                            || matches!(t, Turn::Call { .. } | Turn::Observation { .. })
                    })
                    .map(|(_, t)| t.clone())
                    .collect()
            }
        }
    }

    /// The regions the controller may answer from: not superseded by a closer read and,
    /// for a question about a region, inside it.
    fn answerable_regions(&self, focus: Option<BBox>) -> (Vec<RegionText>, bool) {
        // A layout block's finding is its kind ("title", "table"), a label, not content.
        let layout: Option<&str> = self
            .orch
            .tools
            .with_capability(Capability::Layout)
            .map(|a| a.name());
        let content = |r: &Region| {
            r.stands()
                && !(r.kind == FindingKind::Object && Some(r.agent.as_str()) == layout)
                && focus.is_none_or(|f| inside(&r.bbox, &f))
        };
        // The objects a question names narrow the answer to the text on them, when some was
        // read there ("the word on the wall clock", "the game on the left monitor").
        let narrow = self.object_narrowing(focus);
        let on_object = |b: &BBox| self.object_focus.iter().any(|o| inside(b, o));
        // Colour words narrow further to the text of those colours, when some of it is
        // still in view.
        let coloured = |id: &str| {
            self.colour_focus
                .as_ref()
                .is_some_and(|ids| ids.iter().any(|i| i == id))
        };
        let by_colour = self
            .evidence
            .regions()
            .iter()
            .any(|r| content(r) && coloured(&r.id) && (!narrow || on_object(&r.bbox)));
        let all = self
            .evidence
            .regions()
            .iter()
            .filter(|r| content(r))
            .count();
        let regions: Vec<RegionText> = self
            .evidence
            .regions()
            .iter()
            .zip(self.evidence.row_numbers())
            .filter(|(r, _)| content(r))
            .filter(|(r, _)| !narrow || (r.kind == FindingKind::Text && on_object(&r.bbox)))
            .filter(|(r, _)| !by_colour || coloured(&r.id))
            .map(|(r, row)| RegionText {
                id: r.id.clone(),
                text: r.text.clone(),
                row,
                bbox: r.bbox,
                score: r.score,
            })
            .collect();
        // Narrowed only if something was left out (a block of paragraphs may be the page).
        let narrowed = (narrow || by_colour) && regions.len() < all;
        (regions, narrowed)
    }

    /// Whether the objects (or page blocks) the question names narrow the answer: some text
    /// that stands was read on them, and the question is not about a region.
    fn object_narrowing(&self, focus: Option<BBox>) -> bool {
        focus.is_none()
            && self.evidence.regions().iter().any(|r| {
                r.kind == FindingKind::Text
                    && r.stands()
                    && self.object_focus.iter().any(|o| inside(&r.bbox, o))
            })
    }

    async fn run_loop(
        &mut self,
        opts: &AskOptions,
        started: Instant,
        current: usize,
    ) -> Result<Answer, (OrchestratorError, usize)> {
        let max = self.orch.cfg.max_steps;
        let mut repaired = false;
        let mut spent = ZoomSpent::default();
        let question = self
            .turns
            .iter()
            .rev()
            .find_map(|t| match t {
                Turn::Question { text, .. } => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_default();
        self.object_focus.clear();
        self.colour_focus = None;
        let mut objects_looked = false;
        if let Some(focus) = opts.region {
            // Referring: a question about a region is answered from what is read inside it,
            // read anew (magnified) when little was read there.
            self.read_region(focus, opts, &mut spent).await;
        }
        // A follow-up about a photo: first the objects it names and the places it points at;
        // about a document, the blocks it names.
        if !self.evidence.regions().is_empty() {
            if self.is_document() {
                if opts.region.is_none() {
                    self.find_named_blocks(0, &question, opts, &mut spent).await;
                    objects_looked = true;
                }
            } else {
                if opts.region.is_none() {
                    self.find_named_objects(0, &question, opts, &mut spent)
                        .await;
                    objects_looked = true;
                }
                self.zoom_round(0, &question, opts, &mut spent, Round::Pointed)
                    .await;
            }
        }
        // A controller that repeats a call was told so, and the step after must answer: a small
        // model behind a server otherwise calls the same tool until the budget runs out.
        let mut repeated = false;
        for step in 1..=max {
            if Self::cancelled(opts) {
                return Err((OrchestratorError::Cancelled, step - 1));
            }
            // The last step, or time is up: answer with what there is (but a first step may
            // still look: a text controller has nothing to answer from before it has).
            let last = step == max
                || repeated
                || (step > 1 && started.elapsed() >= self.orch.cfg.answer_by);
            self.focus_on_colours(step, &question, opts.region);
            let conv = self.conversation(current, opts.region, last);
            let Some(step_taken) = self
                .decide(step, &conv, opts, &mut repaired)
                .await
                .map_err(|e| (e, step))?
            else {
                continue;
            };
            let Step {
                decision,
                quoted,
                source,
                ..
            } = step_taken;
            match decision {
                Decision::Answer { text, grounding } => {
                    // A span chosen by likelihood is only as good as its reading: a weak one
                    // is read again closer, and the controller asked again if that changed it.
                    if source == AnswerSource::Evidence
                        && !last
                        && self.verify(step, &grounding, opts, &mut spent).await
                    {
                        continue;
                    }
                    return Ok(self.answered(&text, &grounding, quoted, step, started));
                }
                Decision::NotFound { .. } => {
                    // Look again where the image was not read well; answer "not found" only
                    // when there is nowhere left to look or the budget is spent.
                    if !last
                        && self
                            .zoom_round(step, &question, opts, &mut spent, Round::Again)
                            .await
                    {
                        continue;
                    }
                    if Self::cancelled(opts) {
                        return Err((OrchestratorError::Cancelled, step));
                    }
                    return Ok(self.not_found(opts.region, &spent, step, started));
                }
                Decision::Call { agent, arguments } => {
                    repeated = self.called(step, agent, arguments, opts).await;
                    if Self::cancelled(opts) {
                        return Err((OrchestratorError::Cancelled, step));
                    }
                    // A photo's places where text was seen but not read, or read weakly, are
                    // read magnified before the controller answers from the first pass.
                    if self.is_document() {
                        if !objects_looked
                            && opts.region.is_none()
                            && started.elapsed() < self.orch.cfg.answer_by
                        {
                            self.find_named_blocks(step, &question, opts, &mut spent)
                                .await;
                            objects_looked = true;
                        }
                    } else if started.elapsed() < self.orch.cfg.answer_by {
                        if !objects_looked && opts.region.is_none() {
                            self.find_named_objects(step, &question, opts, &mut spent)
                                .await;
                            objects_looked = true;
                        }
                        self.zoom_round(step, &question, opts, &mut spent, Round::FirstRead)
                            .await;
                    }
                }
            }
        }
        // Say what went wrong last: a controller that kept calling tools with arguments they
        // refused is told apart from one that never settled.
        let failure = self
            .trace
            .events()
            .iter()
            .rev()
            .take_while(|e| !matches!(e, TraceEvent::Question { .. }))
            .find_map(|e| match e {
                TraceEvent::Tool {
                    agent,
                    status,
                    summary,
                    ..
                } if *status != crate::agents::CallStatus::Ok => Some(format!(
                    "; its last call failed ({agent}: {})",
                    crate::one_line(summary, 200)
                )),
                _ => None,
            })
            .unwrap_or_default();
        Err((
            OrchestratorError::NoAnswer {
                steps: max,
                failure,
            },
            max,
        ))
    }

    /// What the controller is given for one decision.
    fn conversation(&self, current: usize, focus: Option<BBox>, last: bool) -> Conversation {
        let (regions, narrowed) = self.answerable_regions(focus);
        // Narrowed regions (one block of a page) do not show whether the image is a
        // document: the whole evidence does.
        let document = narrowed.then(|| self.is_document());
        let visual = if self.orch.controller.accepts_images() {
            self.visual_inputs(&regions)
        } else {
            Vec::new()
        };
        Conversation {
            image: self.facts.clone(),
            turns: self.visible_turns(current),
            tools: self.orch.tools.definitions(),
            regions,
            narrowed,
            document,
            visual,
            // The last step may only answer.
            must_answer: last,
        }
    }

    /// Asks the controller for one decision and records it. An unusable output is shown to
    /// the controller once (`Ok(None)`: ask again); a second one is an error.
    async fn decide(
        &mut self,
        step: usize,
        conv: &Conversation,
        opts: &AskOptions,
        repaired: &mut bool,
    ) -> Result<Option<Step>, OrchestratorError> {
        let t0 = Instant::now();
        let decided = self
            .orch
            .controller
            .decide(conv, &opts.ctx)
            .instrument(tracing::info_span!("decide", step))
            .await
            .and_then(|s| match &s.decision {
                // An answer is a phrase or a few sentences; pages of text are a model that
                // did not stop (or a server that sent junk), repaired like any other output.
                Decision::Answer { text, .. } if text.chars().count() > MAX_ANSWER_CHARS => {
                    Err(ControllerError::Malformed {
                        output: crate::one_line(text, 200),
                        reason: format!(
                            "the answer is {} characters long; answer in at most \
                             {MAX_ANSWER_CHARS}",
                            text.chars().count()
                        ),
                        stats: s.stats.clone(),
                    })
                }
                _ => Ok(s),
            });
        match decided {
            Ok(s) => {
                if !s.shown.is_empty() {
                    self.trace.record(TraceEvent::Visual {
                        step,
                        tokens: s.shown.iter().map(|i| i.tokens).sum(),
                        images: s.shown.clone(),
                    });
                }
                self.trace.record(TraceEvent::Step {
                    step,
                    stats: s.stats.clone(),
                    decision: s.decision.clone(),
                    raw: s.raw.clone(),
                    how: s.how.clone(),
                    elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
                });
                Ok(Some(s))
            }
            Err(ControllerError::Malformed {
                output,
                reason,
                stats,
            }) => {
                self.trace.record(TraceEvent::Repair {
                    step,
                    output: output.clone(),
                    error: reason.clone(),
                    stats,
                });
                if *repaired {
                    return Err(OrchestratorError::Unusable { output, reason });
                }
                *repaired = true;
                self.turns.push(Turn::Repair {
                    output,
                    error: reason,
                });
                Ok(None)
            }
            Err(ControllerError::Cancelled) => Err(OrchestratorError::Cancelled),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a call the controller made and adds it, with what it found, to the turns.
    async fn called(
        &mut self,
        step: usize,
        agent: String,
        arguments: serde_json::Value,
        opts: &AskOptions,
    ) -> bool {
        let arguments = self.resolve_region_argument(arguments, opts.region);
        let span = tracing::info_span!("agent", step, agent = %agent, arguments = %arguments);
        let called = self
            .call(
                step,
                &agent,
                arguments.clone(),
                opts,
                None,
                Caller::Controller,
            )
            .instrument(span)
            .await;
        self.turns.push(Turn::Call {
            agent: agent.clone(),
            arguments,
        });
        self.turns.push(Turn::Observation {
            agent,
            content: called.content,
        });
        called.repeated
    }

    /// Grounds an answer in the regions it cites and records it.
    fn answered(
        &mut self,
        text: &str,
        grounding: &[crate::controller::Citation],
        quoted: bool,
        step: usize,
        started: Instant,
    ) -> Answer {
        let g = grounding::ground(text, grounding, &self.evidence, quoted);
        let linked = grounding::linked_text(&g.text, &g.grounding);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.trace.record(TraceEvent::Answer {
            text: g.text.clone(),
            controller_text: text.to_string(),
            copied: g.copied,
            linked: linked.clone(),
            grounding: g.grounding.clone(),
            steps: step,
            elapsed_ms: elapsed_ms as f64,
        });
        self.turns.push(Turn::Answer {
            text: g.text.clone(),
            regions: g.grounding.iter().map(|x| x.region.clone()).collect(),
        });
        Answer {
            answer: g.text,
            grounding: g.grounding,
            linked,
            steps: step,
            elapsed_ms,
            controller_text: text.to_string(),
        }
    }

    /// The answer when the evidence holds none: said plainly, with what was looked at.
    fn not_found(
        &mut self,
        focus: Option<BBox>,
        spent: &ZoomSpent,
        step: usize,
        started: Instant,
    ) -> Answer {
        let read = self
            .evidence
            .regions()
            .iter()
            .filter(|r| r.kind == FindingKind::Text && focus.is_none_or(|f| inside(&r.bbox, &f)))
            .count();
        let whereabouts = match focus {
            Some(f) => {
                let f = f.rounded();
                format!(
                    "in the region [{},{},{},{}]",
                    f.x1 as i64, f.y1 as i64, f.x2 as i64, f.y2 as i64
                )
            }
            None => "in the image".to_string(),
        };
        let looked = match spent.zooms {
            0 => String::new(),
            1 => ", after reading 1 place again magnified".to_string(),
            n => format!(", after reading {n} places again magnified"),
        };
        let text = if read == 0 {
            format!("I cannot tell: no text could be read {whereabouts}{looked}.")
        } else {
            format!(
                "I cannot tell: none of the text read {whereabouts} ({read} regions{looked}) answers the question."
            )
        };
        self.answered(&text, &[], false, step, started)
    }
}
