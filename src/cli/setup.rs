//! What `ask`, `repl` and `eval` share: building the orchestrator from command-line options.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use p2g::agents::load_available;
use p2g::controller::embedded::EmbeddedConfig;
use p2g::controller::llm::prompt_cache::PromptCache;
use p2g::controller::prompt::Prompts;
use p2g::controller::{ControllerChoice, EmbeddedController};
use p2g::models::Store;
use p2g::orchestrator::{History, Orchestrator, ZoomBudget};

use super::ModelArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControllerArg {
    /// Qwen2.5-Coder-0.5B-Instruct (default).
    Qwen,
    /// SmolLM2-135M-Instruct: smaller and faster, much weaker.
    Smollm2,
    /// A vision-language pair that sees the image and the agents' crops: --controller-model
    /// LLM.gguf --mmproj MMPROJ.gguf, or the folder added with `p2g models add llava DIR`.
    Llava,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryArg {
    Full,
    Evidence,
}

/// Options of the grounding loop.
#[derive(clap::Args, Debug, Clone)]
pub struct LoopArgs {
    /// The embedded controller model.
    #[arg(long, value_enum, default_value = "qwen")]
    pub controller: ControllerArg,

    /// A GGUF chat model (qwen2 or llama architecture) to use as the controller instead; with
    /// `--controller llava`, the language model of the pair.
    #[arg(long, value_name = "FILE.gguf")]
    pub controller_model: Option<PathBuf>,

    /// The llama.cpp mmproj file (vision tower + projector) of a `--controller llava` pair.
    #[arg(long, value_name = "FILE.gguf")]
    pub mmproj: Option<PathBuf>,

    /// With `--controller llava` on an MLP-only mmproj: the side k of the parameter-free
    /// resampler (images it resamples take k x k tokens).
    #[arg(long, value_name = "K", default_value_t = p2g::controller::llava::DEFAULT_POOL)]
    pub pool: usize,

    /// Prompt templates overriding the built-in ones (see prompts/README.md); also P2G_PROMPTS.
    #[arg(long, value_name = "DIR", env = "P2G_PROMPTS")]
    pub prompts: Option<PathBuf>,

    /// Offer the controller no agents (it answers from the question alone).
    #[arg(long)]
    pub no_agents: bool,

    /// Also offer the detector, colour and layout agents to the controller as tools. By
    /// default the loop runs them on its own for the objects, colours and page blocks a
    /// question names (a small controller misuses them).
    #[arg(long, visible_alias = "offer-agents")]
    pub offer_detect: bool,

    /// Controller decisions per question; the last may only answer.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub max_steps: usize,

    /// Stop an agent call after this many seconds (the controller is told).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub agent_timeout: u64,

    /// Let the controller write tool calls freely (parsed, repaired once) instead of building
    /// them under constraints.
    #[arg(long)]
    pub unconstrained: bool,

    /// What earlier questions leave in the controller's view: `full` (a conversation) or
    /// `evidence` (only what was read; questions are independent). Default: full, except for
    /// `eval` (evidence).
    #[arg(long, value_enum)]
    pub history: Option<HistoryArg>,

    /// Run the controller's system prompt in every process instead of saving its KV cache
    /// (~13 MB per image, under the model cache's `prompt-cache/`) for the next one.
    #[arg(long)]
    pub no_prompt_cache: bool,

    /// Zoomed reads the loop may make on its own per question, when the evidence does not
    /// answer or an answer's reading is weak (0: never).
    #[arg(long, value_name = "N", default_value_t = ZoomBudget::default().max_zooms)]
    pub max_zooms: usize,

    /// Seconds of zoomed reads per question; no zoom starts after them.
    #[arg(long, value_name = "SECS", default_value_t = ZoomBudget::default().max_seconds)]
    pub zoom_seconds: f64,

    /// After this many seconds on a question the controller must answer with what it has (no
    /// more calls or zooms).
    #[arg(long, value_name = "SECS", default_value_t = 40)]
    pub answer_by: u64,

    /// Refuse images with more pixels than this (protects against decompression bombs).
    #[arg(long, value_name = "N", default_value_t = p2g::vision::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,

    #[command(flatten)]
    pub models: ModelArgs,
}

pub fn build(args: &LoopArgs, default_history: History) -> Result<Orchestrator> {
    let store = Store::open_default()?;
    let source = args.models.source(&store);
    let prompts = match &args.prompts {
        Some(dir) => Prompts::with_overrides(dir)?,
        None => Prompts::embedded()?,
    };
    let mut cfg = EmbeddedConfig::new(prompts);
    cfg.constrained = !args.unconstrained;
    if !args.no_prompt_cache {
        cfg.prompt_cache = Some(PromptCache::new(store.root().join("prompt-cache")));
    }
    let choice = match args.controller {
        ControllerArg::Qwen => ControllerChoice::Qwen,
        ControllerArg::Smollm2 => ControllerChoice::Smollm2,
        ControllerArg::Llava => ControllerChoice::Qwen,
    };
    if args.mmproj.is_some() && args.controller != ControllerArg::Llava {
        anyhow::bail!("--mmproj is for --controller llava (a vision-language pair)");
    }
    let controller = match (&args.controller_model, args.controller) {
        (_, ControllerArg::Llava) => {
            let (llm, mmproj) = match (&args.controller_model, &args.mmproj) {
                (Some(l), Some(m)) => (l.clone(), m.clone()),
                (None, None) => (
                    source.file("llava", "model.gguf")?,
                    source.file("llava", "mmproj.gguf")?,
                ),
                _ => anyhow::bail!(
                    "--controller llava needs both --controller-model LLM.gguf and --mmproj \
                     MMPROJ.gguf (or neither, to use the pair added with `p2g models add llava \
                     DIR`; README, \"Vision-language models\")"
                ),
            };
            let vision = p2g::controller::llava::VisionConfig { pool: args.pool };
            p2g::controller::llava::load(&llm, &mmproj, cfg, vision)
        }
        (Some(path), _) => {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "custom".into());
            EmbeddedController::from_file(path, &name, cfg)
        }
        (None, _) => EmbeddedController::load(choice, &source, cfg),
    }
    .context("cannot load the controller model")?;
    let mut b = Orchestrator::builder()
        .controller(controller)
        .max_steps(args.max_steps)
        .agent_timeout(Duration::from_secs(args.agent_timeout.max(1)))
        .answer_by(Duration::from_secs(args.answer_by.max(1)))
        .zoom_budget(ZoomBudget {
            max_zooms: args.max_zooms,
            max_seconds: args.zoom_seconds.max(0.0),
            ..ZoomBudget::default()
        })
        .history(match args.history {
            Some(HistoryArg::Full) => History::Full,
            Some(HistoryArg::Evidence) => History::Evidence,
            None => default_history,
        });
    if !args.no_agents {
        for agent in load_available(&source, &store, args.models.session())
            .context("cannot load the agents")?
        {
            // The detector and the colour agent run on the loop's own policies (the objects
            // a question names, their colour); the embedded controller, offered the
            // detector, calls it with made-up arguments where it should read
            // (`--offer-detect` offers them anyway). The layout agent likewise: the loop
            // asks it for the blocks a question about a document names.
            let loop_only =
                ["detect", "colour", "layout"].contains(&agent.name()) && !args.offer_detect;
            b = if loop_only {
                b.loop_agent_arc(agent)
            } else {
                b.agent_arc(agent)
            };
        }
    }
    Ok(b.build()?)
}

/// The async runtime the commands drive the loop on (agents and the controller run their
/// inference on its blocking pool).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
