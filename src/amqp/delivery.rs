//! One delivery as the worker keeps it while its batch fills.

use std::sync::Arc;

use tokio::time::Instant;

use lapin::{BasicProperties, types::ShortString};

use crate::{amqp::AckTracker, substring::find};

/// One delivery, with what settlement needs to dead-letter and ack it.
///
/// BatchedChange compactly: a worker holds a whole prefetch window of these while
/// batches fill. The body and the delivery's own strings (routing key,
/// message id, change id, traceparent) share one allocation, and a string that occurs
/// in the body is kept as a byte range of it: as a rule the routing key is the
/// calendar id and the message id is the change id, both in the body.
/// The AMQP properties other than `message_id` are shared with the
/// previous delivery's when equal ([`PropertiesInterner`]).
pub struct InboundMessage {
    pub tag: u64,
    /// The channel the delivery came on; acks go back through it.
    pub acks: Arc<AckTracker>,
    contents: PackedContents,
    pub received_at: Instant,
    /// The broker says an earlier delivery of this message was not acked.
    pub redelivered: bool,
}

/// A delivery's body, strings and properties in compact form.
struct PackedContents {
    /// The body, then any of the strings below that it does not contain.
    bytes: Box<[u8]>,
    body_len: u32,
    routing_key: ByteRange,
    message_id: ByteRange,
    change_id: ByteRange,
    /// The `traceparent` header, kept apart so it can travel on.
    traceparent: ByteRange,
    /// The properties with `message_id` blanked when it is set.
    shared: Arc<BasicProperties>,
}

/// Where a string lives in [`PackedContents::bytes`], if anywhere. RabbitMQ caps
/// a message at 512 MiB, so offsets fit in 32 bits and `u32::MAX` is free
/// to mean "absent".
#[derive(Clone, Copy)]
struct ByteRange {
    at: u32,
    len: u32,
}

impl ByteRange {
    const ABSENT: ByteRange = ByteRange {
        at: u32::MAX,
        len: 0,
    };
}

fn offset(n: usize) -> u32 {
    u32::try_from(n).expect("RabbitMQ caps a message at 512 MiB")
}

/// Finds `text` in the body, or appends it after everything else.
fn locate_or_append(bytes: &mut Vec<u8>, body_len: usize, text: &str) -> ByteRange {
    let len = offset(text.len());
    if text.is_empty() {
        return ByteRange { at: 0, len };
    }
    if let Some(at) = find(&bytes[..body_len], text.as_bytes()) {
        return ByteRange {
            at: offset(at),
            len,
        };
    }
    let at = offset(bytes.len());
    bytes.extend_from_slice(text.as_bytes());
    ByteRange { at, len }
}

impl InboundMessage {
    /// A delivery as received; `interner` shares its properties.
    pub fn new(
        tag: u64,
        acks: Arc<AckTracker>,
        body: Vec<u8>,
        routing_key: &str,
        properties: BasicProperties,
        interner: &mut PropertiesInterner,
        redelivered: bool,
    ) -> InboundMessage {
        InboundMessage {
            tag,
            acks,
            contents: PackedContents::new(body, routing_key, properties, interner),
            received_at: Instant::now(),
            redelivered,
        }
    }

    pub fn body(&self) -> &[u8] {
        self.contents.body()
    }

    pub fn routing_key(&self) -> &str {
        self.contents.text(self.contents.routing_key)
    }

    pub fn message_id(&self) -> Option<&str> {
        self.contents.get(self.contents.message_id)
    }

    /// The `traceparent` header as received (checked before it travels on).
    pub fn traceparent(&self) -> Option<&str> {
        self.contents.get(self.contents.traceparent)
    }

    /// What validation reads besides the body. The source's parse and the
    /// import's second one both take it from here, so they see the same.
    pub fn meta(&self) -> crate::domain::MessageMeta<'_> {
        crate::domain::MessageMeta {
            content_type: self.content_type(),
            message_id: self.message_id(),
        }
    }

    pub fn content_type(&self) -> Option<&str> {
        self.contents
            .shared
            .content_type()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The change id, once the body has been parsed ([`Self::set_change_id`]).
    pub fn change_id(&self) -> &str {
        self.contents
            .get(self.contents.change_id)
            .unwrap_or_default()
    }

    /// Remembers the change id the body holds (as a rule, without copying it).
    pub fn set_change_id(&mut self, id: &str) {
        self.contents.set_change_id(id);
    }

    /// The AMQP properties as received.
    pub fn properties(&self) -> BasicProperties {
        self.contents.properties()
    }
}

impl PackedContents {
    fn new(
        body: Vec<u8>,
        routing_key: &str,
        properties: BasicProperties,
        interner: &mut PropertiesInterner,
    ) -> PackedContents {
        let traceparent = crate::amqp::header_str(properties.headers().as_ref(), "traceparent");
        let (shared, message_id) = interner.intern(properties);
        let body_len = body.len();
        let mut bytes = body;
        let routing_key = locate_or_append(&mut bytes, body_len, routing_key);
        let message_id = message_id.map_or(ByteRange::ABSENT, |id| {
            locate_or_append(&mut bytes, body_len, id.as_str())
        });
        let traceparent = traceparent.map_or(ByteRange::ABSENT, |tp| {
            locate_or_append(&mut bytes, body_len, &tp)
        });
        PackedContents {
            bytes: bytes.into_boxed_slice(),
            body_len: offset(body_len),
            routing_key,
            message_id,
            change_id: ByteRange::ABSENT,
            traceparent,
            shared,
        }
    }

    fn get(&self, range: ByteRange) -> Option<&str> {
        (range.at != u32::MAX).then(|| self.text(range))
    }

    fn text(&self, range: ByteRange) -> &str {
        let bytes = &self.bytes[range.at as usize..][..range.len as usize];
        // Ranges only ever cover the bytes of a `&str`.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    fn body(&self) -> &[u8] {
        &self.bytes[..self.body_len as usize]
    }

    fn set_change_id(&mut self, id: &str) {
        // As a rule the message id is the change id: no search then.
        if self.get(self.message_id) == Some(id) {
            self.change_id = self.message_id;
            return;
        }
        let body_len = self.body_len as usize;
        let mut bytes = std::mem::take(&mut self.bytes).into_vec();
        let range = locate_or_append(&mut bytes, body_len, id);
        self.bytes = bytes.into_boxed_slice();
        self.change_id = range;
    }

    fn properties(&self) -> BasicProperties {
        let p = (*self.shared).clone();
        match self.get(self.message_id) {
            Some(id) => p.with_message_id(id.into()),
            None => p,
        }
    }
}

/// Shares equal properties between consecutive deliveries: they differ, as
/// a rule, only in `message_id`, which [`InboundMessage`] keeps apart.
#[derive(Default)]
pub struct PropertiesInterner {
    last: Option<Arc<BasicProperties>>,
}

impl PropertiesInterner {
    /// The properties with `message_id` blanked (shared when equal to the
    /// last ones), and the `message_id`.
    pub fn intern(
        &mut self,
        props: BasicProperties,
    ) -> (Arc<BasicProperties>, Option<ShortString>) {
        let message_id = props.message_id().clone();
        let stripped = if message_id.is_some() {
            props.with_message_id(ShortString::from(""))
        } else {
            props
        };
        let shared = match &self.last {
            Some(last) if **last == stripped => last.clone(),
            _ => {
                let shared = Arc::new(stripped);
                self.last = Some(shared.clone());
                shared
            }
        };
        (shared, message_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_come_back_as_received_and_are_shared() {
        let mut interner = PropertiesInterner::default();
        let a = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id("m-1".into());
        let b = a.clone().with_message_id("m-2".into());
        let none = BasicProperties::default().with_content_type("application/json".into());
        let body = br#"{"changeId":"m-2"}"#.to_vec();
        let (ca, cb, cnone) = (
            PackedContents::new(body.clone(), "cal", a.clone(), &mut interner),
            PackedContents::new(body.clone(), "cal", b.clone(), &mut interner),
            PackedContents::new(body.clone(), "cal", none.clone(), &mut interner),
        );
        assert!(
            Arc::ptr_eq(&ca.shared, &cb.shared),
            "shared when only the id differs"
        );
        assert_eq!(ca.properties(), a);
        assert_eq!(cb.properties(), b);
        assert_eq!(cnone.properties(), none);
        assert!(cnone.get(cnone.message_id).is_none());
    }

    #[test]
    fn strings_found_in_the_body_are_not_copied() {
        let mut interner = PropertiesInterner::default();
        let body = br#"{"changeId":"c-1","calendarId":"cal-7"}"#.to_vec();
        let props = BasicProperties::default().with_message_id("c-1".into());
        let mut c = PackedContents::new(body.clone(), "cal-7", props, &mut interner);
        c.set_change_id("c-1");
        assert_eq!(c.bytes.len(), body.len(), "all three found in the body");
        assert_eq!(c.body(), &body[..]);
        assert_eq!(c.text(c.routing_key), "cal-7");
        assert_eq!(c.get(c.message_id), Some("c-1"));
        assert_eq!(c.get(c.change_id), Some("c-1"));
        assert_eq!(c.get(c.traceparent), None);

        // Not in the body (an escaped id, a routing key of another shape):
        // appended after it, and the body reads as received.
        let props = BasicProperties::default().with_message_id("m-\\u00e9".into());
        let mut c = PackedContents::new(body.clone(), "other.key", props, &mut interner);
        c.set_change_id("é-1");
        assert_eq!(c.body(), &body[..]);
        assert_eq!(c.text(c.routing_key), "other.key");
        assert_eq!(c.get(c.message_id), Some("m-\\u00e9"));
        assert_eq!(c.get(c.change_id), Some("é-1"));
        assert_eq!(c.text(ByteRange { at: 0, len: 0 }), "");
    }
}
