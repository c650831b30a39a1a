//! `p2g repl`: questions about one image at a time, with line editing and history. Evidence
//! read for one question is reused by the next; Ctrl-C cancels the question being answered,
//! not the session.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustyline::error::ReadlineError;

use p2g::controller::StepContext;
use p2g::orchestrator::{AskOptions, Orchestrator, Session};
use p2g::vision::{BBox, Image, LoadOptions};

use super::setup::{build, LoopArgs};

#[derive(clap::Args, Debug)]
pub struct ReplCmd {
    /// The image to start with (or load one with `:image PATH`).
    image: Option<PathBuf>,

    #[command(flatten)]
    args: LoopArgs,
}

const HELP: &str = "\
Type a question about the image, or a command:
  :image PATH             load another image (a new conversation)
  :region X1,Y1,X2,Y2     ask the next questions about this region (:region off to stop)
  :trace                  show the steps taken so far
  :draw OUT.png           draw the evidence and cited regions on the image
  :agents                 list the tools the controller may call
  :help                   this text
  :quit                   leave (also Ctrl-D)
Ctrl-C cancels the question being answered.";

/// Set by SIGINT while a question runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_sigint() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

fn history_path() -> PathBuf {
    p2g::models::default_cache_root().join("repl_history")
}

fn open_image<'o>(
    orch: &'o Orchestrator,
    path: &std::path::Path,
    max_pixels: u64,
) -> Result<Session<'o>> {
    let image = Image::open(path, &LoadOptions { max_pixels })?;
    println!(
        "{}: {}x{} pixels",
        path.display(),
        image.width(),
        image.height()
    );
    Ok(orch.session(image, path))
}

pub fn run(cmd: ReplCmd) -> Result<ExitCode> {
    let orch = build(&cmd.args, p2g::orchestrator::History::Full)?;
    let rt = super::setup::runtime()?;
    let mut editor = rustyline::DefaultEditor::new().context("cannot start line editing")?;
    let history = history_path();
    let _ = editor.load_history(&history);
    let mut session: Option<Session<'_>> = match &cmd.image {
        Some(p) => Some(open_image(&orch, p, cmd.args.max_pixels)?),
        None => None,
    };
    let mut region: Option<BBox> = None;
    println!(
        "p2g repl — controller {}, tools: {}. :help for commands.",
        orch.controller().name(),
        orch.agents()
            .map(|a| a.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    loop {
        let line = match editor.readline("p2g> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        let (cmd_word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match cmd_word {
            ":quit" | ":q" | ":exit" => break,
            ":help" | ":h" => println!("{HELP}"),
            ":agents" => {
                for a in orch.agents() {
                    let d = a.definition();
                    println!("{}: {}", d.name, d.description);
                }
            }
            ":image" => match open_image(&orch, &PathBuf::from(rest), cmd.args.max_pixels) {
                Ok(s) => {
                    session = Some(s);
                    region = None;
                }
                Err(e) => println!("error: {e:#}"),
            },
            ":region" => {
                if rest == "off" || rest.is_empty() {
                    region = None;
                    println!("questions are about the whole image");
                } else {
                    match super::ocr::parse_bbox(rest) {
                        Ok(b) => {
                            region = Some(b);
                            println!("questions are about [{rest}] until :region off");
                        }
                        Err(e) => println!("error: {e}"),
                    }
                }
            }
            ":trace" => match &session {
                Some(s) => print!("{}", p2g::trace::show(s.trace())),
                None => println!("no image yet: :image PATH"),
            },
            ":draw" => match &session {
                Some(s) if !rest.is_empty() => {
                    let img = PathBuf::from(s.image_path());
                    match p2g::trace::draw(s.trace(), Some(&img), &PathBuf::from(rest)) {
                        Ok(n) => println!("wrote {rest} ({n} cited regions)"),
                        Err(e) => println!("error: {e}"),
                    }
                }
                Some(_) => println!("usage: :draw OUT.png"),
                None => println!("no image yet: :image PATH"),
            },
            c if c.starts_with(':') => println!("unknown command {c}; :help lists them"),
            _ => {
                let Some(s) = session.as_mut() else {
                    println!("no image yet: :image PATH");
                    continue;
                };
                ask(&rt, s, line, region);
            }
        }
    }
    let _ = editor.save_history(&history);
    Ok(ExitCode::SUCCESS)
}

fn ask(rt: &tokio::runtime::Runtime, s: &mut Session<'_>, question: &str, region: Option<BBox>) {
    let cancel = Arc::new(AtomicBool::new(false));
    INTERRUPTED.store(false, Ordering::SeqCst);
    install_sigint();
    let streamed = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = streamed.clone();
    let ctx = StepContext {
        on_text: Some(Arc::new(move |chunk: &str| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk.as_bytes());
            let _ = out.flush();
            if let Ok(mut s) = sink.lock() {
                s.push_str(chunk);
            }
        })),
        cancel: cancel.clone(),
    };
    let watch = cancel.clone();
    let result = rt.block_on(async {
        let watcher = tokio::spawn(async move {
            loop {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    watch.store(true, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        let r = s.ask(question, AskOptions { region, ctx }).await;
        watcher.abort();
        r
    });
    // Back to the default: Ctrl-C at the prompt is rustyline's.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    let shown = streamed.lock().map(|s| s.clone()).unwrap_or_default();
    if !shown.is_empty() {
        println!();
    }
    match result {
        Ok(a) => {
            if shown.trim() != a.answer {
                println!("{}", a.answer);
            }
            for g in &a.grounding {
                let b = g.bbox.rounded();
                println!(
                    "  {} [{:.0},{:.0},{:.0},{:.0}] {:?}",
                    g.region, b.x1, b.y1, b.x2, b.y2, g.phrase
                );
            }
            println!(
                "  ({} steps, {:.1} s)",
                a.steps,
                a.elapsed_ms as f64 / 1000.0
            );
        }
        Err(p2g::orchestrator::OrchestratorError::Cancelled) => println!("(cancelled)"),
        Err(e) => println!("error: {e}"),
    }
}
