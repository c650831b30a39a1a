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

pub mod evidence;
pub mod zoom;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::agents::{AgentError, Capability, DynAgent, FindingKind, Lead};
use crate::controller::{
    AnswerSource, Controller, ControllerError, Conversation, Decision, ImageFacts, RegionText,
    StepContext, Turn,
};
use crate::trace::{TraceEvent, TraceSink};
use crate::vision::{BBox, Image};

pub use crate::answer::grounding::{self, Grounding};
pub use evidence::{Evidence, Region};
pub use zoom::ZoomBudget;

/// Errors of the loop. Agent failures are not among them: they go back to the controller.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(
        "the controller gave an unusable answer twice ({reason}); its last output was {output:?}. \
         Try rephrasing the question or a larger controller (--controller)"
    )]
    Unusable { output: String, reason: String },
    #[error("the question was cancelled")]
    Cancelled,
    #[error("an orchestrator needs a controller; call .controller(..) on the builder")]
    NoController,
    #[error("two agents are named {0:?}; tool names must be unique")]
    DuplicateAgent(String),
    #[error("the question is empty")]
    EmptyQuestion,
    #[error("the region [{0:.0},{1:.0},{2:.0},{3:.0}] is not inside the {4}x{5} image")]
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
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_steps: 6,
            agent_timeout: Duration::from_secs(300),
            history: History::Full,
            zoom: ZoomBudget::default(),
            document: Default::default(),
        }
    }
}

/// A controller and the agents it may call.
pub struct Orchestrator {
    controller: Arc<dyn Controller>,
    agents: Vec<Arc<dyn DynAgent>>,
    cfg: LoopConfig,
}

/// Builds an [`Orchestrator`].
#[derive(Default)]
pub struct OrchestratorBuilder {
    controller: Option<Arc<dyn Controller>>,
    agents: Vec<Arc<dyn DynAgent>>,
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
        self.agents.push(Arc::new(a));
        self
    }

    pub fn agent_arc(mut self, a: Arc<dyn DynAgent>) -> Self {
        self.agents.push(a);
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

    /// How much the loop zooms on its own when the evidence does not answer
    /// (`max_zooms = 0`: never).
    pub fn zoom_budget(mut self, b: ZoomBudget) -> Self {
        self.cfg.zoom = b;
        self
    }

    pub fn build(self) -> Result<Orchestrator, OrchestratorError> {
        let controller = self.controller.ok_or(OrchestratorError::NoController)?;
        let mut seen = HashSet::new();
        for a in &self.agents {
            if !seen.insert(a.name().to_string()) {
                return Err(OrchestratorError::DuplicateAgent(a.name().to_string()));
            }
        }
        Ok(Orchestrator {
            controller,
            agents: self.agents,
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

    pub fn agents(&self) -> impl Iterator<Item = &dyn DynAgent> {
        self.agents.iter().map(|a| a.as_ref())
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
    trace: TraceSink,
}

/// What one question has spent on zooming.
#[derive(Debug, Default)]
struct ZoomSpent {
    zooms: usize,
    pixels: f64,
    seconds: f64,
}

/// A zoomed read, as the trace records it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ZoomRecord {
    /// The window read, in image pixels.
    pub window: BBox,
    /// The magnification the agent applied, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    /// Why this place was read again.
    pub why: String,
}

/// What one agent call left: the observation for the controller, the regions it returned
/// and the magnification a zoomed read applied.
struct Called {
    content: String,
    ids: Vec<String>,
    scale: Option<f32>,
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
            leads: Vec::new(),
            zoomed: Vec::new(),
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
        if let Some(r) = opts.region {
            let (w, h) = (self.facts.width as f32, self.facts.height as f32);
            if !(r.x1 < r.x2 && r.y1 < r.y2 && r.x2 > 0.0 && r.y2 > 0.0 && r.x1 < w && r.y1 < h) {
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
            tools: self
                .orch
                .agents
                .iter()
                .map(|a| a.name().to_string())
                .collect(),
        });
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

    /// A question about what things look like, when neither the controller nor any agent can
    /// see appearance, is answered plainly as unanswerable instead of being guessed (a text
    /// controller given OCR lines answers "what colour is the paper?" with a word it read).
    fn unanswerable(&mut self, question: &str, started: Instant) -> Option<Answer> {
        if !asks_about_appearance(question)
            || self.orch.controller.accepts_images()
            || self
                .orch
                .agents
                .iter()
                .any(|a| a.capabilities().contains(&Capability::Appearance))
        {
            return None;
        }
        let tools: Vec<&str> = self.orch.agents.iter().map(|a| a.name()).collect();
        let text =
            format!(
            "I cannot tell: answering needs to see what things look like (colours, shapes, \
             drawings, logos), and no vision model is loaded; the available tools ({}) only {}.",
            if tools.is_empty() { "none".to_string() } else { tools.join(", ") },
            if self.orch.agents.iter().any(|a| a.capabilities().contains(&Capability::Objects)) {
                "read text and locate objects"
            } else {
                "read text"
            }
        );
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.trace.record(TraceEvent::Answer {
            text: text.clone(),
            controller_text: String::new(),
            copied: false,
            linked: text.clone(),
            grounding: Vec::new(),
            steps: 0,
            elapsed_ms: elapsed_ms as f64,
        });
        Some(Answer {
            answer: text.clone(),
            grounding: Vec::new(),
            linked: text,
            steps: 0,
            elapsed_ms,
            controller_text: String::new(),
        })
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
    fn answerable_regions(&self, focus: Option<BBox>) -> Vec<RegionText> {
        self.evidence
            .regions()
            .iter()
            .zip(self.evidence.row_numbers())
            .filter(|(r, _)| r.superseded_by.is_none())
            .filter(|(r, _)| focus.is_none_or(|f| inside(&r.bbox, &f)))
            .map(|(r, row)| RegionText {
                id: r.id.clone(),
                text: r.text.clone(),
                row,
                bbox: r.bbox,
                score: r.score,
            })
            .collect()
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
        if let Some(focus) = opts.region {
            // Referring: a question about a region is answered from what is read inside it,
            // read anew (magnified) when little was read there.
            self.read_region(focus, opts, &mut spent).await;
        }
        for step in 1..=max {
            if Self::cancelled(opts) {
                return Err((OrchestratorError::Cancelled, step - 1));
            }
            let tools = self.orch.agents.iter().map(|a| a.definition()).collect();
            let conv = Conversation {
                image: self.facts.clone(),
                turns: self.visible_turns(current),
                tools,
                regions: self.answerable_regions(opts.region),
                visual: Vec::new(),
                // The last step may only answer.
                must_answer: step == max,
            };
            let t0 = Instant::now();
            let decided = self
                .orch
                .controller
                .decide(&conv, &opts.ctx)
                .instrument(tracing::info_span!("decide", step))
                .await;
            let step_ms = t0.elapsed().as_secs_f64() * 1e3;
            let (decision, quoted, source) = match decided {
                Ok(s) => {
                    self.trace.record(TraceEvent::Step {
                        step,
                        stats: s.stats.clone(),
                        decision: s.decision.clone(),
                        raw: s.raw.clone(),
                        how: s.how.clone(),
                        elapsed_ms: step_ms,
                    });
                    (s.decision, s.quoted, s.source)
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
                    if repaired {
                        return Err((OrchestratorError::Unusable { output, reason }, step));
                    }
                    repaired = true;
                    self.turns.push(Turn::Repair {
                        output,
                        error: reason,
                    });
                    continue;
                }
                Err(ControllerError::Cancelled) => {
                    return Err((OrchestratorError::Cancelled, step))
                }
                Err(e) => return Err((e.into(), step)),
            };
            match decision {
                Decision::Answer { text, grounding } => {
                    // A span chosen by likelihood is only as good as its reading: a weak one
                    // is read again closer, and the controller asked again if that changed it.
                    if source == AnswerSource::Evidence
                        && step < max
                        && self.verify(step, &grounding, opts, &mut spent).await
                    {
                        continue;
                    }
                    return Ok(self.answered(&text, &grounding, quoted, step, started));
                }
                Decision::NotFound { .. } => {
                    // Look again where the image was not read well; answer "not found" only
                    // when there is nowhere left to look or the budget is spent.
                    let question = conv.question().unwrap_or_default().to_string();
                    if step < max
                        && self
                            .zoom_round(step, &question, opts, &mut spent, false)
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
                    let arguments = self.resolve_region_argument(arguments, opts.region);
                    let span =
                        tracing::info_span!("agent", step, agent = %agent, arguments = %arguments);
                    let called = self
                        .call(step, &agent, arguments.clone(), opts, None)
                        .instrument(span)
                        .await;
                    if Self::cancelled(opts) {
                        return Err((OrchestratorError::Cancelled, step));
                    }
                    self.turns.push(Turn::Call {
                        agent: agent.clone(),
                        arguments,
                    });
                    self.turns.push(Turn::Observation {
                        agent,
                        content: called.content,
                    });
                    // A photo's places where text was seen but not read are read magnified
                    // before the controller answers from what the first pass made of it.
                    if !self.is_document() {
                        let question = conv.question().unwrap_or_default().to_string();
                        self.zoom_round(step, &question, opts, &mut spent, true)
                            .await;
                    }
                }
            }
        }
        Err((
            OrchestratorError::Unusable {
                output: String::new(),
                reason: format!("no answer within {max} steps"),
            },
            max,
        ))
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

    /// The agent that reads magnified (the first that can), if any.
    fn zoom_agent(&self) -> Option<Arc<dyn DynAgent>> {
        let probe = BBox::new(0.0, 0.0, 2.0, 2.0);
        self.orch
            .agents
            .iter()
            .find(|a| a.zoom_arguments(&probe).is_some())
            .cloned()
    }

    /// Whether the text read so far makes the image a document.
    fn is_document(&self) -> bool {
        self.orch.cfg.document.holds(
            self.evidence
                .regions()
                .iter()
                .filter(|r| r.kind == FindingKind::Text)
                .map(|r| r.bbox),
            self.facts.width,
            self.facts.height,
        )
    }

    /// Before answering with a span read with low confidence: reads its regions again
    /// magnified; returns whether a closer read superseded one of them (the controller is
    /// then asked again, on the better reading).
    async fn verify(
        &mut self,
        step: usize,
        cited: &[crate::controller::Citation],
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) -> bool {
        let budget = self.orch.cfg.zoom.clone();
        let Some(agent) = self.zoom_agent() else {
            return false;
        };
        let weak: Vec<Region> = cited
            .iter()
            .filter_map(|c| self.evidence.get(&c.region))
            .filter(|r| r.kind == FindingKind::Text && r.score < budget.verify_below)
            .filter(|r| {
                !self
                    .zoomed
                    .iter()
                    .any(|z| r.bbox.intersection(z) >= 0.9 * r.bbox.area())
            })
            .cloned()
            .collect();
        let mut changed = false;
        for r in weak {
            if spent.zooms >= budget.max_zooms || spent.seconds >= budget.max_seconds {
                break;
            }
            let th = r.bbox.height().min(r.bbox.width());
            let window = zoom::window(
                &r.bbox,
                Some(th),
                self.facts.width as f32,
                self.facts.height as f32,
            );
            let why = format!(
                "the answer's reading {:?} (confidence {:.2}), read again closer before answering",
                r.text, r.score
            );
            self.zoom_into(step, agent.as_ref(), &window, &why, opts, spent)
                .await;
            changed |= self
                .evidence
                .get(&r.id)
                .is_some_and(|x| x.superseded_by.is_some());
        }
        changed
    }

    /// Reads the best places to look again, magnified, within the budget (with
    /// `unread_only`, only places where text was seen but nothing read); returns whether
    /// anything was read (the controller is then asked again).
    async fn zoom_round(
        &mut self,
        step: usize,
        question: &str,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
        unread_only: bool,
    ) -> bool {
        let budget = self.orch.cfg.zoom.clone();
        let Some(agent) = self.zoom_agent() else {
            return false;
        };
        let leads: Vec<Lead> = self
            .leads
            .iter()
            .filter(|l| !unread_only || l.kind == crate::agents::LeadKind::UnreadText)
            .cloned()
            .collect();
        let targets = zoom::targets(&zoom::Scene {
            question,
            evidence: &self.evidence,
            leads: &leads,
            focus: if unread_only { None } else { opts.region },
            zoomed: &self.zoomed,
            width: self.facts.width,
            height: self.facts.height,
        });
        tracing::debug!(targets = targets.len(), "zoom targets");
        let mut ran = 0;
        for t in targets {
            if ran >= budget.per_round
                || spent.zooms >= budget.max_zooms
                || spent.pixels >= budget.max_pixels
                || spent.seconds >= budget.max_seconds
                || Self::cancelled(opts)
            {
                break;
            }
            // An earlier zoom of this round may have covered this window already.
            if self
                .zoomed
                .iter()
                .any(|z| t.window.intersection(z) >= 0.7 * t.window.area())
            {
                continue;
            }
            self.zoom_into(step, agent.as_ref(), &t.window, &t.why, opts, spent)
                .await;
            ran += 1;
        }
        ran > 0
    }

    /// Reads `window` magnified with `agent`, as a call the controller sees.
    async fn zoom_into(
        &mut self,
        step: usize,
        agent: &dyn DynAgent,
        window: &BBox,
        why: &str,
        opts: &AskOptions,
        spent: &mut ZoomSpent,
    ) {
        let window = window.rounded();
        let Some(arguments) = agent.zoom_arguments(&window) else {
            return;
        };
        let name = agent.name().to_string();
        let t0 = Instant::now();
        let span = tracing::info_span!("zoom", step, window = ?window, why);
        let record = ZoomRecord {
            window,
            scale: None,
            why: why.to_string(),
        };
        let called = self
            .call(step, &name, arguments.clone(), opts, Some(record))
            .instrument(span)
            .await;
        let scale = called.scale.unwrap_or(1.0) as f64;
        spent.zooms += 1;
        spent.seconds += t0.elapsed().as_secs_f64();
        spent.pixels += window.area() as f64 * scale * scale;
        self.zoomed.push(window);
        let superseded = self.evidence.supersede(&window, &called.ids);
        if !superseded.is_empty() {
            tracing::debug!(?superseded, "read again more confidently");
        }
        self.turns.push(Turn::Call {
            agent: name.clone(),
            arguments,
        });
        self.turns.push(Turn::Observation {
            agent: name,
            content: called.content,
        });
    }

    /// Before a question about `focus`: reads it magnified when little has been read there
    /// (no text region inside, or none read confidently).
    async fn read_region(&mut self, focus: BBox, opts: &AskOptions, spent: &mut ZoomSpent) {
        let focus = focus.clamp(self.facts.width as f32, self.facts.height as f32);
        let thin = !self.evidence.regions().iter().any(|r| {
            r.kind == FindingKind::Text
                && r.superseded_by.is_none()
                && r.score >= THIN_CONFIDENCE
                && inside(&r.bbox, &focus)
        });
        let done = self
            .zoomed
            .iter()
            .any(|z| focus.intersection(z) >= 0.9 * focus.area());
        if !thin || done || self.orch.cfg.zoom.max_zooms == 0 {
            return;
        }
        if let Some(agent) = self.zoom_agent() {
            let why = "the region the question is about, little read there yet";
            self.zoom_into(0, agent.as_ref(), &focus, why, opts, spent)
                .await;
        }
    }

    /// A question about a region reads that region when the controller calls an agent without
    /// one: the person pointed at it.
    fn resolve_region_argument(
        &self,
        mut arguments: serde_json::Value,
        region: Option<BBox>,
    ) -> serde_json::Value {
        if let (Some(r), Some(obj)) = (region, arguments.as_object_mut()) {
            if !obj.contains_key("region") {
                let r = r.rounded();
                obj.insert("region".into(), serde_json::json!([r.x1, r.y1, r.x2, r.y2]));
            }
        }
        arguments
    }

    /// Runs one agent call and returns the observation for the controller.
    async fn call(
        &mut self,
        step: usize,
        agent: &str,
        arguments: serde_json::Value,
        opts: &AskOptions,
        zoom: Option<ZoomRecord>,
    ) -> Called {
        let key = format!("{agent} {arguments}");
        let t0 = Instant::now();
        let record = |this: &mut Self,
                      status: &str,
                      summary: String,
                      regions: Vec<Region>,
                      zoom: Option<ZoomRecord>| {
            this.trace.record(TraceEvent::Tool {
                step,
                agent: agent.to_string(),
                arguments: arguments.clone(),
                status: status.to_string(),
                summary,
                regions,
                zoom,
                elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
            });
        };
        let said = |content: String| Called {
            content,
            ids: Vec::new(),
            scale: None,
        };
        let Some(a) = self.orch.agents.iter().find(|a| a.name() == agent).cloned() else {
            let names: Vec<&str> = self.orch.agents.iter().map(|a| a.name()).collect();
            let msg = format!(
                "There is no tool named {agent:?}. Available: {}.",
                names.join(", ")
            );
            record(self, "unknown_tool", msg.clone(), Vec::new(), zoom);
            return said(msg);
        };
        if let Some(ids) = self.call_regions.get(&key).cloned() {
            let msg = if ids.is_empty() {
                format!("You already called {agent} with these arguments and it found nothing. Do not repeat it; answer, or try a different region.")
            } else {
                format!(
                    "You already called {agent} with these arguments; its results are regions {} above. Do not repeat it: answer from them.",
                    span_of(&ids)
                )
            };
            record(self, "repeated", msg.clone(), Vec::new(), zoom);
            return said(msg);
        }
        let cancel = opts.ctx.cancel.clone();
        let run = a.call(&self.image, arguments.clone());
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.orch.cfg.agent_timeout, run) => Some(r),
            _ = wait_cancel(cancel) => None,
        };
        match outcome {
            None => {
                record(self, "cancelled", "cancelled".into(), Vec::new(), zoom);
                said("The call was cancelled.".into())
            }
            Some(Err(_)) => {
                let secs = self.orch.cfg.agent_timeout.as_secs_f64();
                let msg = format!("{agent} did not finish within {secs:.0} s and was stopped. Answer from the evidence you have, or ask for a smaller region.");
                record(self, "timeout", msg.clone(), Vec::new(), zoom);
                said(msg)
            }
            Some(Ok(Err(e))) => {
                let msg = match &e {
                    AgentError::Arguments { reason, .. } => format!(
                        "Error: the arguments of {agent} are invalid ({reason}). Fix them or call it without arguments."
                    ),
                    other => format!("Error: {other}"),
                };
                record(self, "error", e.to_string(), Vec::new(), zoom);
                said(msg)
            }
            Some(Ok(Ok(reply))) => {
                let ids: Vec<String> = reply
                    .findings
                    .iter()
                    .map(|f| self.evidence.add(agent, f))
                    .collect();
                let mut unique: Vec<String> = Vec::new();
                for id in &ids {
                    if !unique.contains(id) {
                        unique.push(id.clone());
                    }
                }
                self.leads.extend(reply.leads.iter().cloned());
                let scale = reply
                    .output
                    .get("zoom")
                    .and_then(|z| z.get("scale"))
                    .and_then(|s| s.as_f64())
                    .map(|s| s as f32);
                let regions: Vec<Region> = unique
                    .iter()
                    .filter_map(|id| self.evidence.get(id).cloned())
                    .collect();
                let refs: Vec<&Region> = regions.iter().collect();
                let content = if regions.is_empty() {
                    format!("{agent} found nothing.")
                } else {
                    evidence::render(&refs, self.facts.width, self.facts.height)
                };
                let zoom = zoom.map(|z| ZoomRecord { scale, ..z });
                record(
                    self,
                    "ok",
                    format!("{} regions", regions.len()),
                    regions.clone(),
                    zoom,
                );
                self.call_regions.insert(key, unique.clone());
                Called {
                    content,
                    ids: unique,
                    scale,
                }
            }
        }
    }
}

/// Below this confidence, what was read in a region does not count as having read it.
const THIN_CONFIDENCE: f32 = 0.8;

/// Whether `b` lies mostly (half its area or more) inside `focus`.
fn inside(b: &BBox, focus: &BBox) -> bool {
    b.area() > 0.0 && b.intersection(focus) >= 0.5 * b.area()
}

/// Words that ask what something looks like.
///
/// Also words that ask what is *depicted* — a drawing, a painting, a logo, an animal: a text
/// reader finds words near such things (a street name next to a drawn tiger, a monitor's brand
/// next to a mug's logo), and a small controller asked "what animal is drawn on the sign?"
/// answers with one of them.
const APPEARANCE_WORDS: [&str; 27] = [
    "colour",
    "color",
    "colours",
    "colors",
    "coloured",
    "colored",
    "shade",
    "shape",
    "shaped",
    "appearance",
    "look like",
    "looks like",
    "wearing",
    "material",
    "drawn",
    "drawing",
    "painted",
    "painting",
    "pictured",
    "picture of",
    "depicted",
    "depict",
    "illustrated",
    "illustration",
    "logo",
    "icon",
    "animal",
];

/// Whether a question asks about appearance (colours, shapes) or what is depicted (a drawing,
/// a logo), which text tools cannot see.
pub fn asks_about_appearance(question: &str) -> bool {
    let q = question.to_lowercase();
    let words: Vec<&str> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let joined = words.join(" ");
    APPEARANCE_WORDS.iter().any(|w| {
        if w.contains(' ') {
            joined.contains(w)
        } else {
            words.contains(w)
        }
    })
}

/// `r1–r40` for a contiguous run of ids, else a list.
fn span_of(ids: &[String]) -> String {
    let nums: Vec<usize> = ids
        .iter()
        .filter_map(|i| i.strip_prefix('r').and_then(|n| n.parse().ok()))
        .collect();
    let contiguous =
        nums.len() == ids.len() && nums.len() > 2 && nums.windows(2).all(|w| w[1] == w[0] + 1);
    if contiguous {
        format!("{}–{}", ids[0], ids[ids.len() - 1])
    } else {
        ids.join(", ")
    }
}

async fn wait_cancel(flag: Arc<AtomicBool>) {
    loop {
        if flag.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
