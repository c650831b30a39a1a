//! The grounding loop's rules, driven by a scripted controller and scripted agents (no models):
//! repair of unusable output, repeated calls, agent errors and timeouts as observations, the
//! step budget, cancellation, grounded answers and traces.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2g::agents::{Agent, AgentError, BoxFuture, Finding, FindingKind, ToolDefinition};
use p2g::agents::{Lead, LeadKind};
use p2g::controller::{
    AnswerSource, Citation, Controller, ControllerError, Conversation, Decision, Step, StepContext,
    StepStats, Turn,
};
use p2g::orchestrator::{AskOptions, Orchestrator, OrchestratorError, ZoomBudget};
use p2g::trace::TraceEvent;
use p2g::vision::{BBox, Image};

/// Replies from a script; records every conversation it was shown.
struct Scripted {
    replies: Mutex<Vec<Result<Decision, String>>>,
    seen: Arc<Mutex<Vec<Conversation>>>,
    /// Where its answers say their text came from.
    source: AnswerSource,
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
                source: AnswerSource::Model,
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
                    source: self.source,
                    shown: Vec::new(),
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
                bbox: None,
            })
            .collect(),
    }
}

/// An agent that "reads" fixed lines, or fails, or hangs; with `zoomed` lines it can also
/// read magnified (the lines inside the asked region come back) and reports `leads`.
#[derive(Clone)]
struct Reader {
    name: &'static str,
    lines: Vec<(&'static str, [f32; 4])>,
    fail: bool,
    delay: Duration,
    zoomed: Vec<(&'static str, [f32; 4], f32)>,
    leads: Vec<Lead>,
    calls: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Agent for Reader {
    type Args = serde_json::Value;
    type Output = Vec<(String, [f32; 4], f32)>;

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
            .map(|(t, b, score)| Finding {
                bbox: BBox::from(*b),
                text: t.clone(),
                kind: FindingKind::Text,
                score: *score,
                quad: None,
            })
            .collect()
    }

    fn leads(&self, _output: &Self::Output) -> Vec<Lead> {
        self.leads.clone()
    }

    fn zoom_arguments(&self, region: &BBox) -> Option<serde_json::Value> {
        (!self.zoomed.is_empty()).then(|| {
            serde_json::json!({"region": [region.x1, region.y1, region.x2, region.y2], "zoom": "auto"})
        })
    }

    async fn run(&self, _image: &Image, args: Self::Args) -> Result<Self::Output, AgentError> {
        self.calls.lock().unwrap().push(args.clone());
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(AgentError::Inference {
                agent: self.name.into(),
                reason: "the model file vanished".into(),
            });
        }
        if let Some(r) = args
            .get("region")
            .and_then(|r| serde_json::from_value::<BBox>(r.clone()).ok())
        {
            let inside = |b: &[f32; 4]| BBox::from(*b).intersection(&r) > 0.0;
            return Ok(self
                .zoomed
                .iter()
                .filter(|(_, b, _)| inside(b))
                .map(|(t, b, s)| (t.to_string(), *b, *s))
                .chain(
                    self.lines
                        .iter()
                        .filter(|(_, b)| inside(b))
                        .map(|(t, b)| (t.to_string(), *b, 0.9)),
                )
                .collect());
        }
        Ok(self
            .lines
            .iter()
            .map(|(t, b)| (t.to_string(), *b, 0.9))
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
        zoomed: Vec::new(),
        leads: Vec::new(),
        calls: Arc::new(Mutex::new(Vec::new())),
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
        vec!["[top] r1 SHOP NAME SDN BHD\n[top] r2 DATE: 25/12/2018\n[middle] r3 TOTAL : 9.00"]
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
            TraceEvent::Narrow { .. } => "narrow",
            TraceEvent::Visual { .. } => "visual",
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
    // The step after a repeated call must answer (the controller was told it repeated).
    assert!(!convs[1].must_answer && convs[2].must_answer);
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
    // What is depicted is appearance too; what is written is not.
    for q in [
        "What animal is drawn on that red sign?",
        "Where to buy a mug like this based on its logo?",
        "What is pictured on the poster?",
    ] {
        assert!(p2g::orchestrator::asks_about_appearance(q), "{q}");
    }
    for q in [
        "Which team's name is written on the flag?",
        "What word is printed on the face of the wall clock?",
        "Which game is shown on the left monitor?",
    ] {
        assert!(!p2g::orchestrator::asks_about_appearance(q), "{q}");
    }
}

fn not_found() -> Decision {
    Decision::NotFound {
        reason: "nothing in the evidence".into(),
    }
}

/// A photo (2000x1500, a few signs: not a document) with a flag the first pass could not
/// read: a lead there, and a closer read that finds "WARRIORS".
fn photo_reader() -> Reader {
    Reader {
        name: "reader",
        lines: vec![
            ("STOP", [100.0, 100.0, 160.0, 130.0]),
            ("MAIN ST", [1500.0, 1200.0, 1600.0, 1230.0]),
        ],
        fail: false,
        delay: Duration::ZERO,
        zoomed: vec![("WARRIORS", [950.0, 600.0, 990.0, 760.0], 0.97)],
        leads: vec![Lead {
            bbox: BBox::new(955.0, 620.0, 985.0, 700.0),
            kind: LeadKind::UnreadText,
            text_height: Some(20.0),
            text: None,
            score: 0.0,
        }],
        calls: Arc::new(Mutex::new(Vec::new())),
    }
}

fn photo() -> Image {
    Image::from_rgb(image::RgbImage::new(2000, 1500))
}

fn zoom_records(s: &p2g::orchestrator::Session<'_>) -> Vec<p2g::orchestrator::ZoomRecord> {
    s.trace()
        .iter()
        .filter_map(|e| match e {
            TraceEvent::Tool { zoom: Some(z), .. } => Some(z.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_photos_unread_place_is_read_magnified_before_the_controller_answers() {
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("WARRIORS", &["r3"])),
    ]);
    let r = photo_reader();
    let calls = r.calls.clone();
    let o = orch(c, vec![r]);
    let mut s = o.session(photo(), std::path::Path::new("flag.jpg"));
    let a = common::rt()
        .block_on(s.ask("Which team's flag is it?", AskOptions::default()))
        .unwrap();
    assert_eq!(a.answer, "WARRIORS");
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1]["zoom"], "auto");
    let z = zoom_records(&s);
    assert_eq!(z.len(), 1);
    // The window holds the lead, with context around it, inside the image.
    let lead = BBox::new(955.0, 620.0, 985.0, 700.0);
    assert!(
        z[0].window.intersection(&lead) >= lead.area() * 0.99,
        "{z:?}"
    );
    assert!(z[0].window.x2 <= 2000.0 && z[0].window.y1 >= 0.0);
    assert!(z[0].why.contains("no line came out"), "{}", z[0].why);
    // The controller answered with the closer read in its evidence, as a region of the
    // whole image.
    let convs = seen.lock().unwrap();
    let w = convs[1]
        .regions
        .iter()
        .find(|r| r.text == "WARRIORS")
        .unwrap();
    assert_eq!(w.bbox, BBox::new(950.0, 600.0, 990.0, 760.0));
}

#[test]
fn not_found_looks_again_within_the_budget_then_says_so() {
    // Nothing to look at: "I cannot tell", citing nothing.
    let (c, _) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(not_found()),
    ]);
    let o = orch(c, vec![reader()]);
    let mut s = o.session(image(), std::path::Path::new("r.png"));
    let a = common::rt()
        .block_on(s.ask("What is the dog's name?", AskOptions::default()))
        .unwrap();
    assert!(a.answer.starts_with("I cannot tell"), "{}", a.answer);
    assert!(a.answer.contains("3 regions"), "{}", a.answer);
    assert!(a.grounding.is_empty());
    assert_eq!(a.steps, 2);

    // Many places to look again, two zooms allowed per question: exactly two are read (right
    // after the first read of the photo), and the controller's not-found then stands.
    let mut r = photo_reader();
    r.leads = (0..8)
        .map(|i| Lead {
            bbox: BBox::new(
                100.0 + 200.0 * i as f32,
                400.0,
                160.0 + 200.0 * i as f32,
                420.0,
            ),
            kind: LeadKind::LowConfidence,
            text_height: Some(20.0),
            text: Some("XX".into()),
            score: 0.55,
        })
        .collect();
    let calls = r.calls.clone();
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(not_found()),
    ]);
    let o = Orchestrator::builder()
        .controller(c)
        .agent(r)
        .max_steps(6)
        .zoom_budget(ZoomBudget {
            max_zooms: 2,
            ..ZoomBudget::default()
        })
        .build()
        .unwrap();
    let mut s = o.session(photo(), std::path::Path::new("p.jpg"));
    let a = common::rt()
        .block_on(s.ask("What does the banner say?", AskOptions::default()))
        .unwrap();
    assert!(a.answer.starts_with("I cannot tell"), "{}", a.answer);
    assert!(a.answer.contains("2 places"), "{}", a.answer);
    assert_eq!(calls.lock().unwrap().len(), 3);
    assert_eq!(zoom_records(&s).len(), 2);
    assert_eq!(seen.lock().unwrap().len(), 2);

    // No zooming at all.
    let (c, _) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(not_found()),
    ]);
    let r = photo_reader();
    let calls = r.calls.clone();
    let o = Orchestrator::builder()
        .controller(c)
        .agent(r)
        .zoom_budget(ZoomBudget {
            max_zooms: 0,
            ..ZoomBudget::default()
        })
        .build()
        .unwrap();
    let mut s = o.session(photo(), std::path::Path::new("p.jpg"));
    let a = common::rt()
        .block_on(s.ask("Which team?", AskOptions::default()))
        .unwrap();
    assert!(a.answer.starts_with("I cannot tell"), "{}", a.answer);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[test]
fn a_weak_reading_is_read_again_before_it_is_given_as_the_answer() {
    let mut r = photo_reader();
    r.lines = vec![("PANDA", [880.0, 380.0, 925.0, 410.0])];
    r.zoomed = vec![("SPALDING", [876.0, 382.0, 930.0, 408.0], 0.95)];
    r.leads = Vec::new();
    // The first reading is weak: the reader reports it at 0.9, so make the evidence weak by
    // reading it through a reader whose confidence is low.
    let weak = WeakReader(r);
    let (mut c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("PANDA", &["r1"])),
        Ok(answer("SPALDING", &["r2"])),
    ]);
    c.source = AnswerSource::Evidence;
    let o = Orchestrator::builder()
        .controller(c)
        .agent(weak)
        .build()
        .unwrap();
    let mut s = o.session(photo(), std::path::Path::new("nba.png"));
    let a = common::rt()
        .block_on(s.ask("Which brand is on the panel?", AskOptions::default()))
        .unwrap();
    assert_eq!(a.answer, "SPALDING");
    assert_eq!(a.steps, 3);
    let convs = seen.lock().unwrap();
    // Asked again, the controller is offered the closer reading, not the superseded one.
    let offered: Vec<&str> = convs[2].regions.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(offered, ["SPALDING"]);
    assert_eq!(
        s.evidence().get("r1").unwrap().superseded_by.as_deref(),
        Some("r2")
    );
    assert!(zoom_records(&s)[0].why.contains("PANDA"));
}

/// A reader whose whole-image lines are read with confidence 0.6.
struct WeakReader(Reader);

impl Agent for WeakReader {
    type Args = serde_json::Value;
    type Output = Vec<(String, [f32; 4], f32)>;

    fn name(&self) -> &str {
        self.0.name
    }

    fn definition(&self) -> ToolDefinition {
        Agent::definition(&self.0)
    }

    fn findings(&self, output: &Self::Output) -> Vec<Finding> {
        Agent::findings(&self.0, output)
    }

    fn zoom_arguments(&self, region: &BBox) -> Option<serde_json::Value> {
        Agent::zoom_arguments(&self.0, region)
    }

    async fn run(&self, image: &Image, args: Self::Args) -> Result<Self::Output, AgentError> {
        let zoomed = args.get("zoom").is_some();
        let mut out = Agent::run(&self.0, image, args).await?;
        if zoomed {
            // Magnified, the word is read whole: only the closer readings come back.
            let closer: Vec<&str> = self.0.zoomed.iter().map(|z| z.0).collect();
            out.retain(|l| closer.contains(&l.0.as_str()));
        } else {
            for l in &mut out {
                l.2 = 0.6;
            }
        }
        Ok(out)
    }
}

#[test]
fn a_question_about_a_region_is_read_there_and_answered_only_from_inside_it() {
    let mut r = photo_reader();
    r.lines = vec![
        ("789417-W", [100.0, 100.0, 300.0, 130.0]),
        ("TOTAL 9.00", [1200.0, 1000.0, 1500.0, 1030.0]),
    ];
    r.zoomed = vec![("SPECIAL 12", [1250.0, 1100.0, 1400.0, 1130.0], 0.95)];
    r.leads = Vec::new();
    let calls = r.calls.clone();
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("789417-W", &["r1"])),
        Ok(answer("SPECIAL 12", &["r3"])),
    ]);
    let o = orch(c, vec![r]);
    let mut s = o.session(photo(), std::path::Path::new("p.jpg"));
    let rt = common::rt();
    // A first question reads the whole image.
    rt.block_on(s.ask("What is written at the top?", AskOptions::default()))
        .unwrap();
    let region = BBox::new(1200.0, 1050.0, 1600.0, 1200.0);
    let opts = AskOptions {
        region: Some(region),
        ..Default::default()
    };
    let a = rt
        .block_on(s.ask("What number is written here?", opts))
        .unwrap();
    assert_eq!(a.answer, "SPECIAL 12");
    // Nothing had been read inside the region: it was read, magnified, before the
    // controller was asked...
    let calls = calls.lock().unwrap();
    let last = calls.last().unwrap();
    assert_eq!(last["zoom"], "auto");
    assert_eq!(
        last["region"],
        serde_json::json!([1200.0, 1050.0, 1600.0, 1200.0])
    );
    // ...and the controller was offered only what lies inside it.
    let convs = seen.lock().unwrap();
    let offered: Vec<&str> = convs
        .last()
        .unwrap()
        .regions
        .iter()
        .map(|r| r.text.as_str())
        .collect();
    assert_eq!(offered, ["SPECIAL 12"]);
}

/// A closed-vocabulary detector that knows clocks and cars: two clocks, one car.
#[derive(Clone)]
struct Finder {
    calls: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Agent for Finder {
    type Args = serde_json::Value;
    type Output = Vec<(String, [f32; 4])>;

    fn name(&self) -> &str {
        "detect"
    }

    fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: "detect".into(),
            description: "finds clocks and cars".into(),
            parameters: serde_json::json!({"type": "object"}),
        }
    }

    fn capabilities(&self) -> Vec<p2g::agents::Capability> {
        vec![p2g::agents::Capability::Objects]
    }

    fn knows(&self, phrase: &str) -> Option<bool> {
        Some(["clock", "car", "player", "ball"].contains(&phrase))
    }

    fn findings(&self, output: &Self::Output) -> Vec<Finding> {
        output
            .iter()
            .map(|(t, b)| Finding {
                bbox: BBox::from(*b),
                text: t.clone(),
                kind: FindingKind::Object,
                score: 0.8,
                quad: None,
            })
            .collect()
    }

    async fn run(&self, _image: &Image, args: Self::Args) -> Result<Self::Output, AgentError> {
        self.calls.lock().unwrap().push(args.clone());
        let wants = |w: &str| args["objects"].as_array().unwrap().iter().any(|o| o == w);
        let mut out = Vec::new();
        if wants("clock") {
            out.push(("clock".to_string(), [100.0, 100.0, 400.0, 400.0]));
            out.push(("clock".to_string(), [1400.0, 100.0, 1700.0, 400.0]));
        }
        if wants("car") {
            out.push(("car".to_string(), [600.0, 900.0, 1000.0, 1100.0]));
        }
        if wants("player") {
            out.push(("person".to_string(), [100.0, 600.0, 300.0, 1200.0]));
            out.push(("person".to_string(), [1300.0, 600.0, 1500.0, 1200.0]));
        }
        if wants("ball") {
            out.push(("sports ball".to_string(), [1380.0, 560.0, 1420.0, 600.0]));
        }
        Ok(out)
    }
}

/// A photo with a word on each clock face and one on a poster between them.
fn clock_reader() -> Reader {
    Reader {
        name: "reader",
        lines: vec![
            ("ALTITUDE", [180.0, 200.0, 320.0, 230.0]),
            ("ENJOY YOUR STAY", [700.0, 200.0, 1000.0, 240.0]),
            ("QUARTZ", [1480.0, 200.0, 1620.0, 230.0]),
        ],
        fail: false,
        delay: Duration::ZERO,
        zoomed: vec![("ALTITUDE", [180.0, 200.0, 320.0, 230.0], 0.95)],
        leads: Vec::new(),
        calls: Arc::new(Mutex::new(Vec::new())),
    }
}

fn offered_texts(seen: &Arc<Mutex<Vec<Conversation>>>) -> Vec<String> {
    let convs = seen.lock().unwrap();
    convs
        .last()
        .unwrap()
        .regions
        .iter()
        .map(|r| r.text.clone())
        .collect()
}

#[test]
fn the_object_a_question_names_is_found_read_and_answered_from() {
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("ALTITUDE", &["r1"])),
    ]);
    let finder = Finder {
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let o = Orchestrator::builder()
        .controller(c)
        .max_steps(5)
        .agent(clock_reader())
        .loop_agent_arc(Arc::new(finder.clone()))
        .build()
        .unwrap();
    let mut s = o.session(photo(), std::path::Path::new("desk.jpg"));
    let rt = common::rt();
    rt.block_on(s.ask(
        "What word is printed on the left clock?",
        AskOptions::default(),
    ))
    .unwrap();
    // The detector was asked for the clock (the loop's call, not the controller's: it is
    // not among the controller's tools)...
    assert_eq!(
        finder.calls.lock().unwrap()[0],
        serde_json::json!({"objects": ["clock"]})
    );
    let convs = seen.lock().unwrap().clone();
    assert!(convs
        .iter()
        .all(|c| c.tools.iter().all(|t| t.name != "detect")));
    drop(convs);
    // ...the left clock was read magnified, and the answer is chosen among its text only.
    let zooms = zoom_records(&s);
    assert_eq!(zooms.len(), 1, "{zooms:?}");
    assert!(zooms[0].window.x2 < 700.0, "{:?}", zooms[0].window);
    assert_eq!(offered_texts(&seen), ["ALTITUDE"]);
}

#[test]
fn the_thing_asked_for_or_too_many_objects_narrow_nothing() {
    // "which car" asks for a car: no detection narrows the evidence; "the clock" with two
    // clocks and no position word keeps both.
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("QUARTZ", &["r3"])),
    ]);
    let finder = Finder {
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let o = Orchestrator::builder()
        .controller(c)
        .max_steps(5)
        .agent(clock_reader())
        .loop_agent_arc(Arc::new(finder.clone()))
        .build()
        .unwrap();
    let mut s = o.session(photo(), std::path::Path::new("desk.jpg"));
    let rt = common::rt();
    rt.block_on(s.ask("Which car is parked here?", AskOptions::default()))
        .unwrap();
    assert!(finder.calls.lock().unwrap().is_empty());
    assert_eq!(offered_texts(&seen).len(), 3);
    rt.block_on(s.ask("What is written on the clock?", AskOptions::default()))
        .unwrap();
    let mut texts = offered_texts(&seen);
    texts.sort();
    assert_eq!(texts, ["ALTITUDE", "QUARTZ"]);
}

#[test]
fn the_player_holding_the_ball_is_the_one_whose_box_holds_it() {
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("8", &["r2"])),
    ]);
    let finder = Finder {
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let reader = Reader {
        name: "reader",
        lines: vec![
            ("23", [180.0, 700.0, 220.0, 740.0]),
            ("8", [1390.0, 700.0, 1420.0, 740.0]),
            ("6:23", [900.0, 50.0, 980.0, 90.0]),
        ],
        fail: false,
        delay: Duration::ZERO,
        zoomed: Vec::new(),
        leads: Vec::new(),
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let o = Orchestrator::builder()
        .controller(c)
        .max_steps(5)
        .agent(reader)
        .loop_agent_arc(Arc::new(finder.clone()))
        .build()
        .unwrap();
    let mut s = o.session(photo(), std::path::Path::new("court.jpg"));
    common::rt()
        .block_on(s.ask(
            "What number is on the player holding the ball?",
            AskOptions::default(),
        ))
        .unwrap();
    // The players and the ball were looked for apart, and the player whose box holds the
    // ball is where the answer comes from.
    let calls = finder.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&serde_json::json!({"objects": ["player"]})),
        "{calls:?}"
    );
    assert!(
        calls.contains(&serde_json::json!({"objects": ["ball"]})),
        "{calls:?}"
    );
    assert_eq!(offered_texts(&seen), ["8"]);
}

/// A wall (grey) with three painted plates, white letters on each: blue, orange and green.
fn plates() -> (Image, Reader) {
    let mut img = image::RgbImage::from_pixel(900, 300, image::Rgb([120, 120, 120]));
    let plates: [(u32, [u8; 3]); 3] = [
        (50, [30, 60, 170]),
        (350, [235, 110, 30]),
        (650, [40, 150, 60]),
    ];
    for (x0, plate) in plates {
        for y in 80..200 {
            for x in x0..x0 + 200 {
                // White strokes on the plate: every fourth column of the lettering band.
                let ink = (110..170).contains(&y) && (x0 + 20..x0 + 180).contains(&x) && x % 4 == 0;
                img.put_pixel(x, y, image::Rgb(if ink { [250, 250, 250] } else { plate }));
            }
        }
    }
    let reader = Reader {
        name: "reader",
        lines: vec![
            ("NORTHWIND", [70.0, 105.0, 230.0, 175.0]),
            ("EASTGATE", [370.0, 105.0, 530.0, 175.0]),
            ("GREENFIELD", [670.0, 105.0, 830.0, 175.0]),
        ],
        fail: false,
        delay: Duration::ZERO,
        zoomed: Vec::new(),
        leads: Vec::new(),
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    (Image::from_rgb(img), reader)
}

#[test]
fn colour_words_narrow_the_answer_to_text_of_those_colours() {
    let (img, reader) = plates();
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("NORTHWIND", &["r1"])),
        Ok(answer("EASTGATE", &["r2"])),
        Ok(answer("GREENFIELD", &["r3"])),
        Ok(answer("GREENFIELD", &["r3"])),
    ]);
    let o = Orchestrator::builder()
        .controller(c)
        .max_steps(5)
        .agent(reader)
        .loop_agent_arc(Arc::new(
            p2g::agents::colour::ColourAgent::embedded().unwrap(),
        ))
        .build()
        .unwrap();
    let mut s = o.session(img, std::path::Path::new("wall.jpg"));
    let rt = common::rt();
    rt.block_on(s.ask(
        "What is written in white on the blue panel?",
        AskOptions::default(),
    ))
    .unwrap();
    assert_eq!(offered_texts(&seen), ["NORTHWIND"]);
    let narrowed: Vec<&TraceEvent> = s
        .trace()
        .iter()
        .filter(|e| matches!(e, TraceEvent::Narrow { .. }))
        .collect();
    assert_eq!(narrowed.len(), 1, "{narrowed:?}");
    rt.block_on(s.ask("Which name is on the orange sign?", AskOptions::default()))
        .unwrap();
    assert_eq!(offered_texts(&seen), ["EASTGATE"]);
    // No colour word, or one that matches no text: nothing is narrowed.
    rt.block_on(s.ask("What is written on the wall?", AskOptions::default()))
        .unwrap();
    assert_eq!(offered_texts(&seen).len(), 3);
    rt.block_on(s.ask("What is on the purple sign?", AskOptions::default()))
        .unwrap();
    assert_eq!(offered_texts(&seen).len(), 3);
}

#[test]
fn a_colour_word_chooses_among_the_objects_a_question_names() {
    // Two clocks and no position word: "the red clock" is the one whose pixels are red.
    let mut img = image::RgbImage::from_pixel(2000, 1500, image::Rgb([200, 200, 200]));
    for y in 120..380 {
        for x in 1420..1680 {
            img.put_pixel(x, y, image::Rgb([200, 30, 40]));
        }
    }
    let (c, seen) = Scripted::new(vec![
        Ok(call("reader", serde_json::json!({}))),
        Ok(answer("QUARTZ", &["r3"])),
    ]);
    let finder = Finder {
        calls: Arc::new(Mutex::new(Vec::new())),
    };
    let o = Orchestrator::builder()
        .controller(c)
        .max_steps(5)
        .agent(clock_reader())
        .loop_agent_arc(Arc::new(finder))
        .loop_agent_arc(Arc::new(
            p2g::agents::colour::ColourAgent::embedded().unwrap(),
        ))
        .build()
        .unwrap();
    let mut s = o.session(Image::from_rgb(img), std::path::Path::new("desk.jpg"));
    let rt = common::rt();
    rt.block_on(s.ask(
        "What word is printed on the red clock?",
        AskOptions::default(),
    ))
    .unwrap();
    assert_eq!(offered_texts(&seen), ["QUARTZ"]);
    // The colour was the clock's: the text was not narrowed by it.
    assert!(!s
        .trace()
        .iter()
        .any(|e| matches!(e, TraceEvent::Narrow { .. })));
}
