//! Argument parsing and dispatch for the `p2g` binary.

mod ask;
mod detect;
mod eval;
mod layout;
mod models;
mod ocr;
mod repl;
mod serve;
mod setup;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// p2g: plug-and-play grounding — ask questions about large images; expert agents (OCR,
/// detection) do the reading.
#[derive(Parser, Debug)]
#[command(name = "p2g", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask a question about an image; the controller calls agents until it can answer.
    Ask(ask::AskCmd),
    /// Ask questions about an image interactively, reusing what was read.
    Repl(repl::ReplCmd),
    /// Show or draw a trace written with --trace.
    #[command(subcommand)]
    Trace(trace::TraceCmd),
    /// Score the grounding loop on a labelled dataset.
    #[command(subcommand)]
    Eval(eval::EvalCmd),
    /// Read the text in one or more images (PP-OCRv5).
    Ocr(ocr::OcrCmd),
    /// Find objects by name in an image (Grounding DINO; a user-supplied model).
    Detect(detect::DetectCmd),
    /// Find the blocks of a document page: text, title, table, figure, captions, header, ...
    Layout(layout::LayoutCmd),
    /// List, fetch, verify, add or locate model files.
    #[command(subcommand)]
    Models(models::ModelsCmd),
    /// Serve ask, OCR and detection over HTTP (models loaded once, shared by all requests).
    Serve(serve::ServeCmd),
}

/// Options shared by commands that load models.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Use model files from this folder instead of the pinned, fetched ones (file names as in
    /// the agent manifest; hashes are not checked).
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,

    /// ONNX Runtime threads per operator (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Tiling options shared by the agents that read large images in native-resolution tiles.
#[derive(clap::Args, Debug, Clone)]
pub struct TileArgs {
    /// Do not also read large images in overlapping native-resolution tiles (faster; misses
    /// small text and objects).
    #[arg(long)]
    pub no_tiling: bool,

    /// Tile size in pixels for large images.
    #[arg(long, value_name = "PX")]
    pub tile_size: Option<u32>,

    /// Overlap between neighbouring tiles in pixels.
    #[arg(long, value_name = "PX")]
    pub tile_overlap: Option<u32>,

    /// Most tiles per image; beyond it OCR reads the tiles at a reduced scale and detection
    /// makes them larger.
    #[arg(long, value_name = "N")]
    pub max_tiles: Option<usize>,
}

impl TileArgs {
    /// Overrides an agent's tiling options with those given on the command line.
    pub fn apply(&self, tiling: &mut bool, size: &mut u32, overlap: &mut u32, max: &mut usize) {
        *tiling &= !self.no_tiling;
        if let Some(v) = self.tile_size {
            *size = v;
        }
        if let Some(v) = self.tile_overlap {
            *overlap = v;
        }
        if let Some(v) = self.max_tiles {
            *max = v;
        }
    }
}

impl ModelArgs {
    /// Where agent models come from: `--model-dir`, else the pinned store.
    pub fn source(&self, store: &p2g::models::Store) -> p2g::models::ModelSource {
        match &self.model_dir {
            Some(dir) => p2g::models::ModelSource::Dir(dir.clone()),
            None => p2g::models::ModelSource::Store(store.clone()),
        }
    }

    /// ONNX Runtime session options with `--threads` applied.
    pub fn session(&self) -> p2g::models::runtime::SessionOptions {
        let mut s = p2g::models::runtime::SessionOptions::default();
        if let Some(t) = self.threads {
            s.intra_threads = t;
        }
        s
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Ask(cmd) => ask::run(cmd),
        Command::Repl(cmd) => repl::run(cmd),
        Command::Trace(cmd) => trace::run(cmd),
        Command::Eval(cmd) => eval::run(cmd),
        Command::Ocr(cmd) => ocr::run(cmd),
        Command::Serve(cmd) => serve::run(cmd),
        Command::Detect(cmd) => detect::run(cmd),
        Command::Layout(cmd) => layout::run(cmd),
        Command::Models(cmd) => models::run(cmd),
    };
    match result {
        Ok(code) => code,
        // `p2g ocr ... | head`: the reader has all it wants; that is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2g: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line ([`p2g::error_line`]).
fn one_line(e: &anyhow::Error) -> String {
    p2g::error_line(e.as_ref())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,ort=warn",
        _ => "debug,ort=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // At -vv every pipeline stage reports how long it took when it closes.
        .with_span_events(if verbose >= 2 {
            tracing_subscriber::fmt::format::FmtSpan::CLOSE
        } else {
            tracing_subscriber::fmt::format::FmtSpan::NONE
        })
        .try_init();
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_print_their_causes_once_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(io)
            .context("cannot read /x.gguf")
            .context("cannot load the controller model");
        assert_eq!(
            super::one_line(&e),
            "cannot load the controller model: cannot read /x.gguf: No such file or directory"
        );
        // A message that already quotes its cause says it once.
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(io).context("cannot read /x: gone\n(twice)");
        assert_eq!(super::one_line(&e), "cannot read /x: gone (twice)");
    }

    /// clap checks a command's arguments (unique names, valid defaults) only when it is
    /// built; this builds every subcommand, so a clash fails here, not in a user's hands.
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
