//! A [`Conversation`] as a chat-completions request: messages with tool calls and image
//! parts, the agents (and the answer) as tools.
//!
//! The same templates as the embedded controller (`prompts/`) write the text, so a remote
//! model reads what the embedded one reads. What differs is the API's structure: tool calls
//! are assistant messages with `tool_calls` and ids, their results `tool` messages with the
//! same ids; earlier answers are assistant text with `[r12]` citations (the form a model that
//! answers without the tool writes back); images are `image_url` parts holding data URLs.

use serde_json::{json, Value};

use super::images::Sent;
use super::manifest::Manifest;
use crate::answer::boxes::{BoxConvention, Frame};
use crate::controller::prompt::{render, to_json_python, Prompts};
use crate::controller::{ControllerError, Conversation, Turn};

/// What goes into a request besides the conversation.
#[derive(Debug, Clone)]
pub struct RequestOptions<'a> {
    pub model: &'a str,
    pub prompts: &'a Prompts,
    pub manifest: &'a Manifest,
    pub convention: BoxConvention,
    pub max_tokens: u32,
    pub temperature: f32,
}

/// The request body (without `stream`, which the client sets).
pub fn request(
    o: &RequestOptions<'_>,
    conv: &Conversation,
    sent: &Sent,
    frame: &Frame<'_>,
) -> Result<Value, ControllerError> {
    // A model that cannot see and has no evidence must look first: its first call is required
    // (named, when there is one tool), so servers that constrain tool calls to their schema
    // (llama.cpp's, vLLM's) return a well-formed one instead of a guess.
    let look_first = blind(conv, sent);
    let agents = if conv.must_answer {
        &[][..]
    } else {
        &conv.tools[..]
    };
    let mut tools: Vec<Value> = agents
        .iter()
        .map(|t| json!({ "type": "function", "function": t }))
        .collect();
    let look_first = look_first && !tools.is_empty();
    let about_region = conv
        .turns
        .iter()
        .rev()
        .find_map(|t| match t {
            Turn::Question { region, .. } => Some(region.is_some()),
            _ => None,
        })
        .unwrap_or(false);
    if look_first && agents.len() == 1 && !about_region {
        // The first look is at the whole image: without evidence, a region to zoom into is a
        // guess (a small model fills the optional box with one, reads nothing, and repeats).
        let mut whole = agents[0].clone();
        whole.parameters = json!({ "type": "object", "properties": {} });
        tools = vec![json!({ "type": "function", "function": whole })];
    }
    if !look_first {
        tools.push(json!({ "type": "function", "function": o.prompts.answer_tool }));
    }
    let tool_choice = if conv.must_answer {
        // The last step may only answer.
        json!({ "type": "function", "function": { "name": o.prompts.answer_tool.name } })
    } else if look_first && agents.len() == 1 {
        json!({ "type": "function", "function": { "name": agents[0].name } })
    } else if look_first {
        json!("required")
    } else {
        json!("auto")
    };
    let mut messages = vec![system(o, conv, sent, &tools)?];
    turns(o, conv, sent, frame, &mut messages)?;
    crops(o, sent, &mut messages)?;
    let mut body = json!({
        "model": o.model,
        "messages": messages,
        "max_tokens": o.max_tokens,
        "temperature": o.temperature,
    });
    if o.manifest.tools {
        body["tools"] = Value::Array(tools);
        body["tool_choice"] = tool_choice;
    }
    Ok(body)
}

fn system(
    o: &RequestOptions<'_>,
    conv: &Conversation,
    sent: &Sent,
    tools: &[Value],
) -> Result<Value, ControllerError> {
    let tool_names: Vec<&str> = conv.tools.iter().map(|t| t.name.as_str()).collect();
    let can_see = sent.whole.is_some();
    let mut text = render(
        "system.md",
        &o.prompts.system,
        // No worked example: a small model behind a server copies its numbers into answers
        // ("13.24" citing r15), and a large one does not need it.
        json!({ "image": conv.image, "tool_names": tool_names, "can_see": can_see,
                "no_example": true }),
    )?;
    if !o.manifest.tools {
        text.push_str(&render(
            "tools.md",
            &o.prompts.tools,
            json!({ "tools": tools }),
        )?);
    }
    if can_see {
        text.push_str("\n\nWhen your answer points at something in the image, give its box: ");
        text.push_str(o.convention.instruction());
    }
    Ok(json!({ "role": "system", "content": text }))
}

fn turns(
    o: &RequestOptions<'_>,
    conv: &Conversation,
    sent: &Sent,
    frame: &Frame<'_>,
    messages: &mut Vec<Value>,
) -> Result<(), ControllerError> {
    let native = o.manifest.tools;
    let mut question = Value::Null;
    let mut calls = 0usize;
    for turn in &conv.turns {
        match turn {
            Turn::Question { text, region } => {
                let first = question.is_null();
                let pixels = region.map(|b| {
                    let r = b.rounded();
                    [r.x1 as i64, r.y1 as i64, r.x2 as i64, r.y2 as i64]
                });
                question = json!({ "question": text, "region": pixels, "image": conv.image,
                                   "first": first, "hint": null });
                let mut content = render("question.md", &o.prompts.question, question.clone())?;
                // A region is also written the way the model writes boxes.
                if let (Some(b), false) = (region, o.convention == BoxConvention::Pixels) {
                    content.push_str(&format!(
                        " (the region in your box format: {})",
                        o.convention.format(b, frame, None)
                    ));
                }
                let whole = sent.whole.as_ref().filter(|_| first);
                messages.push(match whole {
                    Some(part) => {
                        let intro = render(
                            "image.md",
                            &o.prompts.image,
                            json!({ "region": null, "box": null, "marker": "" }),
                        )?;
                        json!({ "role": "user", "content": [
                            { "type": "text", "text": intro.trim_end() },
                            { "type": "image_url", "image_url": { "url": part.url } },
                            { "type": "text", "text": content },
                        ]})
                    }
                    None => json!({ "role": "user", "content": content }),
                });
            }
            Turn::Call { agent, arguments } => {
                calls += 1;
                messages.push(if native {
                    json!({ "role": "assistant", "content": "", "tool_calls": [{
                        "id": call_id(calls), "type": "function",
                        "function": { "name": agent, "arguments": arguments.to_string() } }] })
                } else {
                    json!({ "role": "assistant", "content": format!(
                        "<tool_call>\n{{\"name\": \"{agent}\", \"arguments\": {}}}\n</tool_call>",
                        to_json_python(arguments)) })
                });
            }
            Turn::Observation { content, .. } => {
                messages.push(if native {
                    json!({ "role": "tool", "tool_call_id": call_id(calls), "content": content })
                } else {
                    json!({ "role": "user",
                            "content": format!("<tool_response>\n{content}\n</tool_response>") })
                });
            }
            Turn::Answer { text, regions } => {
                let cites = if regions.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", regions.join(", "))
                };
                messages.push(json!({ "role": "assistant", "content": format!("{text}{cites}") }));
            }
            Turn::Repair { output, error } => {
                messages.push(json!({ "role": "assistant", "content": output }));
                let content = render("repair.md", &o.prompts.repair, json!({ "error": error }))?;
                messages.push(json!({ "role": "user", "content": content }));
            }
        }
    }
    if matches!(conv.turns.last(), Some(Turn::Observation { .. })) && !question.is_null() {
        let content = render("reminder.md", &o.prompts.reminder, question)?;
        if !content.trim().is_empty() {
            messages.push(json!({ "role": "user", "content": content }));
        }
    }
    Ok(())
}

/// The model neither sees the image nor has evidence of it yet.
pub(super) fn blind(conv: &Conversation, sent: &Sent) -> bool {
    sent.whole.is_none()
        && conv.regions.is_empty()
        && !conv
            .turns
            .iter()
            .any(|t| matches!(t, Turn::Observation { .. }))
}

fn call_id(n: usize) -> String {
    format!("call_{n}")
}

/// Crops after the evidence they were cut for: in the last user message, before its text
/// (the question restated), or in a user message of their own after a tool result.
fn crops(
    o: &RequestOptions<'_>,
    sent: &Sent,
    messages: &mut Vec<Value>,
) -> Result<(), ControllerError> {
    let mut parts = Vec::new();
    for c in &sent.crops {
        let b = c.bbox.rounded();
        let label = render(
            "image.md",
            &o.prompts.image,
            json!({ "region": c.region, "box": [b.x1 as i64, b.y1 as i64, b.x2 as i64, b.y2 as i64],
                    "marker": "" }),
        )?;
        parts.push(json!({ "type": "text", "text": label.trim_end() }));
        parts.push(json!({ "type": "image_url", "image_url": { "url": c.part.url } }));
    }
    if let Some((ids, part)) = &sent.mosaic {
        parts.push(json!({ "type": "text", "text": format!(
            "Regions {} in one image, each cell labelled with its region id:", ids.join(", ")) }));
        parts.push(json!({ "type": "image_url", "image_url": { "url": part.url } }));
    }
    if parts.is_empty() {
        return Ok(());
    }
    match messages.last_mut() {
        Some(last) if last["role"] == "user" => {
            let text = match last["content"].take() {
                Value::String(s) => vec![json!({ "type": "text", "text": s })],
                Value::Array(a) => a,
                _ => Vec::new(),
            };
            parts.extend(text);
            last["content"] = Value::Array(parts);
        }
        _ => messages.push(json!({ "role": "user", "content": parts })),
    }
    Ok(())
}
