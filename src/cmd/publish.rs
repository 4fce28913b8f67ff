//! `publish FILE...`: send change files to the inbound exchange, persistent
//! and confirmed, routing key = calendarId, `message_id` = changeId.

use std::{path::PathBuf, time::Duration};

use futures_util::{StreamExt, stream::FuturesUnordered};
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};

use super::validate::split_changes;
use crate::{amqp, config::Settings};

#[derive(Clone, Debug, clap::Args)]
pub struct PublishArgs {
    /// Files holding one change, a JSON array of changes, or NDJSON.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Messages per second (0: as fast as confirms allow).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Amqp(#[from] amqp::AmqpError),
    #[error("publishing failed: {0}; check that the broker is up and the inbound exchange exists")]
    Publish(lapin::Error),
    #[error(
        "the broker refused {0} message(s) (nack or unroutable); check the inbound queue and its bindings"
    )]
    Refused(usize),
}

/// What `publish` reads from a change to address it.
fn address(change: &[u8]) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        calendar_id: Option<serde_json::Value>,
        change_id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(change) {
        Ok(h) => (
            short(
                h.calendar_id
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .unwrap_or(""),
            ),
            h.change_id.as_ref().and_then(|v| v.as_str()).map(short),
        ),
        Err(_) => (String::new(), None),
    }
}

/// AMQP short strings (routing key, `message_id`) hold at most 255 bytes: a
/// longer value is cut at a character boundary (the worker rejects such a
/// change anyway, by its body).
fn short(s: &str) -> String {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub async fn run(args: PublishArgs, settings: &Settings) -> Result<(), PublishError> {
    let mut contents = Vec::new();
    for path in &args.files {
        let bytes = std::fs::read(path).map_err(|source| PublishError::Read {
            path: path.display().to_string(),
            source,
        })?;
        contents.push(bytes);
    }
    let changes: Vec<&[u8]> = contents.iter().flat_map(|c| split_changes(c)).collect();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(changes.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} changes published ({per_sec}) {eta}")
            .expect("static template"),
    );
    let conn = amqp::connect(&settings.amqp, "cxone-schedule-worker publish").await?;
    let ch = conn.create_channel().await.map_err(PublishError::Publish)?;
    amqp::declare_topology(&ch, &settings.amqp).await?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(PublishError::Publish)?;
    let sent = publish_all(
        &ch,
        &settings.amqp.inbound_exchange,
        &changes,
        args.rate,
        &bar,
    )
    .await?;
    bar.finish();
    let _ = conn.close(200, "done".into()).await;
    eprintln!(
        "published {sent} change(s) to {}",
        settings.amqp.inbound_exchange
    );
    Ok(())
}

/// Publishes changes with up to 1,000 confirms outstanding, optionally paced.
/// Returns how many were confirmed.
pub async fn publish_all(
    ch: &Channel,
    exchange: &str,
    changes: &[&[u8]],
    rate: f64,
    bar: &ProgressBar,
) -> Result<usize, PublishError> {
    let mut pending = FuturesUnordered::new();
    let mut refused = 0usize;
    let mut confirmed = 0usize;
    let mut ticker = (rate > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    for change in changes {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let (routing_key, change_id) = address(change);
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(id) = change_id {
            props = props.with_message_id(id.into());
        }
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                change,
                props,
            )
            .await
            .map_err(PublishError::Publish)?;
        pending.push(confirm);
        while pending.len() >= 1000 {
            settle_one(&mut pending, &mut confirmed, &mut refused, bar).await?;
        }
    }
    while !pending.is_empty() {
        settle_one(&mut pending, &mut confirmed, &mut refused, bar).await?;
    }
    if refused > 0 {
        return Err(PublishError::Refused(refused));
    }
    Ok(confirmed)
}

async fn settle_one(
    pending: &mut FuturesUnordered<lapin::PublisherConfirm>,
    confirmed: &mut usize,
    refused: &mut usize,
    bar: &ProgressBar,
) -> Result<(), PublishError> {
    if let Some(result) = pending.next().await {
        let c = result.map_err(PublishError::Publish)?;
        if c.is_ack() && c.take_message().is_none() {
            *confirmed += 1;
        } else {
            *refused += 1;
        }
        bar.inc(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_by_calendar_and_change_id() {
        assert_eq!(
            address(br#"{"calendarId":"cal-1","changeId":"c-9"}"#),
            ("cal-1".to_owned(), Some("c-9".to_owned()))
        );
        assert_eq!(address(b"garbage"), (String::new(), None));
        assert_eq!(address(br#"{"calendarId":7}"#), (String::new(), None));
        let long = format!(r#"{{"changeId":"{}"}}"#, "é".repeat(200));
        assert_eq!(address(long.as_bytes()).1.unwrap().len(), 254);
    }
}
