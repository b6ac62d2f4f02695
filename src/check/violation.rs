//! What a broken promise looks like, and how it is printed: the kind, and
//! the few events that prove it (a minimal counterexample).

use std::fmt::Write;

/// A message as a counterexample shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRef {
    pub id: u64,
    pub client: u32,
    pub n: i64,
    pub thread: String,
    /// Local time of its Send event.
    pub send_time: i64,
    /// Status code and server time, if a status came back.
    pub status: Option<(i32, i64)>,
    pub commit_time: Option<i64>,
}

/// One Update as a counterexample shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRef {
    pub client: u32,
    /// Its index on the client's stream (the first is 1).
    pub index: u64,
    pub received: i64,
    pub current_time: i64,
    pub expiration: i64,
}

/// A promise of DESIGN.md §2–§4 the recording shows broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A client that stayed active never received a committed message.
    Lost { client: u32, msg: MsgRef },
    /// A client received a message twice.
    Duplicate {
        msg: MsgRef,
        /// The Update it first came in (found by a pass of its own).
        first_in: Option<UpdateRef>,
        again_in: UpdateRef,
    },
    /// A client received two messages in the other order than the commit
    /// order (which other clients, or the commit times, show).
    Order {
        client: u32,
        first: MsgRef,
        then: MsgRef,
        in_update: UpdateRef,
    },
    /// A writer's `SendMessages` stream committed out of its order.
    StreamOrder { msg: MsgRef, overtaken_by: u32 },
    /// Delivered later than its thread's staleness plus the allowance.
    Late {
        msg: MsgRef,
        update: UpdateRef,
        staleness: i64,
        allowance: i64,
    },
    /// An Update received after the previous one's `expirationTime` (plus
    /// the allowance), or the run ended past it.
    MissedHeartbeat {
        previous: UpdateRef,
        next: Option<UpdateRef>,
        at: i64,
        allowance: i64,
    },
    /// Admitted with an order error above its bound.
    OrderBound {
        msg: MsgRef,
        acked: i64,
        unseen: Vec<MsgRef>,
        error: u64,
        bound: u64,
    },
    /// Admitted while the numerical error was at its bound.
    NumericalBound {
        msg: MsgRef,
        /// The active client furthest behind, and its acknowledged count.
        laggard: u32,
        acked: i64,
        error: u64,
        bound: u64,
    },
    /// A retry got a second, different commit.
    RetryCommittedTwice { msg: MsgRef, second_commit: i64 },
    /// A message delivered although its status was a rejection.
    DeliveredRejected { msg: MsgRef, update: UpdateRef },
    /// A delivered commit time differs from the OK's.
    CommitTimeMismatch {
        msg: MsgRef,
        delivered: i64,
        update: UpdateRef,
    },
    /// Two different sends carried one contents id (a recording fault).
    IdReused { first: MsgRef, client: u32, n: i64 },
}

impl Violation {
    /// A short stable name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Lost { .. } => "lost delivery",
            Violation::Duplicate { .. } => "duplicate delivery",
            Violation::Order { .. } => "two clients saw different orders",
            Violation::StreamOrder { .. } => "SendMessages order not kept",
            Violation::Late { .. } => "late delivery",
            Violation::MissedHeartbeat { .. } => "Update after the previous expirationTime",
            Violation::OrderBound { .. } => "write admitted over its order bound",
            Violation::NumericalBound { .. } => "write admitted at its numerical bound",
            Violation::RetryCommittedTwice { .. } => "retry committed twice",
            Violation::DeliveredRejected { .. } => "rejected message delivered",
            Violation::CommitTimeMismatch { .. } => "delivered commit time differs from the OK",
            Violation::IdReused { .. } => "one contents id sent as two messages",
        }
    }
}

/// Formats times relative to the start of the recording.
pub struct Fmt {
    pub t0: i64,
    /// Global client number -> (file, the bench's client number).
    pub clients: Vec<(usize, u32)>,
    pub files: usize,
}

impl Fmt {
    /// A client as its bench named it (prefixed with the file's place when
    /// several recordings were merged).
    pub fn c(&self, g: u32) -> String {
        match self.clients.get(g as usize) {
            Some(&(f, c)) if self.files > 1 => format!("client {}/{c}", f + 1),
            Some(&(_, c)) => format!("client {c}"),
            None => format!("client ?{g}"),
        }
    }

    pub fn t(&self, t: i64) -> String {
        format!("{:+.6}s", (t - self.t0) as f64 / 1e6)
    }

    fn ms(d: i64) -> String {
        format!("{:.3} ms", d as f64 / 1000.0)
    }

    pub fn msg(&self, m: &MsgRef) -> String {
        let status = match m.status {
            Some((0, t)) => format!("OK, commit time {}", self.t(t)),
            Some((c, t)) => format!("status {} at {}", status_name(c), self.t(t)),
            None => match m.commit_time {
                Some(t) => format!("no status; delivered with commit time {}", self.t(t)),
                None => "no status".into(),
            },
        };
        format!(
            "message {:016x}: {}'s #{} on thread {:?}, sent {}, {}",
            m.id,
            self.c(m.client),
            m.n,
            m.thread,
            self.t(m.send_time),
            status
        )
    }

    pub fn update(&self, u: &UpdateRef) -> String {
        format!(
            "{}'s Update #{}: received {}, currentTime {}, expirationTime {}",
            self.c(u.client),
            u.index,
            self.t(u.received),
            self.t(u.current_time),
            self.t(u.expiration)
        )
    }

    /// The counterexample, one event per line.
    pub fn render(&self, v: &Violation) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}:", v.kind());
        let mut line = |t: String| {
            let _ = writeln!(s, "  {t}");
        };
        match v {
            Violation::Lost { client, msg } => {
                line(self.msg(msg));
                line(format!(
                    "{} stayed active to the end and never received it",
                    self.c(*client)
                ));
            }
            Violation::Duplicate {
                msg,
                first_in,
                again_in,
            } => {
                line(self.msg(msg));
                if let Some(f) = first_in {
                    line(format!("received in {}", self.update(f)));
                }
                line(format!("received again in {}", self.update(again_in)));
            }
            Violation::Order {
                client,
                first,
                then,
                in_update,
            } => {
                line(format!("{} received, in this order:", self.c(*client)));
                line(format!("1. {}", self.msg(first)));
                line(format!(
                    "2. {} (in {})",
                    self.msg(then),
                    self.update(in_update)
                ));
                line("but 2 was committed before 1 (by commit time, or as another client received them first)".into());
            }
            Violation::StreamOrder { msg, overtaken_by } => {
                line(self.msg(msg));
                line(format!(
                    "{overtaken_by} of the same writer's earlier stream messages committed after it"
                ));
            }
            _ => self.render_bounds(v, &mut line),
        }
        s
    }

    fn render_bounds(&self, v: &Violation, line: &mut impl FnMut(String)) {
        match v {
            Violation::Late {
                msg,
                update,
                staleness,
                allowance,
            } => {
                line(self.msg(msg));
                line(format!("delivered in {}", self.update(update)));
                let late = update.received - msg.commit_time.unwrap_or(0);
                line(format!(
                    "commit -> receive {} > staleness {} + allowance {}",
                    Self::ms(late),
                    Self::ms(*staleness),
                    Self::ms(*allowance)
                ));
            }
            Violation::MissedHeartbeat {
                previous,
                next,
                at,
                allowance,
            } => {
                line(self.update(previous));
                match next {
                    Some(n) => line(format!("next: {}", self.update(n))),
                    None => line(format!(
                        "no further Update; the client ended at {}",
                        self.t(*at)
                    )),
                }
                line(format!(
                    "{} after the expirationTime (allowance {})",
                    Self::ms(at - previous.expiration),
                    Self::ms(*allowance)
                ));
            }
            _ => self.render_admission(v, line),
        }
    }

    fn render_admission(&self, v: &Violation, line: &mut impl FnMut(String)) {
        match v {
            Violation::OrderBound {
                msg,
                acked,
                unseen,
                error,
                bound,
            } => {
                line(self.msg(msg));
                line(format!(
                    "its writer had acknowledged at most {acked} Updates; order error at least {error} > bound {bound}; commits it had not seen:"
                ));
                for u in unseen {
                    line(format!("  {}", self.msg(u)));
                }
            }
            Violation::NumericalBound {
                msg,
                laggard,
                acked,
                error,
                bound,
            } => {
                line(self.msg(msg));
                line(format!(
                    "active {} had acknowledged at most {acked} Updates: at least {error} commits of the thread unacknowledged >= bound {bound}",
                    self.c(*laggard)
                ));
            }
            Violation::RetryCommittedTwice { msg, second_commit } => {
                line(self.msg(msg));
                line(format!(
                    "a retry of it was OK'd with another commit time {}",
                    self.t(*second_commit)
                ));
            }
            Violation::DeliveredRejected { msg, update } => {
                line(self.msg(msg));
                line(format!("delivered in {}", self.update(update)));
            }
            Violation::CommitTimeMismatch {
                msg,
                delivered,
                update,
            } => {
                line(self.msg(msg));
                line(format!(
                    "delivered with commit time {} in {}",
                    self.t(*delivered),
                    self.update(update)
                ));
            }
            Violation::IdReused { first, client, n } => {
                line(self.msg(first));
                line(format!("{}'s #{n} carried the same id", self.c(*client)));
            }
            _ => {}
        }
    }
}

/// The name of a `MessageStatus.StatusCode` value.
pub fn status_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CLIENT_ERROR",
        2 => "INTERNAL_ERROR",
        3 => "ORDER_ERROR",
        4 => "NUMERICAL_ERROR",
        5 => "STALENESS",
        _ => "unknown",
    }
}
