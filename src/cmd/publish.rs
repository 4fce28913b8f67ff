//! `publish FILE...`: send change files to the inbound exchange.

use std::path::PathBuf;

use crate::config::Settings;

#[derive(Clone, Debug, clap::Args)]
pub struct PublishArgs {
    /// Files holding one change, a JSON array of changes, or NDJSON.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Messages per second (0: as fast as confirms allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

pub async fn run(_args: PublishArgs, _settings: &Settings) -> anyhow::Result<()> {
    anyhow::bail!("publish: not implemented yet")
}
