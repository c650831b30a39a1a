//! `p2g eval`: score the grounding loop on labelled data — SROIE receipts' key fields
//! ([`sroie`]) and open questions about photos ([`qa`]).

mod qa;
mod sroie;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Ask for company, date, address and total on each receipt of DIR (img/, key/).
    Sroie(sroie::SroieCmd),
    /// Ask the questions of a JSON-lines file ({"image","question","answers","match"?,"needs"})
    /// and score them (the answer contains one of `answers`, compared lower-case on letters
    /// and digits only).
    Qa(qa::QaCmd),
}

pub fn run(cmd: EvalCmd) -> Result<ExitCode> {
    match cmd {
        EvalCmd::Sroie(c) => sroie::run(c),
        EvalCmd::Qa(c) => qa::run(c),
    }
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(Vec::new()), 0.0);
    }
}
