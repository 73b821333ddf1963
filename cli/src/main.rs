//! `datatracing`: see `datatracing --help`.

use clap::Parser;
use datatracing_cli::{Cli, Command, PolicyCommand, cancel_on_signals, init_logging, run};
use tokio_util::sync::CancellationToken;

// The collector allocates per span (attributes, strings, JSON); mimalloc measured faster
// than glibc malloc for it (docs/benchmarks.md). Built without transparent huge pages
// (`no_thp`): a fresh huge page is zeroed whole on first touch, which cost a routed
// collector about 3 % of its CPU for request-sized buffers (issue 17 profile);
// `MIMALLOC_ALLOW_THP=1` turns them back on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Policy(cmd) = &cli.command {
        let report = match cmd {
            PolicyCommand::Validate { file } => datatracing_cli::policy::validate(file)?,
            PolicyCommand::Test { file, traces } => datatracing_cli::policy::test(file, traces)?,
        };
        #[allow(clippy::print_stdout)]
        {
            println!("{}", report.trim_end());
        }
        return Ok(());
    }
    let env = std::env::vars().collect();
    let config = cli.effective_config(&env)?;
    if let Command::PrintConfig = cli.command {
        #[allow(clippy::print_stdout)]
        {
            print!("{}", serde_saphyr::to_string(&config)?);
        }
        return Ok(());
    }
    if let Some(line) = datatracing_cli::backup_or_restore(&cli.command, &config)? {
        #[allow(clippy::print_stdout)]
        {
            println!("{line}");
        }
        return Ok(());
    }
    init_logging(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Command::Migrate = cli.command {
        let report = runtime.block_on(datatracing_cli::migrate(&config))?;
        tracing::info!(applied = ?report.applied, version = report.version, "ClickHouse schema is up to date");
        return Ok(());
    }
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone())?;
        run(&cli.command, config, shutdown).await
    })
}
