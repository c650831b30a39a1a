//! Reading a decision out of a controller's free-form output.
//!
//! The embedded controller builds its tool calls under constraints and rarely needs this; a
//! controller that writes free text (an unconstrained model, a remote server) does. Servers put
//! tool calls in the API's `tool_calls` field ([`call_from_parts`]) or leave them in the text,
//! in the form the model was trained on — llama.cpp's server does with `tool_choice: auto`:
//!
//! - Qwen / Hermes: `<tool_call>{"name": .., "arguments": {..}}</tool_call>` (tags may be cut);
//! - Llama 3.1: `<|python_tag|>{"name": .., "parameters": {..}}`, or the JSON alone;
//! - Mistral: `[TOOL_CALLS][{"name": .., "arguments": {..}}]`;
//! - bare JSON, fenced or not, with a `"name"`.
//!
//! The `answer` tool carries `regions` and `text`. Anything else is plain text, taken as the
//! answer, with region citations written `[r12]`. Reasoning blocks (`<think>…</think>`) are
//! dropped first.

use serde_json::Value;

use super::{Citation, Decision};

/// Parses `output`. `answer_tool` is the name of the answering tool; `tools` the callable
/// agents. The error is a reason the model can act on.
pub fn parse_decision(output: &str, answer_tool: &str, tools: &[&str]) -> Result<Decision, String> {
    let cleaned = without_reasoning(output);
    let trimmed = cleaned.trim();
    let Some(body) = call_text(trimmed) else {
        if trimmed.is_empty() {
            return Err("the reply was empty".into());
        }
        return Ok(plain_answer(trimmed));
    };
    // The first JSON value: a model that writes two calls in a row gets the first run (the
    // loop takes one step at a time; it may call the other next).
    let v: Value = serde_json::Deserializer::from_str(body.trim())
        .into_iter::<Value>()
        .next()
        .ok_or_else(|| "the tool call is not valid JSON (it is empty)".to_string())?
        .map_err(|e| format!("the tool call is not valid JSON ({e})"))?;
    // Mistral and some servers write a list of calls; the loop takes one step at a time.
    let v = match v {
        Value::Array(mut calls) if !calls.is_empty() => calls.swap_remove(0),
        other => other,
    };
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the tool call has no \"name\" string")?;
    let arguments = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    call_from_parts(name, arguments, answer_tool, tools)
}

/// A decision from a tool call's name and arguments (a JSON object, or a string holding one:
/// the API's `function.arguments`).
pub fn call_from_parts(
    name: &str,
    arguments: Value,
    answer_tool: &str,
    tools: &[&str],
) -> Result<Decision, String> {
    let arguments = match arguments {
        Value::String(s) if s.trim().is_empty() => Value::Object(Default::default()),
        Value::String(s) => serde_json::from_str(&s)
            .map_err(|e| format!("the arguments of {name:?} are not valid JSON ({e})"))?,
        Value::Null => Value::Object(Default::default()),
        other => other,
    };
    if !arguments.is_object() {
        return Err("\"arguments\" must be a JSON object".into());
    }
    if name == answer_tool {
        let text = arguments
            .get("text")
            .and_then(Value::as_str)
            .ok_or("the answer has no \"text\" string")?
            .to_string();
        let regions = match arguments.get("regions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|r| {
                    r.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "\"regions\" must be a list of ids like \"r3\"".to_string())
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("\"regions\" must be a list of ids like \"r3\"".into()),
        };
        return Ok(Decision::Answer {
            text,
            grounding: regions
                .into_iter()
                .map(|region| Citation {
                    region,
                    phrase: None,
                    bbox: None,
                })
                .collect(),
        });
    }
    if !tools.contains(&name) {
        let mut known: Vec<&str> = tools.to_vec();
        known.push(answer_tool);
        return Err(format!(
            "there is no tool named {name:?}; the tools are {}",
            known.join(", ")
        ));
    }
    Ok(Decision::Call {
        agent: name.to_string(),
        arguments,
    })
}

/// The text without `<think>…</think>` blocks (an unclosed one runs to the end).
pub fn without_reasoning(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("<think>") {
        return text.into();
    }
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("<think>") {
        out.push_str(&rest[..open]);
        rest = match rest[open..].find("</think>") {
            Some(close) => &rest[open + close + "</think>".len()..],
            None => "",
        };
    }
    out.push_str(rest);
    out.into()
}

/// The JSON of a tool call written in the text, in any of the forms of the module docs.
fn call_text(t: &str) -> Option<&str> {
    let between = |open: &str, closes: &[&str]| -> Option<&str> {
        let start = t.find(open)? + open.len();
        let rest = &t[start..];
        let end = closes
            .iter()
            .filter_map(|c| rest.find(c))
            .min()
            .unwrap_or(rest.len());
        Some(&rest[..end])
    };
    if let Some(b) = between("<tool_call>", &["</tool_call>"]) {
        return Some(b);
    }
    if let Some(b) = between("<|python_tag|>", &["<|eom_id|>", "<|eot_id|>"]) {
        return Some(b);
    }
    if let Some(b) = between("[TOOL_CALLS]", &["</s>"]) {
        return Some(b);
    }
    let fenced = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .map(|r| r.trim_end().trim_end_matches("```"));
    let json = fenced.unwrap_or(t).trim();
    // Bare JSON is a call only when it names one: a model may answer with JSON (Qwen2.5-VL's
    // `[{"bbox_2d": ..}]`) that is an answer.
    ((json.starts_with('{') || json.starts_with('[')) && json.contains("\"name\"")).then_some(json)
}

/// Plain text as an answer; `[r12]` markers become citations and leave the text.
fn plain_answer(text: &str) -> Decision {
    let mut grounding = Vec::new();
    let mut clean = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        // A citation holds no `[`: the group ends at the next bracket of either kind, which
        // keeps the scan linear (looking for `]` past every `[` made a megabyte of `[` from a
        // remote model take 22 s).
        let close = after
            .find(['[', ']'])
            .filter(|&c| after.as_bytes()[c] == b']');
        let inner = close.map(|c| &after[..c]);
        let ids: Option<Vec<&str>> = inner.map(|s| s.split(',').map(str::trim).collect());
        let is_ref = ids.as_ref().is_some_and(|ids| {
            ids.iter().all(|id| {
                id.len() > 1 && id.starts_with('r') && id[1..].bytes().all(|b| b.is_ascii_digit())
            })
        });
        if let (true, Some(ids), Some(c)) = (is_ref, ids, close) {
            clean.push_str(rest[..open].trim_end());
            for id in ids {
                grounding.push(Citation {
                    region: id.to_string(),
                    phrase: None,
                    bbox: None,
                });
            }
            rest = &after[c + 1..];
        } else {
            clean.push_str(&rest[..=open]);
            rest = after;
        }
    }
    clean.push_str(rest);
    Decision::Answer {
        text: clean.trim().to_string(),
        grounding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOLS: &[&str] = &["ocr"];

    #[test]
    fn brackets_without_citations_stay_text() {
        // A megabyte of `[` (a reply p2g does not bound) is text, read in one pass.
        let s = "[".repeat(1 << 20);
        match plain_answer(&s) {
            Decision::Answer { text, grounding } => {
                assert_eq!(text.len(), 1 << 20);
                assert!(grounding.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match plain_answer("a [x [r2] b [r3, r4]") {
            Decision::Answer { text, grounding } => {
                assert_eq!(text, "a [x b");
                let ids: Vec<&str> = grounding.iter().map(|c| c.region.as_str()).collect();
                assert_eq!(ids, ["r2", "r3", "r4"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_calls_and_answers() {
        let d = parse_decision(
            "<tool_call>\n{\"name\": \"ocr\", \"arguments\": {}}\n</tool_call>",
            "answer",
            TOOLS,
        )
        .unwrap();
        assert_eq!(
            d,
            Decision::Call {
                agent: "ocr".into(),
                arguments: serde_json::json!({})
            }
        );
        let d = parse_decision(
            "<tool_call>{\"name\": \"answer\", \"arguments\": {\"regions\": [\"r2\"], \"text\": \"9.00\"}}</tool_call>",
            "answer",
            TOOLS,
        )
        .unwrap();
        assert_eq!(
            d,
            Decision::Answer {
                text: "9.00".into(),
                grounding: vec![Citation {
                    region: "r2".into(),
                    phrase: None,
                    bbox: None,
                }]
            }
        );
    }

    #[test]
    fn plain_text_with_citations() {
        let d = parse_decision("The total is 9.00 [r4, r5].", "answer", TOOLS).unwrap();
        let Decision::Answer { text, grounding } = d else {
            panic!("not an answer")
        };
        assert_eq!(text, "The total is 9.00.");
        assert_eq!(grounding.len(), 2);
        // Brackets that are not citations stay.
        let d = parse_decision("see [note]", "answer", TOOLS).unwrap();
        assert!(matches!(d, Decision::Answer { text, .. } if text == "see [note]"));
    }

    #[test]
    fn calls_in_every_form_servers_leave_in_the_text() {
        let ocr = Decision::Call {
            agent: "ocr".into(),
            arguments: serde_json::json!({"region": [1, 2, 3, 4]}),
        };
        for out in [
            "<tool_call>\n{\"name\": \"ocr\", \"arguments\": {\"region\": [1, 2, 3, 4]}}\n</tool_call>",
            "Let me read it. <tool_call>{\"name\": \"ocr\", \"arguments\": {\"region\": [1, 2, 3, 4]}}",
            "<|python_tag|>{\"name\": \"ocr\", \"parameters\": {\"region\": [1, 2, 3, 4]}}<|eom_id|>",
            "{\"name\": \"ocr\", \"parameters\": {\"region\": [1, 2, 3, 4]}}",
            "[TOOL_CALLS][{\"name\": \"ocr\", \"arguments\": {\"region\": [1, 2, 3, 4]}}]",
            "```json\n{\"name\": \"ocr\", \"arguments\": \"{\\\"region\\\": [1, 2, 3, 4]}\"}\n```",
            "<think>The total is small, read it first.</think><tool_call>{\"name\": \"ocr\", \"arguments\": {\"region\": [1, 2, 3, 4]}}</tool_call>",
            "{\"name\": \"ocr\", \"arguments\": {\"region\": [1, 2, 3, 4]}}\n{\"name\": \"answer\", \"arguments\": {\"text\": \"9\"}}",
        ] {
            assert_eq!(parse_decision(out, "answer", TOOLS).as_ref(), Ok(&ocr), "{out}");
        }
        // JSON without a name is an answer (Qwen2.5-VL's boxes), not a broken call.
        let d = parse_decision(
            "[{\"bbox_2d\": [1, 2, 30, 40], \"label\": \"cup\"}]",
            "answer",
            TOOLS,
        );
        assert!(matches!(d, Ok(Decision::Answer { .. })), "{d:?}");
        assert_eq!(without_reasoning("<think>a</think>b<think>c"), "b");
    }

    #[test]
    fn malformed_calls_say_why() {
        for (out, why) in [
            ("<tool_call>{\"name\": \"ocr\", \"arguments\": {</tool_call>", "not valid JSON"),
            ("<tool_call>{\"arguments\": {}}</tool_call>", "no \"name\""),
            ("<tool_call>{\"name\": \"zoom\", \"arguments\": {}}</tool_call>", "no tool named \"zoom\""),
            ("<tool_call>{\"name\": \"ocr\", \"arguments\": [1]}</tool_call>", "must be a JSON object"),
            ("<tool_call>{\"name\": \"answer\", \"arguments\": {\"regions\": [3], \"text\": \"x\"}}</tool_call>", "list of ids"),
            ("   ", "empty"),
            ("<|python_tag|>{\"name\": \"ocr\", \"parameters\": {\"region\": }", "not valid JSON"),
            ("{\"name\": \"ocr\", \"arguments\": \"{bad\"}", "arguments of \"ocr\" are not valid JSON"),
            ("<think>only thinking</think>", "empty"),
        ] {
            let e = parse_decision(out, "answer", TOOLS).unwrap_err();
            assert!(e.contains(why), "{out}: {e}");
        }
    }
}
