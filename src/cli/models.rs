//! `p2g models`: the model store from the command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use p2g::agents::detect::{DetectAgent, DetectConfig};
use p2g::models::{ModelSource, Store};

#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// List the pinned bundles and whether they are cached.
    List,
    /// Download, verify and cache bundles (all if none named).
    Fetch {
        bundles: Vec<String>,
        /// Fetch again even if cached.
        #[arg(long)]
        force: bool,
    },
    /// Re-hash cached files against their pins (all cached bundles if none named).
    Verify { bundles: Vec<String> },
    /// Print the folder holding a bundle's files (fetching it first if needed).
    Path { bundle: String },
    /// Add a model no registry ships (grounding-dino) from your own folder; it is checked by
    /// loading it, then linked or copied into the cache.
    Add {
        bundle: String,
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

pub fn run(cmd: ModelsCmd) -> Result<ExitCode> {
    let store = Store::open_default()?;
    match cmd {
        ModelsCmd::List => {
            println!("cache: {}", store.root().join("models").display());
            println!(
                "{:<20} {:>9}  {:<8} {:<11} description",
                "bundle", "size", "cached", "license"
            );
            for b in &store.manifest().bundles {
                let cached = match (store.is_cached(&b.name)?, b.user_supplied) {
                    (true, false) => "yes",
                    (true, true) => "added",
                    (false, false) => "no",
                    (false, true) => "not added",
                };
                println!(
                    "{:<20} {:>6} MB  {:<8} {:<11} {}",
                    b.name,
                    b.total_size() / 1_000_000,
                    cached,
                    b.license,
                    b.description
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCmd::Fetch { bundles, force } => {
            let names = if bundles.is_empty() {
                // User-supplied bundles cannot be fetched; `models list` shows them.
                store
                    .manifest()
                    .bundles
                    .iter()
                    .filter(|b| !b.user_supplied)
                    .map(|b| b.name.clone())
                    .collect()
            } else {
                bundles
            };
            for name in names {
                let report = store.fetch(&name, force)?;
                if report.fetched.is_empty() {
                    eprintln!("p2g: `{name}` is already cached and complete");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCmd::Verify { bundles } => {
            let names: Vec<String> = if bundles.is_empty() {
                // Every pinned bundle, and user-supplied ones once added.
                store
                    .manifest()
                    .bundles
                    .iter()
                    .filter(|b| !b.user_supplied || store.is_cached(&b.name).unwrap_or(false))
                    .map(|b| b.name.clone())
                    .collect()
            } else {
                bundles
            };
            let mut ok = true;
            for name in names {
                for check in store.verify(&name)? {
                    let file = &check.file;
                    match &check.problem {
                        None => println!("ok       {name}/{file}"),
                        Some(e) => {
                            ok = false;
                            println!("FAILED   {name}/{file}: {e}");
                        }
                    }
                }
            }
            if ok {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "p2g: some files are missing or damaged; run `p2g models fetch BUNDLE --force`"
                );
                Ok(ExitCode::FAILURE)
            }
        }
        ModelsCmd::Add { bundle, dir } => {
            let staged = store.stage(&bundle, &dir)?;
            // Only a model the agent can load is added; a model added before stays otherwise.
            let checked: Result<(), String> = match bundle.as_str() {
                "grounding-dino" => {
                    let cfg = DetectConfig::embedded()?;
                    DetectAgent::load(&ModelSource::Dir(staged.clone()), &store, cfg)
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                "llava" => p2g::controller::llava::load(
                    &staged.join("model.gguf"),
                    &staged.join("mmproj.gguf"),
                    p2g::controller::embedded::EmbeddedConfig::new(
                        p2g::controller::prompt::Prompts::embedded()?,
                    ),
                    Default::default(),
                )
                .map(drop)
                .map_err(|e| e.to_string()),
                _ => Ok(()),
            };
            if let Err(e) = checked {
                store.discard_staged(&bundle);
                anyhow::bail!("{} was not added: {e}", dir.display());
            }
            for path in store.commit_staged(&bundle)? {
                eprintln!("p2g: added {}", path.display());
            }
            if bundle == "llava" {
                eprintln!(
                    "p2g: `llava` is ready; `p2g ask --controller llava IMAGE QUESTION` uses it"
                );
            } else {
                eprintln!("p2g: `{bundle}` is ready; `p2g detect IMAGE \"phrase . phrase\"` uses it and controllers are offered the detect tool");
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelsCmd::Path { bundle } => {
            println!("{}", store.ensure(&bundle)?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
