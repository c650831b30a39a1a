//! Reading a decision out of a controller's free-form output.
//!
//! The embedded controller builds its tool calls under constraints and rarely needs this; a
//! controller that writes free text (an unconstrained model, a remote server) does. Accepted:
//! one `<tool_call>{"name": .., "arguments": {..}}</tool_call>` (the tags may be missing), where
//! the `answer` tool carries `regions` and `text`; or plain text, taken as the answer, with
//! region citations written `[r12]`.

use serde_json::Value;

use super::{Citation, Decision};

/// Parses `output`. `answer_tool` is the name of the answering tool; `tools` the callable
/// agents. The error is a reason the model can act on.
pub fn parse_decision(output: &str, answer_tool: &str, tools: &[&str]) -> Result<Decision, String> {
    let trimmed = output.trim();
    let body = match trimmed.find("<tool_call>") {
        Some(start) => {
            let rest = &trimmed[start + "<tool_call>".len()..];
            match rest.find("</tool_call>") {
                Some(end) => Some(&rest[..end]),
                None => Some(rest),
            }
        }
        None if trimmed.starts_with('{') => Some(trimmed),
        None => None,
    };
    let Some(body) = body else {
        if trimmed.is_empty() {
            return Err("the reply was empty".into());
        }
        return Ok(plain_answer(trimmed));
    };
    let v: Value = serde_json::from_str(body.trim())
        .map_err(|e| format!("the tool call is not valid JSON ({e})"))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("the tool call has no \"name\" string")?;
    let arguments = v
        .get("arguments")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
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

/// Plain text as an answer; `[r12]` markers become citations and leave the text.
fn plain_answer(text: &str) -> Decision {
    let mut grounding = Vec::new();
    let mut clean = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let close = after.find(']');
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
                    phrase: None
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
    fn malformed_calls_say_why() {
        for (out, why) in [
            ("<tool_call>{\"name\": \"ocr\", \"arguments\": {</tool_call>", "not valid JSON"),
            ("<tool_call>{\"arguments\": {}}</tool_call>", "no \"name\""),
            ("<tool_call>{\"name\": \"zoom\", \"arguments\": {}}</tool_call>", "no tool named \"zoom\""),
            ("<tool_call>{\"name\": \"ocr\", \"arguments\": [1]}</tool_call>", "must be a JSON object"),
            ("<tool_call>{\"name\": \"answer\", \"arguments\": {\"regions\": [3], \"text\": \"x\"}}</tool_call>", "list of ids"),
            ("   ", "empty"),
        ] {
            let e = parse_decision(out, "answer", TOOLS).unwrap_err();
            assert!(e.contains(why), "{out}: {e}");
        }
    }
}
