//! `demo`: the simulator in process, the worker, the bundled sample roster.

use crate::config::Settings;

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs, _settings: Settings) -> anyhow::Result<()> {
    anyhow::bail!("demo: not implemented yet")
}
