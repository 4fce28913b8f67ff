//! The binary: parse the CLI, load settings, start telemetry, hand over to the library.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxone_schedule_worker::{
    app, cmd,
    config::{ConfigError, LogFormat, Settings},
    sim, telemetry,
};

#[derive(Parser)]
#[command(name = "cxone-schedule-worker", version, about)]
struct Cli {
    /// A TOML file layered over config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format (also CSW__TELEMETRY__LOG_FORMAT).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check change files offline; one JSON line per change; exit 0 all valid, 1 any invalid, 2 error.
    #[command(display_order = 3)]
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    #[command(flatten)]
    Async(AsyncCommand),
}

/// The subcommands that run on the async runtime, with telemetry.
#[derive(Subcommand)]
enum AsyncCommand {
    /// Run the worker: consume changes, import them into CXone, publish events.
    #[command(display_order = 1)]
    Run,
    /// Run the CXone simulator.
    #[command(display_order = 2)]
    Sim(sim::SimConfig),
    /// Publish change files to the inbound exchange (confirmed, persistent).
    #[command(display_order = 4)]
    Publish(cmd::publish::PublishArgs),
    /// Simulator + worker + bundled sample roster in one process, then a summary.
    #[command(display_order = 5)]
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Validate { files } => {
            let code = cmd::validate::run(&files, &settings, &mut std::io::stdout().lock());
            ExitCode::from(code as u8)
        }
        Command::Async(command) => match run_async(command, settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// The configuration layers, then the command line's overrides.
fn load_settings(cli: &Cli) -> Result<Settings, ConfigError> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(format) = cli.log_format {
        settings.telemetry.log_format = format;
    }
    // The demo's progress bar and summary are the point; worker logs would
    // drown them unless asked for.
    if matches!(cli.command, Command::Async(AsyncCommand::Demo(_)))
        && std::env::var_os("RUST_LOG").is_none()
        && std::env::var_os("CSW__TELEMETRY__LOG_LEVEL").is_none()
    {
        settings.telemetry.log_level = "warn".into();
    }
    Ok(settings)
}

fn run_async(command: AsyncCommand, settings: Settings) -> anyhow::Result<()> {
    let runtime =
        app::runtime(settings.worker.threads).context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let _telemetry = telemetry::init(&settings.telemetry).context("starting telemetry")?;
        match command {
            AsyncCommand::Run => app::run(settings).await?,
            AsyncCommand::Sim(cfg) => sim::run_standalone(cfg).await?,
            AsyncCommand::Publish(args) => cmd::publish::run(args, &settings).await?,
            AsyncCommand::Demo(args) => cmd::demo::run(args, settings).await?,
        }
        Ok(())
    })
}
