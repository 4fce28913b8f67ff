//! Who consumes which partition when several replicas share the broker.
//!
//! Each partition queue has single-active-consumer, so at most one replica
//! takes its deliveries at any time. That alone would hand every partition to
//! the first replica to subscribe, and RabbitMQ before 3.12 ignores consumer
//! priorities for single-active-consumer queues. So replicas agree on owners
//! instead: each publishes a heartbeat on a fanout exchange every second,
//! keeps the set of replicas heard from lately, and gives partition `p` to the
//! replica with the highest rendezvous hash of `(replica, p)`. Everyone
//! computes the same answer from the same set; when the set changes only the
//! partitions of the replica that came or went move.
//!
//! A replica releasing a partition first stops taking deliveries from it,
//! waits until every delivery it took has been settled (imported or failed,
//! evented and acked), and only then closes that partition's channel: the
//! broker then makes the next subscriber active and redelivers the untouched
//! rest in order. So two replicas never import one calendar at once, even
//! while views of the membership briefly differ.
//!
//! Heartbeats are signed with `fleet.secret` ([`heartbeat`]): one that fails
//! its MAC, is outside the clock window or replays an older sequence is
//! ignored, so nobody with only broker access can add or remove a replica.

mod heartbeat;

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{BasicProperties, Channel, message::Delivery, options::BasicPublishOptions};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::fanout::fanout_stream;
use crate::{
    amqp::{AmqpError, members_exchange_name},
    config::AmqpSettings,
    telemetry::metrics as metric,
};
use heartbeat::{Gate, Signer};

/// What authenticates the control plane's messages: `fleet.secret` for
/// heartbeats, `cxone.webhook_secret` for relayed webhook notices (none:
/// relayed notices are ignored and polling settles every job).
#[derive(Clone, Debug)]
pub struct ControlKeys {
    pub fleet_secret: SecretString,
    pub webhook_secret: Option<SecretString>,
}

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(1000);
/// Silence after which a replica is considered gone.
pub const EXPIRY: Duration = Duration::from_millis(3500);

/// The replica that should consume partition `p` among `members`.
pub fn owner<'a>(members: impl IntoIterator<Item = &'a str>, partition: u16) -> Option<&'a str> {
    members
        .into_iter()
        .map(|m| {
            let mut h = Sha256::new();
            h.update(m.as_bytes());
            h.update(partition.to_be_bytes());
            let d = h.finalize();
            (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")), m)
        })
        .max()
        .map(|(_, m)| m)
}

/// Replicas heard from lately, this one included.
pub struct Members {
    me: String,
    seen: HashMap<String, Instant>,
}

impl Members {
    pub fn new(me: &str) -> Members {
        Members {
            me: me.to_owned(),
            seen: HashMap::new(),
        }
    }

    /// A heartbeat arrived; true if the set changed.
    pub fn heard(&mut self, who: &str, now: Instant) -> bool {
        who != self.me && self.seen.insert(who.to_owned(), now).is_none()
    }

    /// A replica said it is leaving; true if the set changed.
    pub fn left(&mut self, who: &str) -> bool {
        self.seen.remove(who).is_some()
    }

    /// Forgets replicas silent past [`EXPIRY`]; true if the set changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.seen.len();
        self.seen.retain(|_, at| now.duration_since(*at) < EXPIRY);
        self.seen.len() != before
    }

    pub fn live(&self) -> BTreeSet<&str> {
        self.seen
            .keys()
            .map(String::as_str)
            .chain(std::iter::once(self.me.as_str()))
            .collect()
    }

    /// The partitions (of `0..n`) this replica should consume.
    pub fn mine(&self, n: u16) -> BTreeSet<u16> {
        let live = self.live();
        (0..n)
            .filter(|p| owner(live.iter().copied(), *p) == Some(self.me.as_str()))
            .collect()
    }
}

async fn send_heartbeat(ch: &Channel, exchange: &str, signer: &mut Signer, leaving: bool) {
    let body = serde_json::to_vec(&signer.sign(leaving)).expect("heartbeat serialises");
    let _ = ch
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await;
}

/// This replica's part in the membership, over one connection: the
/// heartbeats it hears and sends, and when its partitions change.
/// What a heartbeat on the members exchange turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// This replica's own, verified: its view of the fleet is fresh.
    Own,
    /// Another replica's, verified.
    Other,
    /// Forged, replayed, stale or malformed.
    Ignored,
}

pub(super) struct Membership {
    members: Members,
    signer: Signer,
    gate: Gate,
    /// Heartbeats of every replica; `None` when there is one queue (no partitions).
    notices: Option<lapin::Consumer>,
    exchange: String,
    /// Gather a view of the other replicas before claiming partitions, to
    /// avoid grabbing everything and handing most of it back a second later.
    claim_after: Instant,
    rebalance_due: bool,
}

impl Membership {
    pub(super) async fn join(
        setup: &Channel,
        amqp: &AmqpSettings,
        me: &str,
        partitioned: bool,
        fleet_secret: &SecretString,
    ) -> Result<Membership, AmqpError> {
        let exchange = members_exchange_name(amqp);
        let notices = if partitioned {
            Some(fanout_stream(setup, &exchange).await?)
        } else {
            None
        };
        let claim_after = Instant::now()
            + if partitioned {
                HEARTBEAT + HEARTBEAT / 2
            } else {
                Duration::ZERO
            };
        Ok(Membership {
            members: Members::new(me),
            signer: Signer::new(fleet_secret.clone(), me),
            gate: Gate::new(fleet_secret.clone()),
            notices,
            exchange,
            claim_after,
            rebalance_due: true,
        })
    }

    pub(super) fn partitioned(&self) -> bool {
        self.notices.is_some()
    }

    /// The next heartbeat heard; pending forever without partitions.
    pub(super) async fn next_notice(&mut self) -> Option<lapin::Result<Delivery>> {
        match &mut self.notices {
            Some(s) => s.next().await,
            None => std::future::pending().await,
        }
    }

    /// A heartbeat arrived: counts only when authentic, fresh and new.
    pub(super) fn heard(&mut self, notice: &Delivery) -> Heard {
        let now = Instant::now();
        match self
            .gate
            .admit(&notice.data, now, std::time::SystemTime::now())
        {
            Ok(hb) => {
                self.rebalance_due |= if hb.leaving {
                    self.members.left(&hb.instance)
                } else {
                    self.members.heard(&hb.instance, now)
                };
                if hb.instance == self.members.me {
                    Heard::Own
                } else {
                    Heard::Other
                }
            }
            Err(reason) => {
                metrics::counter!(
                    metric::CONTROL_MESSAGES_REJECTED_TOTAL,
                    "kind" => "heartbeat",
                    "reason" => reason.as_str()
                )
                .increment(1);
                tracing::debug!(reason = reason.as_str(), "heartbeat ignored");
                Heard::Ignored
            }
        }
    }

    /// Says this replica is alive (or leaving), and forgets silent ones.
    pub(super) async fn beat(&mut self, setup: &Channel, leaving: bool) {
        send_heartbeat(setup, &self.exchange, &mut self.signer, leaving).await;
        self.rebalance_due |= self.members.expire(Instant::now());
    }

    pub(super) async fn say_leaving(&mut self, setup: &Channel) {
        send_heartbeat(setup, &self.exchange, &mut self.signer, true).await;
    }

    /// The queues (of `queues`) this replica should consume, when that may
    /// have changed and the first heartbeats had time to arrive.
    pub(super) fn due(&mut self, queues: usize) -> Option<Vec<usize>> {
        if !self.rebalance_due || Instant::now() < self.claim_after {
            return None;
        }
        self.rebalance_due = false;
        Some(if self.partitioned() {
            self.members
                .mine(queues as u16)
                .into_iter()
                .map(usize::from)
                .collect()
        } else {
            vec![0]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_one_owner_and_shares_are_fair() {
        let members: Vec<String> = (0..3).map(|i| format!("worker-{i}")).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for p in 0..120 {
            *counts
                .entry(owner(members.iter().map(String::as_str), p).unwrap())
                .or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 120);
        for (m, c) in counts {
            assert!((25..=55).contains(&c), "{m} owns {c} of 120");
        }
    }

    #[test]
    fn only_the_leavers_partitions_move() {
        let three = ["a", "b", "c"];
        let two = ["a", "b"];
        for p in 0..64 {
            let before = owner(three, p).unwrap();
            let after = owner(two, p).unwrap();
            if before != "c" {
                assert_eq!(before, after, "partition {p} moved needlessly");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_replicas_expire() {
        let mut m = Members::new("me");
        assert!(m.heard("other", Instant::now()));
        assert!(!m.heard("other", Instant::now()));
        assert_eq!(m.live().len(), 2);
        tokio::time::advance(EXPIRY + Duration::from_millis(1)).await;
        assert!(m.expire(Instant::now()));
        assert_eq!(m.live().into_iter().collect::<Vec<_>>(), ["me"]);
        assert_eq!(m.mine(4).len(), 4, "alone, it owns everything");
    }
}
