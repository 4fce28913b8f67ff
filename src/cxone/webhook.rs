//! The CXone job webhook (docs/contract.md §10.2): its body and its signature.
//! The simulator signs with [`sign`]; the worker's `/webhooks/cxone` route
//! checks with [`verify`]. Kept here so a change in CXone's scheme touches
//! one module.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::JobStatus;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "X-CXone-Signature";
/// The only event type the worker acts on.
pub const EVENT_IMPORT_COMPLETED: &str = "WFM_SCHEDULE_IMPORT_COMPLETED";

/// `{eventType, jobId, status}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    pub event_type: String,
    pub job_id: String,
    pub status: JobStatus,
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<hex HMAC-SHA256 of body>`: the header value for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body`. Constant-time compare;
/// a missing, malformed or wrong signature is simply `false`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let body =
            br#"{"eventType":"WFM_SCHEDULE_IMPORT_COMPLETED","jobId":"j1","status":"COMPLETED"}"#;
        let sig = sign(b"s3cret", body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify(b"s3cret", body, Some(&sig)));
        assert!(!verify(b"other", body, Some(&sig)));
        assert!(!verify(b"s3cret", b"{}", Some(&sig)));
        assert!(!verify(b"s3cret", body, None));
        assert!(!verify(b"s3cret", body, Some("sha256=zz")));
        assert!(!verify(b"s3cret", body, Some(&sig[7..])));
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
