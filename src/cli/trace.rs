//! `p2g trace`: read and draw traces written with `--trace`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// Print a trace for a person: questions, decisions, tool results, answers, timings.
    Show { file: PathBuf },
    /// Draw the evidence (thin) and the regions answers cite (thick, red) on the image.
    Draw {
        file: PathBuf,
        /// Where to write the drawing (PNG, JPEG, ...).
        #[arg(long, value_name = "OUT.png")]
        out: PathBuf,
        /// The image, if it moved since the trace was written.
        #[arg(long, value_name = "IMAGE")]
        image: Option<PathBuf>,
    },
}

pub fn run(cmd: TraceCmd) -> Result<ExitCode> {
    match cmd {
        TraceCmd::Show { file } => {
            let events = p2g::trace::read(&file)?;
            let mut out = std::io::stdout().lock();
            write!(out, "{}", p2g::trace::show(&events))?;
        }
        TraceCmd::Draw { file, out, image } => {
            let events = p2g::trace::read(&file)?;
            let cited = p2g::trace::draw(&events, image.as_deref(), &out)?;
            eprintln!("p2g: wrote {} ({cited} cited regions)", out.display());
            for m in p2g::trace::draw_mosaics(&events, image.as_deref(), &out)? {
                eprintln!("p2g: wrote {} (a Set-of-Mark image as sent)", m.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
