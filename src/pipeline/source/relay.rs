//! Webhook notices that reached another replica for a job this one follows.

use crate::telemetry::metrics as metric;
use lapin::{Channel, message::Delivery};

use super::fanout::fanout_stream;
use crate::{
    amqp::{AmqpError, webhook_relay_exchange_name},
    config::AmqpSettings,
    cxone::webhook::WebhookEvent,
    pipeline::jobs::JobRegistry,
};

/// Hears every notice relayed to the replicas.
pub(super) async fn subscribe(
    setup: &Channel,
    amqp: &AmqpSettings,
) -> Result<lapin::Consumer, AmqpError> {
    fanout_stream(setup, &webhook_relay_exchange_name(amqp)).await
}

/// Hands a relayed notice to the job it is for, when this replica follows it.
pub(super) fn pass_on(notice: &Delivery, jobs: &JobRegistry) {
    if let Ok(notice) = serde_json::from_slice::<WebhookEvent>(&notice.data)
        && jobs.notify(&notice.job_id, notice.status)
    {
        metrics::counter!(metric::WEBHOOKS_TOTAL, "result" => "relayed_in").increment(1);
    }
}
