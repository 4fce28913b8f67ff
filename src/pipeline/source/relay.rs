//! Webhook notices that reached another replica for a job this one follows.
//!
//! A relayed notice is the original webhook body with its original
//! `X-CXone-Signature` in the message headers (docs/contract.md §11); it is
//! acted on only when that signature verifies under `cxone.webhook_secret`,
//! so a message published straight to the relay exchange cannot settle an
//! import. What cannot be verified is ignored: polling finishes the job.

use crate::telemetry::metrics as metric;
use lapin::{Channel, message::Delivery, types::AMQPValue};
use secrecy::{ExposeSecret, SecretString};

use super::fanout::fanout_stream;
use crate::{
    amqp::{AmqpError, webhook_relay_exchange_name},
    config::AmqpSettings,
    cxone::webhook::{self, WebhookEvent},
    pipeline::jobs::JobRegistry,
};

/// Hears every notice relayed to the replicas.
pub(super) async fn subscribe(
    setup: &Channel,
    amqp: &AmqpSettings,
) -> Result<lapin::Consumer, AmqpError> {
    fanout_stream(setup, &webhook_relay_exchange_name(amqp)).await
}

/// The signature header the relaying replica copied from the webhook call.
fn signature(notice: &Delivery) -> Option<&str> {
    let headers = notice.properties.headers().as_ref()?;
    match headers.inner().get(webhook::SIGNATURE_HEADER)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    }
}

/// Hands a relayed notice to the job it is for, when this replica follows
/// it and the notice carries a valid CXone signature.
pub(super) fn pass_on(notice: &Delivery, jobs: &JobRegistry, secret: Option<&SecretString>) {
    let authentic = secret.is_some_and(|secret| {
        webhook::verify(
            secret.expose_secret().as_bytes(),
            &notice.data,
            signature(notice),
        )
    });
    if !authentic {
        let reason = if secret.is_some() {
            "bad_signature"
        } else {
            "unverifiable"
        };
        metrics::counter!(
            metric::CONTROL_MESSAGES_REJECTED_TOTAL,
            "kind" => "webhook_relay",
            "reason" => reason
        )
        .increment(1);
        return;
    }
    if let Ok(notice) = serde_json::from_slice::<WebhookEvent>(&notice.data)
        && notice.event_type == webhook::EVENT_IMPORT_COMPLETED
        && notice.status.is_terminal()
        && jobs.notify(&notice.job_id, notice.status)
    {
        metrics::counter!(metric::WEBHOOKS_TOTAL, "result" => "relayed_in").increment(1);
    }
}
