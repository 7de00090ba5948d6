//! `portcullis dev`: everything in one process on loopback, with a loud banner.

use portcullis::devstack::{ADMIN_TOKEN_FILE, ConnectionsFile, DevOptions, DevStack};

use crate::args::DevArgs;
use crate::exit::{self, Exit};

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<u8> {
    super::init_logging("info,sqlx=warn");
    if !args.listen.ip().is_loopback() {
        return Err(Exit::new(
            exit::USAGE,
            portcullis::devstack::NotLoopback(args.listen).to_string(),
        )
        .into());
    }
    // A temporary directory lives as long as this process and is removed when it stops.
    let (data_dir, _temp) = match args.data {
        Some(d) => (d, None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("portcullis-dev-")
                .tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let mut opts = DevOptions::new(args.listen, data_dir.clone());
    opts.server.rate_limit.enabled = args.rate_limit;
    if let Some(file) = &args.connections {
        opts.extra =
            ConnectionsFile::load(file).map_err(|e| Exit::new(exit::USAGE, format!("{e:#}")))?;
    }
    let extra: Vec<String> = opts
        .extra
        .iter()
        .map(|c| format!("{} ({}, {})", c.name, c.kind, c.environment))
        .collect();
    let stack = DevStack::start(opts).await?;
    let token_file = data_dir.join(ADMIN_TOKEN_FILE);
    let bar = "=".repeat(78);
    eprintln!(
        "\n{bar}\n  PORTCULLIS DEV MODE: NOT FOR PRODUCTION\n  One process, loopback only, every statement on `demo` auto-approved.\n{bar}\n\n\
         Server:      {url}\n\
         Connections: demo (sqlite, development){more}\n\
         State:       {dir}\n\
         Admin token: {tf} (mode 0600)\n\n\
         Try it:\n\
         \x20 export PORTCULLIS_SERVER={url}\n\
         \x20 export PORTCULLIS_TOKEN=$(cat {tf})\n\
         \x20 portcullis exec --connection demo --reason \"first look\" \"SELECT name, country FROM customers LIMIT 5\"\n\
         \x20 portcullis audit verify --data {dir}\n\n\
         Press Ctrl-C to stop.\n",
        url = stack.url,
        more = extra.iter().map(|c| format!(", {c}")).collect::<String>(),
        dir = data_dir.display(),
        tf = token_file.display(),
    );
    super::shutdown_signal().await;
    eprintln!("stopping…");
    stack.stop().await;
    Ok(exit::OK)
}
