//! The `burrow` binary: parse the configuration, set up logging and the TLS
//! crypto provider, and hand over to [`burrow::run`].

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use burrow::config::{ClusterCommand, Command, Config, LogFormat};

fn main() -> ExitCode {
    let config = Config::from_args();
    if let Some(command) = &config.command {
        return run_command(command);
    }
    init_logging(config.log_format);

    // One provider for the whole process, chosen explicitly: with several
    // compiled in, rustls would refuse to guess.
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("burrow: error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("burrow: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let signal = burrow::shutdown::signal()
            .map_err(|e| anyhow::anyhow!("cannot install signal handlers: {e}"))?;
        burrow::run(config, signal).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("burrow: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `burrow SUBCOMMAND`: a tool, not the server.
fn run_command(command: &Command) -> ExitCode {
    match command {
        Command::Cluster {
            command: ClusterCommand::Init { file, force },
        } => match burrow::store::secret::init(file, *force) {
            Ok(()) => {
                println!(
                    "wrote a new cluster secret to {} (mode 0600); copy it to every node and give it with --cluster-secret",
                    file.display()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("burrow: error: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs to stderr, as text or JSON lines, at the level `RUST_LOG` asks for.
fn init_logging(format: LogFormat) {
    // rustls warns about what visitors send (an IP address as SNI, say),
    // and russh's session loop about every channel request it does not
    // know (PuTTY sends `winadj@putty.projects.tartarus.org` with each
    // window adjustment: a line per ~1 MiB, and any client could flood
    // the log so): noise an operator cannot act on.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rustls=error,russh::server::encrypted=error")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
