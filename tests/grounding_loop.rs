//! The grounding loop's rules, driven by a scripted controller and scripted agents (no models):
//! repair of unusable output, repeated calls, agent errors and timeouts as observations, the
//! step budget, cancellation, grounded answers and traces.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2g::agents::{Agent, AgentError, BoxFuture, Finding, FindingKind, ToolDefinition};
use p2g::controller::{
    Citation, Controller, ControllerError, Conversation, Decision, Step, StepContext, StepStats,
    Turn,
};
use p2g::orchestrator::{AskOptions, Orchestrator, OrchestratorError};
use p2g::trace::TraceEvent;
use p2g::vision::{BBox, Image};

/// Replies from a script; records every conversation it was shown.
struct Scripted {
    replies: Mutex<Vec<Result<Decision, String>>>,
    seen: Arc<Mutex<Vec<Conversation>>>,
}

impl Scripted {
    fn new(replies: Vec<Result<Decision, String>>) -> (Self, Arc<Mutex<Vec<Conversation>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut r = replies;
        r.reverse();
        (
            Self {
                replies: Mutex::new(r),
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl Controller for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn decide<'a>(
        &'a self,
        conv: &'a Conversation,
        ctx: &'a StepContext,
    ) -> BoxFuture<'a, Result<Step, ControllerError>> {
        Box::pin(async move {
            if ctx.cancel.load(Ordering::SeqCst) {
                return Err(ControllerError::Cancelled);
            }
            self.seen.lock().unwrap().push(conv.clone());
            let next = self.replies.lock().unwrap().pop();
            let next = match (next, conv.must_answer) {
                (Some(r), _) => r,
                (None, true) => Ok(answer("out of steps", &[])),
                (None, false) => Ok(call("reader", serde_json::json!({}))),
            };
            match next {
                Ok(decision) => Ok(Step {
                    decision,
                    raw: String::new(),
                    stats: StepStats::default(),
                    how: None,
                    quoted: false,
                    source: Default::default(),
                }),
                Err(reason) => Err(ControllerError::Malformed {
                    output: "<tool_call>{oops".into(),
                    reason,
                    stats: StepStats::default(),
                }),
            }
        })
    }
}

fn call(agent: &str, arguments: serde_json::Value) -> Decision {
    Decision::Call {
        agent: agent.into(),
        arguments,
    }
}

fn answer(text: &str, regions: &[&str]) -> Decision {
    Decision::Answer {
        text: text.into(),
        grounding: regions
            .iter()
            .map(|r| Citation {
                region: r.to_string(),
                phrase: None,
            })
            .collect(),
    }
}

/// An agent that "reads" fixed lines, or fails, or hangs.
#[derive(Clone)]
struct Reader {
    name: &'static str,
    lines: Vec<(&'static str, [f32; 4])>,
    fail: bool,
    delay: Duration,
}

impl Agent for Reader {
    type Args = serde_json::Value;
    type Output = Vec<(String, [f32; 4])>;

    fn name(&self) -> &str {
        self.name
    }

    fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.name.into(),
            description: "reads text".into(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    fn capabilities(&self) -> Vec<p2g::agents::Capability> {
        vec![p2g::agents::Capability::Text]
    }

    fn findings(&self, output: &Self::Output) -> Vec<Finding> {
        output
            .iter()
            .map(|(t, b)| Finding {
                bbox: BBox::from(*b),
                text: t.clone(),
                kind: FindingKind::Text,
                score: 0.9,
                quad: None,
            })
            .collect()
    }

    async fn run(&self, _image: &Image, _args: Self::Args) -> Result<Self::Output, AgentError> {
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(AgentError::Inference {
                agent: self.name.into(),
                reason: "the model file vanished".into(),
            });
        }
        Ok(self
            .lines
            .iter()
            .map(|(t, b)| (t.to_string(), *b))
            .collect())
    }
}

fn reader() -> Reader {
    Reader {
        name: "reader",
        lines: vec![
            ("SHOP NAME SDN BHD", [10.0, 10.0, 200.0, 30.0]),
            ("DATE: 25/12/2018", [10.0, 40.0, 200.0, 60.0]),
            ("TOTAL : 9.00", [10.0, 70.0, 200.0, 90.0]),
        ],
        fail: false,
        delay: Duration::ZERO,
    }
}

fn image() -> Image {
    Image::from_rgb(image::RgbImage::new(300, 200))
}

fn orch(c: Scripted, agents: Vec<Reader>) -> Orchestrator {
    let mut b = Orchestrator::builder()
        .controller(c)
        .max_steps(5)
        .agent_timeout(Duration::from_millis(300));
    for a in agents {
        b = b.agent(a);
    }
    b.build().unwrap()
}

fn observations(conv: &Conversation) -> Vec<String> {
    conv.turns
        .iter()
        .filter_map(|t| match t {
            Turn::Observation { content, .. } => Some(content.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn evidence_is_numbered_and_a_misread_answer_is_copied_from_its_region() {
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("9.80", &["r3"])),
    ]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("receipt.png"));
    let a = common::rt()
        .block_on(s.ask("What is the total?", AskOptions::default()))
        .unwrap();
    assert_eq!(a.answer, "9.00");
    assert_eq!(a.steps, 2);
    assert_eq!(a.grounding.len(), 1);
    assert_eq!(a.grounding[0].region, "r3");
    assert_eq!(a.linked, "[9.00](10,70,200,90)");
    let convs = seen.lock().unwrap();
    assert_eq!(
        observations(&convs[1]),
        vec!["[10,10,200,30] r1 SHOP NAME SDN BHD\n[10,40,200,60] r2 DATE: 25/12/2018\n[10,70,200,90] r3 TOTAL : 9.00"]
    );
    assert_eq!(convs[1].regions.len(), 3);
    // The trace has the whole story, in order.
    let kinds: Vec<&str> = s
        .trace()
        .iter()
        .map(|e| match e {
            TraceEvent::Question { .. } => "question",
            TraceEvent::Step { .. } => "step",
            TraceEvent::Tool { .. } => "tool",
            TraceEvent::Answer { .. } => "answer",
            TraceEvent::Repair { .. } => "repair",
            TraceEvent::Error { .. } => "error",
        })
        .collect();
    assert_eq!(kinds, ["question", "step", "tool", "step", "answer"]);
}

#[test]
fn unusable_output_is_shown_to_the_controller_once_then_fails_clearly() {
    let (c, seen) = Scripted::new(vec![
        Err("the tool call is not valid JSON".into()),
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("25/12/2018", &["r2"])),
    ]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let a = common::rt()
        .block_on(s.ask("What is the date?", AskOptions::default()))
        .unwrap();
    assert_eq!(a.answer, "25/12/2018");
    let convs = seen.lock().unwrap();
    assert!(convs[1].turns.iter().any(|t| matches!(t,
        Turn::Repair { error, .. } if error.contains("not valid JSON"))));
    drop(convs);

    let (c, _) = Scripted::new(vec![Err("bad one".into()), Err("bad two".into())]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let e = common::rt()
        .block_on(s.ask("What is the date?", AskOptions::default()))
        .unwrap_err();
    assert!(
        matches!(e, OrchestratorError::Unusable { ref reason, .. } if reason == "bad two"),
        "{e}"
    );
    assert!(matches!(s.trace().last(), Some(TraceEvent::Error { .. })));
}

#[test]
fn repeated_calls_unknown_tools_failures_and_timeouts_become_observations() {
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(call("reader", serde_json::json!({}))),
        Ok(call("zoom", serde_json::json!({}))),
        Ok(call("broken", serde_json::json!({}))),
        Ok(call("slow", serde_json::json!({}))),
    ]);
    let mut broken = reader();
    broken.name = "broken";
    broken.fail = true;
    let mut slow = reader();
    slow.name = "slow";
    slow.delay = Duration::from_secs(30);
    let o = Orchestrator::builder()
        .controller(c)
        .agent(reader())
        .agent(broken)
        .agent(slow)
        .max_steps(6)
        .agent_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let a = common::rt()
        .block_on(s.ask("What is the total?", AskOptions::default()))
        .unwrap();
    // The budget ran out: the last step could only answer.
    assert_eq!(a.answer, "out of steps");
    assert_eq!(a.steps, 6);
    let convs = seen.lock().unwrap();
    assert!(convs.last().unwrap().must_answer);
    assert!(!convs[4].must_answer);
    let obs = observations(convs.last().unwrap());
    assert_eq!(obs.len(), 5);
    assert!(
        obs[1].contains("already called reader") && obs[1].contains("r1–r3"),
        "{}",
        obs[1]
    );
    assert!(obs[2].contains("no tool named \"zoom\""), "{}", obs[2]);
    assert!(obs[3].contains("vanished"), "{}", obs[3]);
    assert!(obs[4].contains("did not finish"), "{}", obs[4]);
}

#[test]
fn follow_up_questions_reuse_evidence_and_cancellation_leaves_no_half_turns() {
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("SHOP NAME SDN BHD", &["r1"])),
        Ok(answer("25/12/2018", &["r2"])),
        Ok(answer("SHOP NAME SDN BHD", &["r1"])),
    ]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let rt = common::rt();
    rt.block_on(s.ask("Which shop?", AskOptions::default()))
        .unwrap();
    let a = rt
        .block_on(s.ask("What is the date?", AskOptions::default()))
        .unwrap();
    assert_eq!((a.answer.as_str(), a.steps), ("25/12/2018", 1));
    assert_eq!(seen.lock().unwrap()[2].regions.len(), 3);

    let cancel = Arc::new(AtomicBool::new(true));
    let opts = AskOptions {
        region: None,
        ctx: StepContext {
            on_text: None,
            cancel,
        },
    };
    let e = rt.block_on(s.ask("And the total?", opts)).unwrap_err();
    assert!(matches!(e, OrchestratorError::Cancelled));
    assert!(matches!(s.trace().last(), Some(TraceEvent::Error { .. })));
    // The cancelled question left no turns behind; the evidence stays.
    let a = rt
        .block_on(s.ask("The shop again?", AskOptions::default()))
        .unwrap();
    let convs = seen.lock().unwrap();
    let questions = convs
        .last()
        .unwrap()
        .turns
        .iter()
        .filter(|t| matches!(t, Turn::Question { .. }))
        .count();
    assert_eq!(questions, 3, "{:?}", convs.last().unwrap().turns);
    assert_eq!(s.evidence().regions().len(), 3);
    assert_eq!(a.steps, 1);
}

#[test]
fn bad_questions_and_builders_are_errors() {
    let (c, _) = Scripted::new(vec![]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let rt = common::rt();
    assert!(matches!(
        rt.block_on(s.ask("   ", AskOptions::default())),
        Err(OrchestratorError::EmptyQuestion)
    ));
    let outside = AskOptions {
        region: Some(BBox::new(500.0, 500.0, 600.0, 600.0)),
        ..Default::default()
    };
    assert!(matches!(
        rt.block_on(s.ask("What is here?", outside)),
        Err(OrchestratorError::BadRegion(..))
    ));
    assert!(matches!(
        Orchestrator::builder().build(),
        Err(OrchestratorError::NoController)
    ));
    let (c, _) = Scripted::new(vec![]);
    assert!(matches!(
        Orchestrator::builder()
            .controller(c)
            .agent(reader())
            .agent(reader())
            .build(),
        Err(OrchestratorError::DuplicateAgent(_))
    ));
}

#[test]
fn appearance_questions_without_a_vision_model_are_answered_plainly_not_guessed() {
    let (c, seen) = Scripted::new(vec![Ok(answer("tan", &["r1"]))]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let a = common::rt()
        .block_on(s.ask("What colour is the paper?", AskOptions::default()))
        .unwrap();
    assert!(a.answer.starts_with("I cannot tell"), "{}", a.answer);
    assert!(a.answer.contains("reader"), "{}", a.answer);
    assert!(a.grounding.is_empty());
    assert_eq!(a.steps, 0);
    // The controller was not asked to guess.
    assert!(seen.lock().unwrap().is_empty());
    assert!(p2g::orchestrator::asks_about_appearance(
        "Which shade of red is the logo?"
    ));
    assert!(!p2g::orchestrator::asks_about_appearance(
        "What is the total amount?"
    ));
}
