//! Prompt templates (`prompts/`, embedded at build time, overridable from a folder) and the
//! rendering of a [`Conversation`] through the model's own chat template.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use super::{ControllerError, Conversation, Turn};
use crate::agents::ToolDefinition;
use crate::answer::shapes::{parse_shapes, shape_for, AnswerShape};
use crate::answer::{reads_as_document, Settings};

const SYSTEM: &str = include_str!("../../prompts/system.md");
const QUESTION: &str = include_str!("../../prompts/question.md");
const REPAIR: &str = include_str!("../../prompts/repair.md");
const TOOLS: &str = include_str!("../../prompts/tools.md");
const ANSWER_TOOL: &str = include_str!("../../prompts/answer_tool.json");
const REMINDER: &str = include_str!("../../prompts/reminder.md");
const ANSWER_SHAPES: &str = include_str!("../../prompts/answer_shapes.toml");
const ANSWERS: &str = include_str!("../../prompts/answers.toml");
const IMAGE: &str = include_str!("../../prompts/image.md");

/// The controller's templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    pub system: String,
    pub question: String,
    pub repair: String,
    pub tools: String,
    /// Restates the question after the evidence (empty: not restated).
    pub reminder: String,
    pub answer_tool: ToolDefinition,
    /// What dates, times and amounts look like (`answer_shapes.toml`).
    pub shapes: Vec<AnswerShape>,
    /// How any other answer is taken from the evidence (`answers.toml`).
    pub answers: Settings,
    /// Introduces one image a vision-language controller is shown: the whole picture, or a
    /// crop with its region id and box (`image.md`).
    pub image: String,
}

/// Where images stand in a prompt: each `marker` is text the caller swaps for the image's
/// embeddings after rendering.
#[derive(Debug, Clone, Default)]
pub struct ImageSlots {
    /// The whole picture, shown with the first question.
    pub global: Option<String>,
    /// Crops of regions, shown after the evidence.
    pub crops: Vec<CropSlot>,
}

/// One crop's place in the prompt.
#[derive(Debug, Clone)]
pub struct CropSlot {
    pub region: String,
    /// Its box in image pixels, `[x1, y1, x2, y2]`.
    pub bbox: [i64; 4],
    pub marker: String,
}

fn bad(name: &str, reason: impl ToString) -> ControllerError {
    ControllerError::Prompt {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

impl Prompts {
    /// The templates compiled into p2g.
    pub fn embedded() -> Result<Self, ControllerError> {
        Ok(Self {
            system: SYSTEM.into(),
            question: QUESTION.into(),
            repair: REPAIR.into(),
            tools: TOOLS.into(),
            reminder: REMINDER.into(),
            answer_tool: serde_json::from_str(ANSWER_TOOL)
                .map_err(|e| bad("answer_tool.json", e))?,
            shapes: parse_shapes(ANSWER_SHAPES).map_err(|e| bad("answer_shapes.toml", e))?,
            answers: Settings::parse(ANSWERS).map_err(|e| bad("answers.toml", e))?,
            image: IMAGE.into(),
        })
    }

    /// The embedded templates with any file of `dir` replacing its namesake.
    pub fn with_overrides(dir: &Path) -> Result<Self, ControllerError> {
        if !dir.is_dir() {
            return Err(bad(
                &dir.display().to_string(),
                "is not a folder (it should hold system.md, question.md, … to override)",
            ));
        }
        let mut p = Self::embedded()?;
        let read = |name: &str, slot: &mut String| -> Result<(), ControllerError> {
            let path = dir.join(name);
            if path.is_file() {
                let len = path.metadata().map(|m| m.len()).unwrap_or(0);
                if len > MAX_TEMPLATE_BYTES {
                    return Err(bad(
                        name,
                        format!(
                            "is too long ({len} bytes; a prompt template may be at most \
                             {MAX_TEMPLATE_BYTES}: it must leave the model's context to the \
                             question and the evidence)"
                        ),
                    ));
                }
                *slot = std::fs::read_to_string(&path).map_err(|e| bad(name, e))?;
            }
            Ok(())
        };
        read("system.md", &mut p.system)?;
        read("question.md", &mut p.question)?;
        read("repair.md", &mut p.repair)?;
        read("tools.md", &mut p.tools)?;
        read("reminder.md", &mut p.reminder)?;
        read("image.md", &mut p.image)?;
        let mut answer = String::new();
        read("answer_tool.json", &mut answer)?;
        if !answer.is_empty() {
            p.answer_tool =
                serde_json::from_str(&answer).map_err(|e| bad("answer_tool.json", e))?;
        }
        // Only a file that is there replaces the shapes: an empty one switches them off.
        if dir.join("answer_shapes.toml").is_file() {
            let mut shapes = String::new();
            read("answer_shapes.toml", &mut shapes)?;
            p.shapes = parse_shapes(&shapes).map_err(|e| bad("answer_shapes.toml", e))?;
        }
        let mut answers = String::new();
        read("answers.toml", &mut answers)?;
        if !answers.is_empty() {
            p.answers = Settings::parse(&answers).map_err(|e| bad("answers.toml", e))?;
        }
        // Fail now, not at the first question.
        for (name, t) in [
            ("system.md", &p.system),
            ("question.md", &p.question),
            ("repair.md", &p.repair),
            ("tools.md", &p.tools),
            ("reminder.md", &p.reminder),
            ("image.md", &p.image),
        ] {
            prompts_environment()
                .template_from_str(t)
                .map_err(|e| bad(name, e))?;
        }
        Ok(p)
    }
}

/// JSON as Python's `json.dumps` writes it (`", "` and `": "` separators, non-ASCII kept): the
/// form chat templates' `tojson` produced when the model was trained.
pub fn to_json_python(v: &Value) -> String {
    struct PyFormatter;
    /// Python's `json.dumps` puts ", " between items (serde_json writes ",").
    fn separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for PyFormatter {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
        ) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PyFormatter);
    if v.serialize(&mut ser).is_err() {
        return v.to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| v.to_string())
}

/// The largest prompt template file read from a `--prompts` folder.
const MAX_TEMPLATE_BYTES: u64 = 64 * 1024;

/// Instructions one render may take: a chat template over a long conversation takes tens of
/// thousands; a template that loops without end stops here with an error.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// The environment models' own chat templates run in: lenient about undefined values, as
/// the Jinja of the transformers library they are written for.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(false);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_filter("tojson", |v: minijinja::Value| -> String {
        let json: Value = serde_json::to_value(&v).unwrap_or(Value::Null);
        to_json_python(&json)
    });
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<minijinja::Value, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env
}

/// The environment of p2g's own `prompts/`: a misspelt variable printed or looped over is an
/// error naming the template, not an empty string in the prompt (tests such as `{% if x %}`
/// still treat a missing value as false).
fn prompts_environment() -> minijinja::Environment<'static> {
    let mut env = environment();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    env
}

/// Renders one of the templates of `prompts/` (`name` for errors).
pub fn render(name: &str, template: &str, ctx: Value) -> Result<String, ControllerError> {
    let env = prompts_environment();
    let t = env.template_from_str(template).map_err(|e| bad(name, e))?;
    t.render(ctx).map_err(|e| bad(name, e))
}

/// Renders the conversation as the model's prompt, ending with the assistant's turn opened.
/// With `neutral`, the last user message asks that question instead of the one being
/// answered (the reminder after new evidence, else the question itself): the same prompt
/// with the question's content taken away, to calibrate answers against
/// ([`crate::answer::rank::choose`]).
pub fn render_conversation(
    prompts: &Prompts,
    chat_template: &str,
    conv: &Conversation,
    images: Option<&ImageSlots>,
    neutral: Option<&str>,
) -> Result<String, ControllerError> {
    let can_see = images.is_some();
    let tool_names: Vec<&str> = conv.tools.iter().map(|t| t.name.as_str()).collect();
    let mut system = render(
        "system.md",
        &prompts.system,
        json!({ "image": conv.image, "tool_names": tool_names, "can_see": can_see }),
    )?;
    let tools: Vec<Value> = conv
        .tools
        .iter()
        .map(|t| json!({ "type": "function", "function": t }))
        .collect();
    // Templates that cannot list tools (no `tools` variable) get them in the system message.
    let native_tools = chat_template.contains("tools");
    if !native_tools {
        system.push_str(&render(
            "tools.md",
            &prompts.tools,
            json!({ "tools": tools }),
        )?);
    }
    let mut messages = vec![json!({ "role": "system", "content": system })];
    let call_text = |name: &str, args: &Value| {
        format!(
            "<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {}}}\n</tool_call>",
            to_json_python(args)
        )
    };
    let assistant_call = |name: &str, args: Value| {
        if native_tools {
            json!({ "role": "assistant", "content": "",
                    "tool_calls": [{ "function": { "name": name, "arguments": args } }] })
        } else {
            json!({ "role": "assistant", "content": call_text(name, &args) })
        }
    };
    let mut question = Value::Null;
    let document = reads_as_document(
        &conv.regions,
        conv.image.width,
        conv.image.height,
        &prompts.answers,
    );
    for turn in &conv.turns {
        match turn {
            Turn::Question { text, region } => {
                let region: Option<[i64; 4]> = region.map(|b| {
                    let r = b.rounded();
                    [r.x1 as i64, r.y1 as i64, r.x2 as i64, r.y2 as i64]
                });
                // `image` and `first` let a question template introduce the image instead of
                // the system message, which then is the same for every image (so its KV cache
                // is reused across images); measured and not the default, see BENCHMARKS.md.
                let first = question.is_null();
                let hint = shape_for(&prompts.shapes, text, document).and_then(|s| s.hint.clone());
                question = json!({ "question": text, "region": region, "image": conv.image,
                                   "first": first, "hint": hint });
                let mut content = render("question.md", &prompts.question, question.clone())?;
                // The picture comes with the first question, before it.
                if let (true, Some(marker)) = (first, images.and_then(|i| i.global.as_ref())) {
                    let intro = render(
                        "image.md",
                        &prompts.image,
                        json!({ "region": null, "box": null, "marker": marker }),
                    )?;
                    content = format!("{intro}\n{content}");
                }
                messages.push(json!({ "role": "user", "content": content }));
            }
            Turn::Call { agent, arguments } => {
                messages.push(assistant_call(agent, arguments.clone()));
            }
            Turn::Observation { content, .. } => {
                if native_tools {
                    messages.push(json!({ "role": "tool", "content": content }));
                } else {
                    messages.push(json!({ "role": "user",
                        "content": format!("<tool_response>\n{content}\n</tool_response>") }));
                }
            }
            Turn::Answer { text, regions } => {
                messages.push(assistant_call(
                    &prompts.answer_tool.name,
                    json!({ "text": text, "regions": regions }),
                ));
            }
            Turn::Repair { output, error } => {
                messages.push(json!({ "role": "assistant", "content": output }));
                let content = render("repair.md", &prompts.repair, json!({ "error": error }))?;
                messages.push(json!({ "role": "user", "content": content }));
            }
        }
    }
    // A small model loses a question asked before a thousand tokens of evidence: after new
    // evidence, the question is asked again right where the answer starts.
    let mut reminded = false;
    if matches!(conv.turns.last(), Some(Turn::Observation { .. })) && !question.is_null() {
        let mut q = question.clone();
        if let Some(n) = neutral {
            q["question"] = json!(n);
        }
        let content = render("reminder.md", &prompts.reminder, q)?;
        if !content.trim().is_empty() {
            messages.push(json!({ "role": "user", "content": content }));
            reminded = true;
        }
    }
    if let (Some(n), false, Some(Turn::Question { .. })) = (neutral, reminded, conv.turns.last()) {
        let mut q = question.clone();
        q["question"] = json!(n);
        q["hint"] = Value::Null;
        let content = render("question.md", &prompts.question, q)?;
        if let Some(last) = messages.last_mut() {
            last["content"] = json!(content);
        }
    }
    // Crops come after the evidence they were cut for, in the last user message.
    if let Some(slots) = images.filter(|i| !i.crops.is_empty()) {
        let mut block = Vec::with_capacity(slots.crops.len());
        for c in &slots.crops {
            block.push(render(
                "image.md",
                &prompts.image,
                json!({ "region": c.region, "box": c.bbox, "marker": c.marker }),
            )?);
        }
        let block = block.join("\n");
        match messages.last_mut() {
            Some(last) if last["role"] == "user" => {
                let content = last["content"].as_str().unwrap_or_default();
                // Before the question, but after the whole picture when it is there too.
                let after = slots
                    .global
                    .as_ref()
                    .and_then(|g| content.find(g.as_str()).map(|at| at + g.len()))
                    .unwrap_or(0);
                let (head, tail) = content.split_at(after);
                let sep = if head.is_empty() { "" } else { "\n" };
                last["content"] = json!(format!("{head}{sep}{block}\n{}", tail.trim_start()));
            }
            _ => messages.push(json!({ "role": "user", "content": block })),
        }
    }
    let env = environment();
    let t = env
        .template_from_str(chat_template)
        .map_err(|e| bad("the model's chat template", e))?;
    t.render(json!({
        "messages": messages,
        "tools": if native_tools { Value::from(tools) } else { Value::Null },
        "add_generation_prompt": true,
        "bos_token": "",
        "eos_token": "",
    }))
    .map_err(|e| bad("the model's chat template", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_separators() {
        let v = json!({"regions": ["r1", "r2"], "text": "9.00 \u{e9}"});
        assert_eq!(
            to_json_python(&v),
            "{\"regions\": [\"r1\", \"r2\"], \"text\": \"9.00 \u{e9}\"}"
        );
    }

    #[test]
    fn embedded_templates_parse() {
        assert!(!Prompts::embedded().unwrap().answers.not_found.is_empty());
        let p = Prompts::embedded().unwrap();
        assert_eq!(p.answer_tool.name, "answer");
        for t in [&p.system, &p.question, &p.repair, &p.tools, &p.reminder] {
            environment().template_from_str(t).unwrap();
        }
    }
}
