//! The binary: parse the CLI, load settings, start telemetry, hand over to the library.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxone_schedule_worker::{
    app, cmd,
    config::{LogFormat, Settings},
    sim, telemetry,
};

#[derive(Parser)]
#[command(name = "cxone-schedule-worker", version, about)]
struct Cli {
    /// A TOML file layered over config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format: text or json (also CSW__TELEMETRY__LOG_FORMAT).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: consume changes, import them into CXone, publish events.
    Run,
    /// Run the CXone simulator.
    Sim(sim::SimConfig),
    /// Check change files offline; one JSON line per change; exit 0 all valid, 1 any invalid, 2 error.
    Validate {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Publish change files to the inbound exchange (confirmed, persistent).
    Publish(cmd::publish::PublishArgs),
    /// Simulator + worker + bundled sample roster in one process, then a summary.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(mut s) => {
            if let Some(f) = &cli.log_format {
                match f.as_str() {
                    "json" => s.telemetry.log_format = LogFormat::Json,
                    "text" => s.telemetry.log_format = LogFormat::Text,
                    other => {
                        eprintln!("error: --log-format: expected text or json, got {other:?}");
                        return ExitCode::from(2);
                    }
                }
            }
            s
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo's progress bar and summary are the point; worker logs would
    // drown them unless asked for.
    let mut settings = settings;
    if matches!(cli.command, Command::Demo(_))
        && std::env::var_os("RUST_LOG").is_none()
        && std::env::var_os("CSW__TELEMETRY__LOG_LEVEL").is_none()
    {
        settings.telemetry.log_level = "warn".into();
    }
    if let Command::Validate { files } = &cli.command {
        let code = cmd::validate::run(files, &settings, &mut std::io::stdout().lock());
        return ExitCode::from(code as u8);
    }
    // One thread: everything runs on this one, with no hand-offs between
    // threads (and one malloc arena); more: a work-stealing pool.
    let mut builder = match settings.worker.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(usize::from(n));
            }
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let _telemetry = telemetry::init(&settings.telemetry).context("starting telemetry")?;
        match cli.command {
            Command::Run => app::run(settings)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from),
            Command::Sim(cfg) => sim::run_standalone(cfg).await.map(|()| ExitCode::SUCCESS),
            Command::Publish(args) => cmd::publish::run(args, &settings)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Demo(args) => cmd::demo::run(args, settings)
                .await
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from),
            Command::Validate { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
