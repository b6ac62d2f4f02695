//! Messages refused before admission by the I/O edge (a write the sender's
//! token does not grant). They did reach the server: their number must not
//! count later as one of the sender's earlier messages that never arrived,
//! or every refusal would raise that client's order error for good.

use super::{ClientId, Engine};

impl Engine {
    /// Records that message `number` of client `id` arrived and was refused
    /// outside the engine. Unknown clients and negative numbers are ignored.
    pub fn note_refused(&mut self, id: ClientId, number: i64) {
        if number < 0 {
            return;
        }
        if let Some(c) = self.clients.get_mut(&id) {
            c.arrive(number);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::consistency::{Engine, Micros, Settings, Submission, SubmissionAck, Verdict};

    #[test]
    fn a_refused_number_is_not_missing_later() {
        let mut e = Engine::new(Settings::default(), 0, vec![]);
        let now = Micros(1_000_000);
        assert!(e.connect(7, 1, "a".into(), now));
        e.start_stream(7, now).unwrap();
        e.note_refused(7, 1);
        let sub = Submission {
            ack: Some(SubmissionAck {
                client: Some(7),
                updates_received: 1,
                messages_sent: 2,
            }),
            thread: "t".into(),
            contents: "x".into(),
            timestamp: Some(now),
        };
        let (d, _) = e.submit(sub, now);
        assert!(matches!(d.verdict, Verdict::Accepted { .. }), "{d:?}");
        assert_eq!(d.order_error, Some(0));
    }
}
