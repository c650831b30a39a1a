//! Controllers: the model that reads a question and the evidence gathered so far and decides
//! the next step — answer, or call an agent.
//!
//! A controller sees a [`Conversation`] (the image's facts, every question, call, observation
//! and answer so far, the tools it may call, and — for controllers that take images — the
//! visual inputs) and returns one [`Decision`]. It does not run agents or keep evidence; the
//! orchestrator does, so a text controller, an in-process vision-language model or a remote
//! server all plug into the same loop.
//!
//! The embedded default is [`embedded::EmbeddedController`]: a GGUF chat model run in-process
//! with candle ([`llm`]), prompted with the templates in `prompts/` ([`prompt`]).

pub mod embedded;
pub mod llava;
pub mod llm;
pub mod openai;
pub mod parse;
pub mod prompt;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agents::{BoxFuture, ToolDefinition};
use crate::vision::{BBox, Image};

pub use embedded::{ControllerChoice, EmbeddedController};

/// What the controller knows about the image without looking at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFacts {
    /// A name for the image (its file name).
    pub name: String,
    pub width: u32,
    pub height: u32,
}

/// One entry of the conversation, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Turn {
    /// A person's question, optionally about one region (referring).
    Question { text: String, region: Option<BBox> },
    /// A tool call the controller made.
    Call {
        agent: String,
        arguments: serde_json::Value,
    },
    /// What came back: evidence rendered as text, or an error the controller should react to.
    Observation { agent: String, content: String },
    /// The controller's final answer to the question before.
    Answer { text: String, regions: Vec<String> },
    /// The controller's last output could not be used; it is told why and asked again.
    Repair { output: String, error: String },
}

/// A region an answer may cite, as a controller is given it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionText {
    pub id: String,
    pub text: String,
    /// The row of the image it sits on: regions with the same number share a row, as a
    /// receipt's "TOTAL ROUNDED" and its "33.90" do.
    pub row: usize,
    /// Where, in image pixels: lines stacked in a column ("OFFICE" over "FOR RENT") are
    /// answers together, and a document is told from a photo by how much text covers it.
    pub bbox: BBox,
    /// The agent's confidence in the text (0..1).
    pub score: f32,
}

/// An image given to a controller that can take images: the whole image, or a crop of an
/// evidence region.
#[derive(Debug, Clone)]
pub struct VisualInput {
    /// The region id this crop shows (`None` for the whole image).
    pub region: Option<String>,
    pub bbox: BBox,
    /// The part of the image `image` shows, in image pixels: `bbox` with a margin, clamped
    /// (the whole image for the whole image). `image` may be smaller than it (shrunk).
    pub window: BBox,
    pub image: Image,
}

/// Everything a controller is given for one decision.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub image: ImageFacts,
    pub turns: Vec<Turn>,
    /// The tools it may call now.
    pub tools: Vec<ToolDefinition>,
    /// The regions an answer may cite, in the order they were found.
    pub regions: Vec<RegionText>,
    /// Filled only for controllers whose [`Controller::accepts_images`] is true.
    pub visual: Vec<VisualInput>,
    /// The step budget is spent: the controller must answer now (tools stay listed so the
    /// prompt, and the KV cache behind it, stay the same).
    pub must_answer: bool,
    /// The regions were narrowed to where the question points (a page block, an object or
    /// colours it names): the answer is expected among them, so saying it is not there
    /// needs a clearer lead (`narrowed_margin` in `prompts/answers.toml`).
    pub narrowed: bool,
    /// Whether the whole evidence reads as a document, when the loop judged it (it does when
    /// it narrowed the regions, which alone may look like no document); else the controller
    /// judges from `regions`.
    pub document: Option<bool>,
}

impl Conversation {
    /// The question being answered (the last one asked).
    pub fn question(&self) -> Option<&str> {
        self.turns.iter().rev().find_map(|t| match t {
            Turn::Question { text, .. } => Some(text.as_str()),
            _ => None,
        })
    }
}

/// A region an answer relies on: its id, and (optionally) the phrase of the answer it supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    pub region: String,
    pub phrase: Option<String>,
    /// A box the controller drew itself (in image pixels; its convention parsed by
    /// [`crate::answer::boxes`]), grounding the phrase where no region of the evidence does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BBox>,
}

/// The controller's next step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Answer {
        text: String,
        grounding: Vec<Citation>,
    },
    Call {
        agent: String,
        arguments: serde_json::Value,
    },
    /// The evidence does not answer the question: no span of it was likely enough against
    /// saying so. The loop looks again (zooms) or answers that it did not find it; a
    /// controller never dresses a guess as evidence.
    NotFound {
        /// Why, in words, for the trace ("'not in the evidence' was likelier than any of 31
        /// spans").
        reason: String,
    },
}

/// Cost of one decision, for traces (counted by the model session that made it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Tokens in the prompt the decision was made on.
    pub prompt_tokens: usize,
    /// Of those, tokens reused from the KV cache.
    pub reused_tokens: usize,
    /// Tokens run through the model before generating (new prompt text, forced text).
    pub prefill_tokens: usize,
    pub prefill_ms: f64,
    /// Tokens the model chose.
    pub generated_tokens: usize,
    pub decode_ms: f64,
}

/// Where an answer's text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// One of the spans of the question's answer shape: a date, an amount... The shape is a
    /// check on the reading in itself.
    Shape,
    /// A span of the evidence the controller found likeliest: only as good as the reading
    /// it copies, so the loop reads a weak one again closer before answering with it.
    Evidence,
    /// Written by the controller (or not an answer).
    #[default]
    Model,
}

/// A decision with what it cost and the controller's raw output.
#[derive(Debug, Clone)]
pub struct Step {
    pub decision: Decision,
    pub raw: String,
    pub stats: StepStats,
    /// How an answer's text was chosen ("copied: one of 3 spans of the `total` answer shape
    /// in the evidence, ..."), for a person reading the trace; `None` for tool calls.
    pub how: Option<String>,
    /// The answer's text is quoted whole from the regions it cites (one of an answer shape's
    /// spans), so grounding keeps it as it is: "10/03/2018" out of the OCR's
    /// "10/03/20185:41:06" is not widened to the word it stops inside.
    pub quoted: bool,
    /// Where an answer's text came from.
    pub source: AnswerSource,
    /// The images a vision-language controller was shown for this decision, and how each
    /// was encoded (empty for text controllers).
    pub shown: Vec<ShownImage>,
}

/// One image a vision-language controller was shown, as the trace records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShownImage {
    /// The region the crop shows (`None`: the whole image).
    pub region: Option<String>,
    pub bbox: BBox,
    /// What encoded it: the MLP, a learned or a pooled resampler.
    pub encoder: crate::vision::visual_tokens::Encoder,
    /// Visual tokens it took in the prompt (0 where a remote server does the counting).
    pub tokens: usize,
    /// For a Set-of-Mark image: how its crops were laid out, so `p2g trace draw` can render it
    /// again from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<crate::vision::mosaic::Layout>,
}

/// Receives answer text as it is generated.
pub type TextSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Per-call hooks: streaming and cancellation.
#[derive(Clone, Default)]
pub struct StepContext {
    /// Called with answer text as it is generated.
    pub on_text: Option<TextSink>,
    /// Set to stop generation; the decision then fails with [`ControllerError::Cancelled`].
    pub cancel: Arc<AtomicBool>,
}

impl std::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("streams", &self.on_text.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

/// Errors of the controllers layer.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The output could not be read as a decision; the orchestrator shows the reason to the
    /// controller once and asks again.
    #[error("the controller's output is not a valid decision ({reason}): {output:?}")]
    Malformed {
        output: String,
        reason: String,
        stats: StepStats,
    },
    #[error(transparent)]
    Model(#[from] llm::LlmError),
    #[error(transparent)]
    Models(#[from] crate::models::ModelError),
    #[error("prompt template {name}: {reason}")]
    Prompt { name: String, reason: String },
    #[error("the question was cancelled")]
    Cancelled,
    #[error(transparent)]
    Vision(#[from] crate::vision::mmproj::MmprojError),
    /// A remote controller's server could not be used.
    #[error(transparent)]
    Api(#[from] openai::client::ApiError),
    #[error(transparent)]
    Manifest(#[from] openai::manifest::ManifestError),
    /// A language model and an mmproj file that do not belong together.
    #[error(
        "{llm} and {mmproj} are not a pair: {reason} (see the README, \"Vision-language \
         models\")"
    )]
    Pair {
        llm: String,
        mmproj: String,
        reason: String,
    },
}

/// A model that decides the next step of the grounding loop.
pub trait Controller: Send + Sync {
    /// A short name for traces (`qwen2.5-coder-0.5b`).
    fn name(&self) -> &str;

    /// Whether [`Conversation::visual`] should be filled (vision-language controllers).
    fn accepts_images(&self) -> bool {
        false
    }

    /// Decides the next step.
    fn decide<'a>(
        &'a self,
        conversation: &'a Conversation,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<Step, ControllerError>>;
}
