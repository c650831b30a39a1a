use p2g::controller::llm::{LanguageModel, Session};
use std::sync::Arc;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t = std::time::Instant::now();
    let lm = Arc::new(LanguageModel::load(std::path::Path::new(&args[1]), 8192).unwrap());
    eprintln!("load {:?}", t.elapsed());
    let mut s = Session::new(lm.clone());
    let prompt = format!("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", args[2]);
    let toks = lm.encode(&prompt).unwrap();
    s.set_prompt(&toks);
    let (text, why) = s
        .free(
            100,
            |_, _| true,
            |_| false,
            |c| {
                eprint!("{c}");
            },
        )
        .unwrap();
    eprintln!("\n{why:?} {:?}", s.take_stats());
    println!("{text}");
}
