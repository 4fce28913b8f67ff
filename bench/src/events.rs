//! The tap on the worker's events: what each one says, and the tally a
//! drain waits on.

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::{sync::mpsc, time::Instant};

/// What the tap saw in one event.
pub struct Seen {
    pub at: Instant,
    pub kind: Kind,
    pub change_ids: Vec<String>,
}

#[derive(PartialEq, Eq)]
pub enum Kind {
    Completed,
    Failed,
    Rejected,
    Other,
}

/// Changes completed, failed and rejected so far in a phase.
#[derive(Default)]
pub struct Tally {
    pub completed: usize,
    pub failed: usize,
    pub rejected: usize,
    pub imports: usize,
    /// When the last `completed` event arrived.
    pub last_at: Option<Instant>,
}

impl Tally {
    pub fn add(&mut self, seen: &Seen) {
        match seen.kind {
            Kind::Completed => {
                self.completed += seen.change_ids.len();
                self.imports += 1;
                self.last_at = Some(seen.at);
            }
            Kind::Failed => self.failed += seen.change_ids.len().max(1),
            Kind::Rejected => self.rejected += 1,
            Kind::Other => {}
        }
    }

    /// Changes the phase has an answer for, good or bad.
    pub fn settled(&self) -> usize {
        self.completed + self.failed + self.rejected
    }
}

/// Forwards every event from the tap's consumer, stamped with its arrival.
pub async fn tap_loop(mut consumer: lapin::Consumer, tx: mpsc::UnboundedSender<Seen>) {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        data: Data,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        #[serde(default)]
        change_ids: Vec<String>,
    }
    while let Some(Ok(d)) = consumer.next().await {
        let at = Instant::now();
        let Ok(e) = serde_json::from_slice::<Event>(&d.data) else {
            continue;
        };
        let kind = match e.kind.as_str() {
            "wfm.schedule.import.completed" => Kind::Completed,
            "wfm.schedule.import.failed" => Kind::Failed,
            "wfm.schedule.change.rejected" => Kind::Rejected,
            _ => Kind::Other,
        };
        if tx
            .send(Seen {
                at,
                kind,
                change_ids: e.data.change_ids,
            })
            .is_err()
        {
            return;
        }
    }
}
