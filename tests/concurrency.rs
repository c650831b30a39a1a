//! One orchestrator, many sessions at once (what `p2g serve` does): eight questions asked in
//! parallel give the answers they give one by one, memory stays bounded, and cancelling one
//! question leaves the others' answers untouched.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use p2g::controller::EmbeddedController;
use p2g::models::{ModelSource, Store};
use p2g::orchestrator::{AskOptions, Orchestrator, OrchestratorError, ZoomBudget};
use p2g::vision::{Image, LoadOptions};

/// The default controller and the real agents, without zooms (the test is about sessions
/// not disturbing one another; zooms only make it slower).
///
/// Answers are compared whole, so this relies on the controller deciding the same from the
/// same conversation whatever its KV cache held before. It does, for the default controller's
/// decisions (spans ranked by likelihood); SmolLM2's free generation does not always: the
/// cache's reused prefix decides which tokens were computed by the one-token decode kernel and
/// which by the batched prefill, and their last-bit differences can flip a weak model's next
/// token.
fn orchestrator() -> Orchestrator {
    let store = Store::open_default().unwrap();
    let source = ModelSource::Store(store.clone());
    let controller = EmbeddedController::default_model(&store).unwrap();
    let mut b = Orchestrator::builder()
        .controller(controller)
        .zoom_budget(ZoomBudget {
            max_zooms: 0,
            ..ZoomBudget::default()
        });
    for a in p2g::agents::load_available(&source, &store, Default::default()).unwrap() {
        // As the CLI: the detector, colour and layout agents run on the loop's own policies.
        b = if a.name() == "ocr" {
            b.agent_arc(a)
        } else {
            b.loop_agent_arc(a)
        };
    }
    b.build().unwrap()
}

/// An answer, or the error the small controller may end in: either must be the same however
/// the questions are scheduled.
fn outcome(r: Result<p2g::orchestrator::Answer, OrchestratorError>) -> String {
    match r {
        Ok(a) => format!("answer {:?} citing {:?}", a.answer, a.grounding),
        Err(e) => format!("error {e}"),
    }
}

/// Peak and current resident memory of this process, MB.
fn memory_mb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn eight_parallel_sessions_answer_as_one_by_one_and_a_cancel_stays_local() {
    let orch = orchestrator();
    let dir = common::eval_dir("sroie-dev").join("img");
    let images: Vec<(Image, std::path::PathBuf)> = ["000", "001", "002", "003"]
        .iter()
        .map(|n| {
            let p = dir.join(format!("{n}.jpg"));
            (Image::open(&p, &LoadOptions::default()).unwrap(), p)
        })
        .collect();
    let questions = ["What is the total amount?", "What is the date?"];
    let jobs: Vec<(usize, &str)> = (0..images.len())
        .flat_map(|i| questions.iter().map(move |q| (i, *q)))
        .collect();
    assert_eq!(jobs.len(), 8);
    let rt = common::rt();

    let one_by_one: Vec<String> = jobs
        .iter()
        .map(|&(i, q)| {
            let (img, path) = &images[i];
            let mut s = orch.session(img.clone(), path);
            outcome(rt.block_on(s.ask(q, AskOptions::default())))
        })
        .collect();
    let (_, rss_sequential) = memory_mb();

    // The same questions at once, each in its own session on its own thread (as the server's
    // worker threads run them), plus a ninth that is cancelled while the others run.
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (answers, cancelled) = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(i, q)| {
                let orch = &orch;
                let (img, path) = &images[i];
                scope.spawn(move || {
                    let mut s = orch.session(img.clone(), path);
                    common::rt().block_on(s.ask(q, AskOptions::default()))
                })
            })
            .collect();
        let doomed = {
            let orch = &orch;
            let (img, path) = &images[0];
            let mut opts = AskOptions::default();
            opts.ctx.cancel = cancel.clone();
            scope.spawn(move || {
                let mut s = orch.session(img.clone(), path);
                common::rt()
                    .block_on(s.ask("What is the address?", opts))
                    .map(|a| a.answer)
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::SeqCst);
        let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (answers, doomed.join().unwrap())
    });
    let answers: Vec<String> = answers.into_iter().map(outcome).collect();
    assert_eq!(
        answers, one_by_one,
        "parallel answers differ from one-by-one ones"
    );
    assert!(
        matches!(cancelled, Err(OrchestratorError::Cancelled)),
        "the cancelled question: {cancelled:?}"
    );
    let (peak, rss_parallel) = memory_mb();
    eprintln!(
        "memory: {rss_sequential} MB after one by one, {rss_parallel} MB after eight at once, \
         peak {peak} MB"
    );
    // Bounded: eight sessions at once hold their images and evidence, not copies of the
    // models (one receipt's reading peaks near 320 MB of ONNX Runtime memory).
    assert!(peak < 4096, "peak {peak} MB");
    assert!(
        rss_parallel < rss_sequential + 1536,
        "{rss_parallel} MB after vs {rss_sequential} MB before"
    );
}
