//! Authenticated membership heartbeats (docs/contract.md §11): who sends,
//! whether it is leaving, when, and a per-replica sequence, under an
//! HMAC-SHA256 with `fleet.secret`, so a message published straight to the
//! members exchange cannot add, remove or impersonate a replica.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::time::Instant;

/// How far a heartbeat's clock may be from the receiver's, either way.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

type HmacSha256 = Hmac<Sha256>;

/// The message on the members exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub instance: String,
    pub leaving: bool,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// Strictly increasing per sender, across its restarts too.
    pub seq: u64,
    /// Lower-case hex HMAC-SHA256 of [`signed_bytes`] under `fleet.secret`.
    pub mac: String,
}

/// Why a heartbeat was ignored: the `reason` label of
/// `csw_control_messages_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    Malformed,
    BadMac,
    Stale,
    Replayed,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::BadMac => "bad_mac",
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
        }
    }
}

/// The bytes the MAC covers; the instance is length-prefixed so no two
/// field combinations share an encoding.
fn signed_bytes(instance: &str, leaving: bool, sent_at_ms: u64, seq: u64) -> Vec<u8> {
    format!(
        "csw-heartbeat-v1\n{}:{instance}\n{}\n{sent_at_ms}\n{seq}",
        instance.len(),
        u8::from(leaving)
    )
    .into_bytes()
}

fn mac_over(key: &SecretString, bytes: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(bytes);
    mac
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Signs this replica's heartbeats.
pub struct Signer {
    key: SecretString,
    me: String,
    next_seq: u64,
}

impl Signer {
    /// The sequence starts at the clock in microseconds, so a restarted
    /// replica with the same id continues above what receivers last saw.
    pub fn new(key: SecretString, me: &str) -> Signer {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Signer {
            key,
            me: me.to_owned(),
            next_seq: micros,
        }
    }

    pub fn sign(&mut self, leaving: bool) -> Heartbeat {
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent_at_ms = unix_ms(SystemTime::now());
        let mac = mac_over(&self.key, &signed_bytes(&self.me, leaving, sent_at_ms, seq));
        Heartbeat {
            instance: self.me.clone(),
            leaving,
            sent_at_ms,
            seq,
            mac: hex::encode(mac.finalize().into_bytes()),
        }
    }
}

/// Admits authentic, fresh, first-seen heartbeats only.
pub struct Gate {
    key: SecretString,
    /// Highest sequence accepted per sender, and when; entries older than
    /// twice [`MAX_SKEW`] are dropped since their replays are stale anyway.
    last_seq: HashMap<String, (u64, Instant)>,
}

impl Gate {
    pub fn new(key: SecretString) -> Gate {
        Gate {
            key,
            last_seq: HashMap::new(),
        }
    }

    /// Parses and checks a heartbeat received at `now` (wall clock `wall`).
    pub fn admit(
        &mut self,
        body: &[u8],
        now: Instant,
        wall: SystemTime,
    ) -> Result<Heartbeat, Rejected> {
        let hb: Heartbeat = serde_json::from_slice(body).map_err(|_| Rejected::Malformed)?;
        let sig = hex::decode(&hb.mac).map_err(|_| Rejected::BadMac)?;
        mac_over(
            &self.key,
            &signed_bytes(&hb.instance, hb.leaving, hb.sent_at_ms, hb.seq),
        )
        .verify_slice(&sig)
        .map_err(|_| Rejected::BadMac)?;
        if unix_ms(wall).abs_diff(hb.sent_at_ms) > MAX_SKEW.as_millis() as u64 {
            return Err(Rejected::Stale);
        }
        self.last_seq
            .retain(|_, (_, at)| now.duration_since(*at) < 2 * MAX_SKEW);
        if let Some((last, _)) = self.last_seq.get(&hb.instance)
            && hb.seq <= *last
        {
            return Err(Rejected::Replayed);
        }
        self.last_seq.insert(hb.instance.clone(), (hb.seq, now));
        Ok(hb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SecretString {
        s.to_owned().into()
    }

    fn body(hb: &Heartbeat) -> Vec<u8> {
        serde_json::to_vec(hb).unwrap()
    }

    #[tokio::test]
    async fn genuine_heartbeats_pass_once() {
        let mut signer = Signer::new(key("fleet"), "a");
        let mut gate = Gate::new(key("fleet"));
        let first = signer.sign(false);
        let second = signer.sign(true);
        let now = Instant::now();
        assert_eq!(
            gate.admit(&body(&first), now, SystemTime::now()),
            Ok(first.clone())
        );
        assert_eq!(
            gate.admit(&body(&second), now, SystemTime::now()),
            Ok(second)
        );
        assert_eq!(
            gate.admit(&body(&first), now, SystemTime::now()),
            Err(Rejected::Replayed)
        );
    }

    #[tokio::test]
    async fn forged_tampered_and_stale_heartbeats_fail() {
        let mut gate = Gate::new(key("fleet"));
        let now = Instant::now();
        let forged = Signer::new(key("guess"), "ghost").sign(false);
        assert_eq!(
            gate.admit(&body(&forged), now, SystemTime::now()),
            Err(Rejected::BadMac)
        );
        let mut tampered = Signer::new(key("fleet"), "a").sign(false);
        tampered.leaving = true;
        assert_eq!(
            gate.admit(&body(&tampered), now, SystemTime::now()),
            Err(Rejected::BadMac)
        );
        let genuine = Signer::new(key("fleet"), "a").sign(false);
        let later = SystemTime::now() + MAX_SKEW + Duration::from_secs(1);
        assert_eq!(
            gate.admit(&body(&genuine), now, later),
            Err(Rejected::Stale)
        );
        assert_eq!(
            gate.admit(b"{}", now, SystemTime::now()),
            Err(Rejected::Malformed)
        );
    }

    #[tokio::test]
    async fn a_restarted_sender_continues_above_its_old_sequence() {
        let mut gate = Gate::new(key("fleet"));
        let old = Signer::new(key("fleet"), "a").sign(false);
        let now = Instant::now();
        assert!(gate.admit(&body(&old), now, SystemTime::now()).is_ok());
        std::thread::sleep(Duration::from_millis(2));
        let restarted = Signer::new(key("fleet"), "a").sign(false);
        assert!(
            gate.admit(&body(&restarted), now, SystemTime::now())
                .is_ok()
        );
    }
}
