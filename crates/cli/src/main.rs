//! The `portcullis` binary: the CLI over the typed client, plus the `server`, `agent` and
//! `dev` entry points. It owns argument parsing, output formatting and exit codes, and no
//! security decision: those live in the server and the agent.

mod args;
mod commands;
mod exit;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: the request path allocates many small,
/// short-lived buffers across threads, and glibc's malloc took ≈ 9 % of the CPU per request
/// under load (docs/benchmarks.md). Built with `no_thp`: transparent huge pages on its arenas
/// added ≈ 16 MiB to the server's idle RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match portcullis_agent::process::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(commands::run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = match e.downcast_ref::<exit::Exit>() {
                Some(x) => x.code,
                None => match e.downcast_ref::<portcullis_client::ClientError>() {
                    Some(c) => exit::for_client_error(c),
                    None => exit::ERROR,
                },
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
