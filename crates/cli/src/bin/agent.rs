//! `portcullis-agent`: the agent alone, for the hosts next to the data stores.
//!
//! It runs exactly what `portcullis agent --config FILE` runs (the same configuration, token
//! and environment, the same logs and exit codes), from a binary that holds only the agent:
//! none of the server, the web UI or the CLI is linked in, so a data-store host carries less
//! code and the process maps less of it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use portcullis_agent::process;

/// The same allocator as `portcullis`, so both ways of running the agent behave alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs a Portcullis agent: connects out to the server (it never listens), takes the jobs the
/// server hands it, verifies each execution token against its pinned keys, checks its own
/// capability list and executes on the data stores it alone holds credentials for.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis-agent",
    version,
    after_help = "The token comes from PORTCULLIS_AGENT_TOKEN or the file named by token_file.\n\
PORTCULLIS_LOG sets the log filter, PORTCULLIS_LOG_FORMAT=json|pretty the format.\n\n\
Exit codes: 0 stopped by SIGTERM or Ctrl-C; 1 error; 2 bad or missing configuration or token;\n\
7 the server refused the agent's credential (revoked or unknown)."
)]
struct Args {
    /// TOML configuration file (the same file `portcullis agent --config` takes).
    #[arg(long, env = "PORTCULLIS_AGENT_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match process::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(process::EXIT_ERROR);
        }
    };
    process::init_logging(process::DEFAULT_LOG);
    match runtime.block_on(process::run(&args.config)) {
        Ok(()) => ExitCode::from(process::EXIT_OK),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
