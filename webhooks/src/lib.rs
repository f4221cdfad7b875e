//! The `ferry` binary's library half: the CLI and the HTTP server, thin edges over
//! `ferry-engine`. It is a library so that tests and benchmarks can start the server in process.

pub mod cli;
pub mod server;
