//! `--controller openai`: any model behind an OpenAI-compatible chat-completions server —
//! llama.cpp's server, Ollama, vLLM, LM Studio, hosted APIs — as the controller.
//!
//! The server's model decides; p2g gives it what a vision-language model with a small input
//! lacks: the agents (as function-calling tools), native-resolution crops of what they found
//! ([`images`]: P²G's MLP-or-resampler budget as image parts or one Set-of-Mark image), and
//! grounding of whatever boxes it writes, in the convention it was trained on
//! ([`crate::answer::boxes`], chosen per model by a [`manifest::Manifest`]).
//!
//! A decision is read from the API's `tool_calls` field or, when a server leaves calls in the
//! text (llama.cpp's with `tool_choice: auto`), from the text in any of the forms of
//! [`super::parse`]; a malformed one goes through the loop's one repair, as the embedded
//! controller's do. The request is stateless: the whole conversation is sent every step, its
//! prefix unchanged, so a server's prompt cache reuses it.

pub mod client;
pub mod images;
pub mod manifest;
pub mod messages;

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;

use self::client::{ApiError, Client, ClientConfig, Reply};
use self::images::{ImageBudget, PartCache, Sent};
use self::manifest::Manifest;
use self::messages::RequestOptions;
use super::parse::{call_from_parts, parse_decision};
use super::prompt::Prompts;
use super::{
    AnswerSource, Citation, Controller, ControllerError, Conversation, Decision, Step, StepContext,
    StepStats,
};
use crate::agents::BoxFuture;
use crate::answer::boxes::{BoxConvention, Frame};
use crate::vision::BBox;

/// Settings of a remote controller.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub client: ClientConfig,
    /// The model id the server knows (`qwen2.5vl:7b`, `Qwen/Qwen2.5-VL-7B-Instruct`).
    pub model: String,
    pub prompts: Prompts,
    pub manifest: Manifest,
    /// Overrides the manifest's box convention (`--box-convention`).
    pub convention: Option<BoxConvention>,
    /// Overrides the manifest's `images` (`--images on|off`).
    pub images: Option<bool>,
    pub budget: ImageBudget,
    /// Stream replies (answer text reaches the REPL as it is written).
    pub stream: bool,
    pub max_tokens: u32,
    pub temperature: f32,
}

impl OpenAiConfig {
    /// Settings for `model` at `base_url`, with the manifest its name picks.
    pub fn new(base_url: &str, model: &str, prompts: Prompts) -> Result<Self, ControllerError> {
        Ok(Self {
            client: ClientConfig::new(base_url),
            model: model.to_string(),
            prompts,
            manifest: Manifest::for_model(model)?,
            convention: None,
            images: None,
            budget: ImageBudget::default(),
            stream: true,
            max_tokens: 512,
            temperature: 0.0,
        })
    }

    pub fn convention(&self) -> BoxConvention {
        self.convention.unwrap_or(self.manifest.box_convention)
    }

    pub fn sends_images(&self) -> bool {
        self.images.unwrap_or(self.manifest.images)
    }
}

/// A controller behind an OpenAI-compatible API.
pub struct OpenAiController {
    cfg: OpenAiConfig,
    client: Client,
    name: String,
    parts: PartCache,
}

impl std::fmt::Debug for OpenAiController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiController")
            .field("name", &self.name)
            .field("base_url", &self.cfg.client.base_url)
            .finish()
    }
}

impl OpenAiController {
    pub fn new(cfg: OpenAiConfig) -> Result<Self, ControllerError> {
        let client = Client::new(cfg.client.clone())?;
        Ok(Self {
            name: format!("openai:{}", cfg.model),
            cfg,
            client,
            parts: PartCache::default(),
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.cfg
    }

    /// The models the server lists: a cheap check that the URL and key work.
    pub async fn served_models(&self) -> Result<Vec<String>, ControllerError> {
        Ok(self.client.models().await?)
    }

    async fn step(&self, conv: &Conversation, ctx: &StepContext) -> Result<Step, ControllerError> {
        let sent = if self.cfg.sends_images() {
            images::prepare(&conv.visual, &self.cfg.budget, &self.parts)
        } else {
            Sent::default()
        };
        let regions: Vec<(String, BBox)> = conv
            .regions
            .iter()
            .map(|r| (r.id.clone(), r.bbox))
            .collect();
        let image = (conv.image.width, conv.image.height);
        let frame = Frame {
            image,
            input: sent.whole.as_ref().map_or(image, |p| (p.width, p.height)),
            regions: &regions,
        };
        let opts = RequestOptions {
            model: &self.cfg.model,
            prompts: &self.cfg.prompts,
            manifest: &self.cfg.manifest,
            convention: self.cfg.convention(),
            max_tokens: self.cfg.max_tokens,
            temperature: self.cfg.temperature,
        };
        let body = messages::request(&opts, conv, &sent, &frame)?;
        let t0 = Instant::now();
        let mut first = None::<Instant>;
        let mut gate = StreamGate::new(ctx.on_text.clone());
        let mut on_delta = |text: &str| {
            first.get_or_insert_with(Instant::now);
            gate.push(text);
        };
        let reply = self
            .client
            // Stream only to someone reading: whole replies carry the token counts.
            .chat(
                &body,
                self.cfg.stream && ctx.on_text.is_some(),
                &mut on_delta,
                &ctx.cancel,
            )
            .await
            .map_err(|e| match e {
                ApiError::Cancelled => ControllerError::Cancelled,
                e => ControllerError::Api(e),
            })?;
        let first = first.unwrap_or_else(Instant::now);
        let stats = StepStats {
            prompt_tokens: reply.prompt_tokens.unwrap_or(0),
            reused_tokens: 0,
            prefill_tokens: reply.prompt_tokens.unwrap_or(0),
            prefill_ms: first.duration_since(t0).as_secs_f64() * 1e3,
            generated_tokens: reply.completion_tokens.unwrap_or(0),
            decode_ms: first.elapsed().as_secs_f64() * 1e3,
        };
        self.decision(conv, &reply, &frame, sent, stats)
    }

    fn decision(
        &self,
        conv: &Conversation,
        reply: &Reply,
        frame: &Frame<'_>,
        sent: Sent,
        stats: StepStats,
    ) -> Result<Step, ControllerError> {
        let answer_tool = self.cfg.prompts.answer_tool.name.as_str();
        let tools: Vec<&str> = conv.tools.iter().map(|t| t.name.as_str()).collect();
        let (raw, parsed) = match reply.tool_calls.first() {
            Some(call) => (
                format!("{}({})", call.name, call.arguments),
                call_from_parts(
                    &call.name,
                    Value::String(call.arguments.clone()),
                    answer_tool,
                    &tools,
                ),
            ),
            None => (
                reply.content.clone(),
                parse_decision(&reply.content, answer_tool, &tools),
            ),
        };
        let parsed = parsed
            .and_then(|d| truncated(d, reply))
            .and_then(|d| premature(d, conv, &sent))
            .and_then(|d| cites_known(d, conv));
        let decision = match parsed {
            Ok(d) => grounded(d, self.cfg.convention(), frame),
            Err(reason) => {
                return Err(ControllerError::Malformed {
                    output: raw,
                    reason,
                    stats,
                })
            }
        };
        let how = matches!(decision, Decision::Answer { .. })
            .then(|| format!("written by {} over the API", self.cfg.model));
        Ok(Step {
            decision,
            raw,
            stats,
            how,
            quoted: false,
            source: AnswerSource::Model,
            shown: sent.records,
        })
    }
}

/// A reply cut by `max_tokens` is not an answer: the model is told, once.
fn truncated(d: Decision, reply: &Reply) -> Result<Decision, String> {
    if reply.finish_reason.as_deref() == Some("length") && reply.tool_calls.is_empty() {
        return Err("the reply was cut off at the token limit; answer briefly".into());
    }
    Ok(d)
}

/// An answer may cite only regions the controller was given: an id it made up (a small
/// model copies the system prompt's example) is shown back to it, once.
fn cites_known(d: Decision, conv: &Conversation) -> Result<Decision, String> {
    if let Decision::Answer { grounding, .. } = &d {
        let unknown: Vec<&str> = grounding
            .iter()
            .filter(|c| c.bbox.is_none() && !conv.regions.iter().any(|r| r.id == c.region))
            .map(|c| c.region.as_str())
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "{} {} not a region of the evidence; cite only ids the tools returned",
                unknown.join(", "),
                if unknown.len() == 1 { "is" } else { "are" }
            ));
        }
    }
    Ok(d)
}

/// A model that cannot see the image answers about it only from evidence: an answer before
/// any tool was called is its training talking (a small model repeats the system prompt's
/// example), so it is told to look first — once; the loop's last step may answer anyway.
fn premature(d: Decision, conv: &Conversation, sent: &Sent) -> Result<Decision, String> {
    if matches!(d, Decision::Answer { .. }) && messages::blind(conv, sent) && !conv.must_answer {
        if let Some(first) = conv.tools.first() {
            return Err(format!(
                "you cannot see the image and have no evidence yet: call a tool (e.g. {}) \
                 to look at it before answering",
                first.name
            ));
        }
    }
    Ok(d)
}

/// An answer with the boxes of its text (in the model's convention) taken out as citations:
/// a box on a region cites it, any other is grounded as drawn.
fn grounded(d: Decision, convention: BoxConvention, frame: &Frame<'_>) -> Decision {
    let Decision::Answer {
        text,
        mut grounding,
    } = d
    else {
        return d;
    };
    let parsed = convention.parse(&text, frame);
    for r in &parsed.rejected {
        tracing::debug!(%convention, "box not used: {r}");
    }
    if parsed.boxes.is_empty() {
        return Decision::Answer { text, grounding };
    }
    let mut phrases = Vec::new();
    for (i, b) in parsed.boxes.into_iter().enumerate() {
        if let Some(p) = &b.phrase {
            if !phrases.contains(p) {
                phrases.push(p.clone());
            }
        }
        grounding.push(match b.region {
            Some(region) => Citation {
                region,
                phrase: b.phrase,
                bbox: None,
            },
            None => Citation {
                region: format!("box{}", i + 1),
                phrase: b.phrase,
                bbox: Some(b.bbox),
            },
        });
    }
    // A reply that is only boxes (Qwen2.5-VL's JSON) answers with what they are of.
    let text = if parsed.text.trim().is_empty() {
        phrases.join(", ")
    } else {
        parsed.text
    };
    Decision::Answer { text, grounding }
}

/// Passes streamed text to the REPL only when it is an answer: a reply that opens like a
/// tool call (`<tool_call>`, `{`, `<|python_tag|>`…) or with reasoning is held back.
struct StreamGate {
    sink: Option<super::TextSink>,
    held: String,
    open: Option<bool>,
}

/// Text held before deciding.
const GATE_HOLD: usize = 16;

impl StreamGate {
    fn new(sink: Option<super::TextSink>) -> Self {
        Self {
            sink,
            held: String::new(),
            open: None,
        }
    }

    fn push(&mut self, text: &str) {
        let Some(sink) = &self.sink else {
            return;
        };
        match self.open {
            Some(true) => sink(text),
            Some(false) => {}
            None => {
                self.held.push_str(text);
                let head = self.held.trim_start();
                if head.len() < GATE_HOLD && !head.contains(char::is_whitespace) {
                    return;
                }
                let call = [
                    "<tool_call>",
                    "<|python_tag|>",
                    "[TOOL_CALLS]",
                    "<think>",
                    "{",
                    "[{",
                    "```",
                ]
                .iter()
                .any(|p| head.starts_with(p) || p.starts_with(head));
                self.open = Some(!call);
                if !call {
                    sink(head);
                }
            }
        }
    }
}

impl Controller for OpenAiController {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts_images(&self) -> bool {
        self.cfg.sends_images()
    }

    fn decide<'a>(
        &'a self,
        conv: &'a Conversation,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<Step, ControllerError>> {
        Box::pin(async move {
            if ctx.cancel.load(Ordering::Relaxed) {
                return Err(ControllerError::Cancelled);
            }
            self.step(conv, ctx).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{ImageFacts, RegionText, Turn};
    use std::sync::{Arc, Mutex};

    fn conv(regions: &[(&str, [f32; 4])], observed: bool) -> Conversation {
        let mut turns = vec![Turn::Question {
            text: "Where is the cup?".into(),
            region: None,
        }];
        if observed {
            turns.push(Turn::Observation {
                agent: "ocr".into(),
                content: "[top] r1 CUP".into(),
            });
        }
        Conversation {
            image: ImageFacts {
                name: "x.jpg".into(),
                width: 1000,
                height: 500,
            },
            turns,
            tools: vec![crate::agents::ToolDefinition {
                name: "ocr".into(),
                description: String::new(),
                parameters: serde_json::json!({}),
            }],
            regions: regions
                .iter()
                .enumerate()
                .map(|(i, (id, b))| RegionText {
                    id: id.to_string(),
                    text: "CUP".into(),
                    row: i,
                    bbox: BBox::from(*b),
                    score: 0.9,
                })
                .collect(),
            visual: Vec::new(),
            must_answer: false,
            narrowed: false,
            document: None,
        }
    }

    fn answer(text: &str, cites: &[&str]) -> Decision {
        Decision::Answer {
            text: text.into(),
            grounding: cites
                .iter()
                .map(|c| Citation {
                    region: c.to_string(),
                    phrase: None,
                    bbox: None,
                })
                .collect(),
        }
    }

    #[test]
    fn boxes_in_the_answer_become_citations_in_image_pixels() {
        let regions = [("r1".to_string(), BBox::new(0.0, 0.0, 10.0, 10.0))];
        let frame = Frame {
            image: (1000, 500),
            input: (1000, 500),
            regions: &regions,
        };
        let d = grounded(
            answer(
                "<ref>the cup</ref><box>(100,200),(300,400)</box> is on the left",
                &[],
            ),
            BoxConvention::QwenVl,
            &frame,
        );
        let Decision::Answer { text, grounding } = d else {
            panic!("not an answer")
        };
        assert_eq!(text, "the cup is on the left");
        assert_eq!(grounding[0].phrase.as_deref(), Some("the cup"));
        let b = grounding[0].bbox.unwrap();
        assert_eq!((b.x1, b.y1, b.x2, b.y2), (100.0, 100.0, 300.0, 200.0));
        // Region ids cite the region itself.
        let d = grounded(
            answer("the cup <r1>", &[]),
            BoxConvention::RegionIds,
            &frame,
        );
        let Decision::Answer { grounding, .. } = d else {
            panic!("not an answer")
        };
        assert_eq!(
            (grounding[0].region.as_str(), grounding[0].bbox),
            ("r1", None)
        );
    }

    #[test]
    fn made_up_ids_and_blind_answers_are_sent_back() {
        let c = conv(&[("r1", [0.0, 0.0, 10.0, 10.0])], true);
        assert!(cites_known(answer("CUP", &["r1"]), &c).is_ok());
        let e = cites_known(answer("13.24", &["r15"]), &c).unwrap_err();
        assert!(e.contains("r15 is not a region"), "{e}");
        let blind = conv(&[], false);
        let e = premature(answer("13.24", &[]), &blind, &Sent::default()).unwrap_err();
        assert!(e.contains("call a tool (e.g. ocr)"), "{e}");
        assert!(premature(answer("CUP", &[]), &c, &Sent::default()).is_ok());
    }

    #[test]
    fn the_stream_gate_holds_back_tool_calls() {
        for (chunks, shown) in [
            (vec!["The total", " is 9.00"], "The total is 9.00"),
            (vec!["<tool", "_call>{\"name\": \"ocr\"}"], ""),
            (vec!["  {\"na", "me\": \"ocr\"}"], ""),
            (vec!["9.00"], ""),
            (vec!["<think>hm</think>", "9"], ""),
        ] {
            let out = Arc::new(Mutex::new(String::new()));
            let o = out.clone();
            let mut g =
                StreamGate::new(Some(Arc::new(move |t: &str| o.lock().unwrap().push_str(t))));
            for c in chunks {
                g.push(c);
            }
            assert_eq!(*out.lock().unwrap(), shown);
        }
    }
}
