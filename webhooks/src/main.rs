//! The `ferry` binary: command-line entry point.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: rendering and intake are allocation-bound (JSON trees), and it renders about a fifth
/// faster than the system allocator (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
