//! The `p2g` command line. Uses only the library's public API; every error becomes one line
//! on stderr and a non-zero exit status.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
