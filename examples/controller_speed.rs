//! Prefill and decode speed of the in-process controller model, for BENCHMARKS.md:
//! `cargo run --release --example controller_speed -- MODEL.gguf PROMPT.txt N_DECODE`.
//! Prints one JSON line. The prompt is run once to warm up, then timed with an empty cache.

use std::sync::Arc;
use std::time::Instant;

use p2g::controller::llm::{LanguageModel, Session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: controller_speed MODEL.gguf PROMPT.txt N_DECODE");
        std::process::exit(2);
    }
    let lm = Arc::new(LanguageModel::load(args[1].as_ref(), 8192)?);
    let prompt = std::fs::read_to_string(&args[2])?;
    let n: usize = args[3].parse()?;
    let tokens = lm.encode(&prompt)?;
    // Warm-up (page in the weights, size the buffers).
    let mut s = Session::new(lm.clone());
    s.set_prompt(&tokens[..tokens.len().min(64)]);
    s.step_greedy()?;

    let mut s = Session::new(lm.clone());
    s.set_prompt(&tokens);
    let t0 = Instant::now();
    s.step_greedy()?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..n {
        s.step_greedy()?;
    }
    s.flush()?;
    let decode_s = t1.elapsed().as_secs_f64();
    println!(
        "{{\"engine\":\"p2g\",\"prompt_tokens\":{},\"prefill_tok_s\":{:.1},\"decode_tokens\":{},\"decode_tok_s\":{:.1}}}",
        tokens.len(),
        tokens.len() as f64 / prefill_s,
        n,
        n as f64 / decode_s
    );
    Ok(())
}
