//! `p2g models`: the model store from the command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use p2g::models::Store;

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
                let cached = if store.is_cached(&b.name)? {
                    "yes"
                } else {
                    "no"
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
                store
                    .manifest()
                    .bundles
                    .iter()
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
                store
                    .manifest()
                    .bundles
                    .iter()
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
        ModelsCmd::Path { bundle } => {
            println!("{}", store.ensure(&bundle)?.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
