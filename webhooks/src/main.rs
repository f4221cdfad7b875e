//! The `ferry` binary: command-line entry point.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = ferry::cli::Cli::parse();
    match ferry::cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(2)
        }
    }
}
