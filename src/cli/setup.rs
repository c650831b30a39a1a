//! What `ask`, `repl` and `eval` share: building the orchestrator from command-line options.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use p2g::agents::load_available;
use p2g::controller::embedded::EmbeddedConfig;
use p2g::controller::llm::prompt_cache::PromptCache;
use p2g::controller::openai::images::ImageBudget;
use p2g::controller::openai::manifest::Manifest;
use p2g::controller::openai::{OpenAiConfig, OpenAiController};
use p2g::controller::prompt::Prompts;
use p2g::controller::{Controller, ControllerChoice, EmbeddedController};
use p2g::models::Store;
use p2g::orchestrator::{History, Orchestrator, ZoomBudget};
use p2g::vision::mosaic::MarkStyle;

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
    /// A model behind an OpenAI-compatible server (llama.cpp, Ollama, vLLM, hosted APIs):
    /// --base-url URL --model ID; the key from P2G_API_KEY or OPENAI_API_KEY.
    Openai,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MarkArg {
    /// The crops tiled into one image, each cell labelled with its region id.
    Mosaic,
    /// Numbered boxes drawn on the whole image.
    Marks,
}

/// Options of `--controller openai`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Remote controller (--controller openai)")]
pub struct RemoteArgs {
    /// The server's API root, e.g. http://127.0.0.1:8080/v1 (llama.cpp), http://127.0.0.1:11434/v1
    /// (Ollama), http://127.0.0.1:8000/v1 (vLLM).
    #[arg(long, value_name = "URL", env = "P2G_BASE_URL")]
    pub base_url: Option<String>,

    /// The model id the server serves (`GET /v1/models` lists them).
    #[arg(long, value_name = "ID", env = "P2G_MODEL")]
    pub model: Option<String>,

    /// How the model writes boxes (default: from its manifest in controllers/): pixels,
    /// shikra, ferret, minigpt-v2, kosmos-2, qwen-vl, qwen2.5-vl, florence-2, region-ids.
    #[arg(long, value_name = "NAME")]
    pub box_convention: Option<p2g::answer::boxes::BoxConvention>,

    /// A controller manifest (TOML, as in controllers/) instead of the one the model id picks.
    #[arg(long, value_name = "FILE.toml")]
    pub controller_manifest: Option<PathBuf>,

    /// Send images (the whole image and crops) to the model; default: its manifest's choice
    /// (off for text models, whose servers refuse image parts).
    #[arg(long, value_enum, value_name = "on|off")]
    pub send_images: Option<OnOff>,

    /// Crops sent as separate images at native resolution; more go into one Set-of-Mark image.
    #[arg(long, value_name = "N", default_value_t = p2g::vision::visual_tokens::FEW_CROPS)]
    pub separate_crops: usize,

    /// Longest side in pixels of the Set-of-Mark image (its fixed budget).
    #[arg(long, value_name = "PX", default_value_t = 1024)]
    pub mosaic_side: u32,

    /// How the Set-of-Mark image is made.
    #[arg(long, value_enum, default_value = "mosaic")]
    pub mark_style: MarkArg,

    /// Shortest side in pixels a crop sent on its own is upscaled to.
    #[arg(long, value_name = "PX", default_value_t = 128)]
    pub crop_min_side: u32,

    /// Longest wait in seconds for the server's next bytes.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub read_timeout: u64,

    /// Retries after 429, 5xx or a refused connection (waiting Retry-After, or 0.5 s doubling).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_retries: u32,

    /// Wait for whole replies instead of streaming them.
    #[arg(long)]
    pub no_stream: bool,

    /// Token budget of one reply.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_tokens: u32,
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
    pub remote: RemoteArgs,

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
        ControllerArg::Llava | ControllerArg::Openai => ControllerChoice::Qwen,
    };
    if args.mmproj.is_some() && args.controller != ControllerArg::Llava {
        anyhow::bail!("--mmproj is for --controller llava (a vision-language pair)");
    }
    let r = &args.remote;
    if args.controller != ControllerArg::Openai
        && (r.box_convention.is_some()
            || r.controller_manifest.is_some()
            || r.send_images.is_some())
    {
        anyhow::bail!(
            "--box-convention, --controller-manifest and --send-images are for --controller openai \
             (a model behind a server)"
        );
    }
    // The agents' models load on a second thread while the controller's does (two cores;
    // the first answer of a one-shot `p2g ask` waits for both).
    let agents = || -> Result<Vec<Arc<dyn p2g::agents::DynAgent>>> {
        if args.no_agents {
            return Ok(Vec::new());
        }
        load_available(&source, &store, args.models.session()).context("cannot load the agents")
    };
    let (controller, agents) = std::thread::scope(|scope| -> Result<_> {
        let agents = scope.spawn(agents);
        let controller: Arc<dyn Controller> = match (&args.controller_model, args.controller) {
            // Its errors name the flag to fix; a context line would hide them (the binary prints
            // the outermost message).
            (_, ControllerArg::Openai) => Arc::new(remote(&args.remote, cfg.prompts)?),
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
                Arc::new(
                    p2g::controller::llava::load(&llm, &mmproj, cfg, vision)
                        .context("cannot load the controller model")?,
                )
            }
            (Some(path), _) => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "custom".into());
                Arc::new(
                    EmbeddedController::from_file(path, &name, cfg)
                        .context("cannot load the controller model")?,
                )
            }
            (None, _) => Arc::new(
                EmbeddedController::load(choice, &source, cfg)
                    .context("cannot load the controller model")?,
            ),
        };
        let agents = agents
            .join()
            .map_err(|_| anyhow::anyhow!("loading the agents failed unexpectedly"))?;
        Ok((controller, agents))
    })?;
    let agents = agents?;
    let mut b = Orchestrator::builder()
        .controller_arc(controller)
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
    for agent in agents {
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
    Ok(b.build()?)
}

/// The controller behind an OpenAI-compatible server.
fn remote(r: &RemoteArgs, prompts: Prompts) -> Result<OpenAiController> {
    let (Some(base_url), Some(model)) = (&r.base_url, &r.model) else {
        anyhow::bail!(
            "--controller openai needs --base-url URL (e.g. http://127.0.0.1:8080/v1) and \
             --model ID (the server's `GET /v1/models` lists them); README, \"Remote controllers\""
        );
    };
    let mut cfg = OpenAiConfig::new(base_url, model, prompts)?;
    if let Some(path) = &r.controller_manifest {
        cfg.manifest = Manifest::from_file(path)?;
    }
    cfg.convention = r.box_convention;
    cfg.images = r.send_images.map(|i| i == OnOff::On);
    cfg.client.api_key = ["P2G_API_KEY", "OPENAI_API_KEY"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    cfg.client.read_timeout = Duration::from_secs(r.read_timeout.max(1));
    cfg.client.max_retries = r.max_retries;
    cfg.stream = !r.no_stream;
    cfg.max_tokens = r.max_tokens.max(16);
    cfg.budget = ImageBudget {
        separate: r.separate_crops,
        mosaic_side: r.mosaic_side.max(64),
        crop_min_side: r.crop_min_side,
        style: match r.mark_style {
            MarkArg::Mosaic => MarkStyle::Mosaic,
            MarkArg::Marks => MarkStyle::Marks,
        },
        ..ImageBudget::default()
    };
    Ok(OpenAiController::new(cfg)?)
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
