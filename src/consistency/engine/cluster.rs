//! Commits decided by a shared log (`--storage nats`): the log, not this
//! engine, assigns the sequence number and the commit time, and every node
//! applies every commit (its own and other nodes') in log order.
//!
//! On this path the engine never holds pending entries: a write is admitted
//! with [`Engine::submit`] and at once taken back with
//! [`Engine::discard_pending`] (the I/O edge publishes it), and it enters
//! the engine only when the log delivers it, through
//! [`Engine::apply_committed`], already durable.

use super::{ClientId, Engine, Entry, Seq};
use std::sync::Arc;

/// Why a commit from the log could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The log skipped sequence numbers (messages deleted from the middle
    /// of the stream by hand): the window would have a hole.
    #[error("the log jumped from seq {head} to {got}: messages are missing from the stream")]
    Gap { head: Seq, got: Seq },
}

/// Entries the window may hold beyond what clients need before it is
/// trimmed while applying (a node with no clients applies every commit of
/// the cluster and never polls).
const TRIM_SLACK: usize = 4096;

impl Engine {
    /// Applies a commit the shared log delivered, at its seq and commit time:
    /// it becomes visible at once (the log stored it). `own` names the local
    /// client and message number that wrote it, if this node published it,
    /// so a retry is answered from it and it does not count toward its
    /// writer's order error. Returns false for a seq already applied.
    pub fn apply_committed(
        &mut self,
        entry: Entry,
        own: Option<(ClientId, i64)>,
    ) -> Result<bool, ApplyError> {
        if entry.seq <= self.head {
            return Ok(false);
        }
        if entry.seq != self.head + 1 {
            return Err(ApplyError::Gap {
                head: self.head,
                got: entry.seq,
            });
        }
        // Reuse the conit's key so every entry of a thread shares one string.
        let thread: Arc<str> = match self.conits.get_key_value(&*entry.thread) {
            Some((k, _)) => k.clone(),
            None => entry.thread.clone(),
        };
        let (seq, at) = (entry.seq, entry.commit_time);
        if let Some((id, n)) = own
            && let Some(c) = self.clients.get_mut(&id)
        {
            c.remember_accepted(n, &thread, &entry.contents, seq, at);
            c.committed_own(&thread, seq);
        }
        self.threads.touch(&thread, at);
        self.conits.entry(thread.clone()).or_default().push(seq, at);
        self.window.push_back(Arc::new(Entry { thread, ..entry }));
        self.head = seq;
        self.mark_durable(seq);
        if self.window.len() > self.settings.history + TRIM_SLACK {
            self.trim();
        }
        Ok(true)
    }

    /// Commit `seq`, if the window still holds it.
    pub fn committed_entry(&self, seq: Seq) -> Option<Arc<Entry>> {
        let floor = self.head - self.window.len() as Seq;
        if seq <= floor || seq > self.durable {
            return None;
        }
        self.window.get((seq - floor - 1) as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::admission::{Submission, SubmissionAck, Verdict};
    use crate::consistency::{Micros, Settings};

    const T0: Micros = Micros(1_700_000_000_000_000);

    fn entry(seq: Seq, thread: &str, at: Micros) -> Entry {
        Entry {
            seq,
            thread: thread.into(),
            contents: format!("m{seq}"),
            sender: "w".into(),
            commit_time: at,
        }
    }

    fn sub(id: ClientId, n: i64, contents: &str) -> Submission {
        Submission {
            ack: Some(SubmissionAck {
                client: Some(id),
                updates_received: 0,
                messages_sent: n,
            }),
            thread: "t".into(),
            contents: contents.into(),
            timestamp: Some(T0),
        }
    }

    #[test]
    fn commits_from_the_log_are_visible_in_log_order_and_gaps_are_refused() {
        let mut e = Engine::new(Settings::default(), 0, Vec::new());
        e.connect(1, 1, "r".into(), T0);
        e.start_stream(1, T0).unwrap();
        assert_eq!(e.apply_committed(entry(1, "t", T0), None), Ok(true));
        assert_eq!(e.apply_committed(entry(1, "t", T0), None), Ok(false));
        assert_eq!(
            e.apply_committed(entry(3, "t", T0), None),
            Err(ApplyError::Gap { head: 1, got: 3 })
        );
        assert_eq!(e.apply_committed(entry(2, "u", T0), None), Ok(true));
        assert_eq!((e.head(), e.durable()), (2, 2));
        assert_eq!(e.committed_entry(2).unwrap().thread.as_ref(), "u");
        assert!(e.committed_entry(3).is_none());
        let got: Vec<Seq> = e
            .flush_all(T0)
            .iter()
            .filter_map(|ev| match ev {
                crate::consistency::Event::Update { batch, .. } => Some(batch),
                _ => None,
            })
            .flat_map(|b| b.entries.iter().map(|x| x.seq))
            .collect();
        assert_eq!(got, [1, 2]);
    }

    #[test]
    fn an_admitted_write_waits_for_the_log_and_then_answers_its_retries() {
        let mut e = Engine::new(Settings::default(), 0, Vec::new());
        e.connect(1, 1, "w".into(), T0);
        let (d, made) = e.submit(sub(1, 1, "hi"), T0);
        assert!(matches!(d.verdict, Verdict::Accepted { .. }) && made.is_some());
        assert_eq!(e.discard_pending(), 1);
        assert_eq!(e.head(), 0);
        // Another node's commit comes first in the log.
        e.apply_committed(entry(1, "t", T0), None).unwrap();
        let mine = Entry {
            contents: "hi".into(),
            ..entry(2, "t", T0)
        };
        e.apply_committed(mine, Some((1, 1))).unwrap();
        match e.submit(sub(1, 1, "hi"), T0).0.verdict {
            Verdict::Accepted { seq, retry, .. } => assert_eq!((seq, retry), (2, true)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_node_without_clients_keeps_a_bounded_window() {
        let s = Settings {
            history: 10,
            ..Settings::default()
        };
        let mut e = Engine::new(s, 0, Vec::new());
        for seq in 1..=20_000 {
            e.apply_committed(entry(seq, "t", T0), None).unwrap();
        }
        assert!(e.window.len() <= 10 + TRIM_SLACK + 1);
        assert!(e.committed_entry(20_000).is_some());
    }
}
