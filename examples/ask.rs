//! Ask questions about an image from an app: `cargo run --release --example ask -- IMAGE "QUESTION"`.

use p2g::agents::ocr::{OcrAgent, OcrConfig};
use p2g::controller::EmbeddedController;
use p2g::models::{ModelSource, Store};
use p2g::orchestrator::{AskOptions, Orchestrator};
use p2g::vision::{Image, LoadOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(image), Some(question)) = (args.next(), args.next()) else {
        eprintln!("usage: ask IMAGE \"QUESTION\"");
        std::process::exit(2);
    };
    let store = Store::open_default()?;
    let orch = Orchestrator::builder()
        .controller(EmbeddedController::default_model(&store)?)
        .agent(OcrAgent::load(
            &ModelSource::Store(store.clone()),
            &store,
            OcrConfig::embedded()?,
        )?)
        .build()?;
    let path = std::path::Path::new(&image);
    let mut session = orch.session(Image::open(path, &LoadOptions::default())?, path);
    let answer = session.ask(&question, AskOptions::default()).await?;
    println!("{}", answer.linked);
    for g in &answer.grounding {
        println!("  {} {:?} {:?}", g.region, g.bbox, g.phrase);
    }
    Ok(())
}
