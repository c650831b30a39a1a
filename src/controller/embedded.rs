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

use super::llm::{LanguageModel, LlmError, Session};
use super::parse::parse_decision;
use super::prompt::{render_conversation, Prompts};
use super::{
    Citation, Controller, ControllerError, Conversation, Decision, Step, StepContext, StepStats,
};
use crate::agents::BoxFuture;
use crate::models::{ModelSource, Store};

/// The embedded models p2g can fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControllerChoice {
    /// Qwen2.5-Coder-0.5B-Instruct (tool-calling chat template), Q5_0 re-encoded as Q8_0.
    #[default]
    Qwen,
    /// SmolLM2-135M-Instruct Q4_1: four times smaller, far weaker.
    Smollm2,
}

impl ControllerChoice {
    /// (bundle, file) in `models.toml`.
    pub fn model_file(self) -> (&'static str, &'static str) {
        match self {
            ControllerChoice::Qwen => ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q8.gguf"),
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
            let tokens = self.lm.encode(&prompt)?;
            let session = self.session.clone();
            let cfg = self.cfg.clone();
            let ctx = ctx.clone();
            let tools: Vec<String> = conv.tools.iter().map(|t| t.name.clone()).collect();
            let regions: Vec<String> = conv.regions.iter().map(|(id, _)| id.clone()).collect();
            let must_answer = conv.must_answer;
            let observed = conv
                .turns
                .iter()
                .any(|t| matches!(t, super::Turn::Observation { .. }));
            let work = move || -> Result<Step, ControllerError> {
                let mut s = session
                    .lock()
                    .map_err(|_| LlmError::Internal("controller session poisoned".into()))?;
                s.set_cancel_flag(ctx.cancel.clone());
                s.set_prompt(&tokens);
                let result = if cfg.constrained {
                    constrained_step(&mut s, &cfg, &tools, &regions, must_answer, observed, &ctx)
                } else {
                    free_step(&mut s, &cfg, &tools, &ctx)
                };
                let st = s.take_stats();
                let stats = StepStats {
                    prompt_tokens: tokens.len(),
                    reused_tokens: st.reused_tokens,
                    prefill_tokens: st.prefill_tokens,
                    prefill_ms: st.prefill_ms,
                    generated_tokens: st.generated_tokens,
                    decode_ms: st.decode_ms,
                };
                match result {
                    Ok((decision, raw)) => Ok(Step {
                        decision,
                        raw,
                        stats,
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
            match tokio::runtime::Handle::try_current() {
                Ok(h) => h
                    .spawn_blocking(work)
                    .await
                    .map_err(|e| LlmError::Internal(e.to_string()))?,
                Err(_) => work(),
            }
        })
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

/// One decision built under constraints; returns it with the text it amounts to.
///
/// The model first decides, as it was trained to, whether its turn opens with a tool call;
/// if not, it is answering, and the answer is written as a call of the answer tool: text first
/// (its natural next words), then the ids of the regions it copied from, chosen among those
/// that exist — after writing "9.00", pointing at the line that says "9.00" is easy.
fn constrained_step(
    s: &mut Session,
    cfg: &EmbeddedConfig,
    tools: &[String],
    regions: &[String],
    must_answer: bool,
    observed: bool,
    ctx: &StepContext,
) -> Result<(Decision, String), StepFailure> {
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
        let (body, closed) = s.free_string(cfg.max_answer_tokens, |chunk| {
            if let Some(f) = &on_text {
                f(chunk);
            }
        })?;
        s.push_text(if closed {
            ", \"regions\": ["
        } else {
            "\", \"regions\": ["
        })?;
        let ids: Vec<String> = regions.iter().map(|r| format!("\"{r}\"")).collect();
        let mut cited: Vec<String> = Vec::new();
        if !ids.is_empty() {
            let mut first: Vec<String> = ids.clone();
            first.push("]".into());
            let k = s.choose(&first)?;
            if k < ids.len() {
                cited.push(regions[k].clone());
                let sep = vec![", ".to_string(), "]".to_string()];
                while cited.len() < cfg.max_citations && s.choose(&sep)? == 0 {
                    let k = s.choose(&ids)?;
                    if !cited.contains(&regions[k]) {
                        cited.push(regions[k].clone());
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
        return Ok((
            Decision::Answer {
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
        ));
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
    Ok((
        Decision::Call {
            agent: name,
            arguments,
        },
        raw,
    ))
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
) -> Result<(Decision, String), StepFailure> {
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
        Ok(d) => Ok((d, text)),
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
    fn string_and_brace_ends() {
        assert_eq!(json_closed(b"}", 1), Some(0));
        assert_eq!(json_closed(b"\"region\": [1, 2", 1), None);
        assert_eq!(json_closed(b"\"a\": \"}\"}}", 1), Some(9));
    }
}
