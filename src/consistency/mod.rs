//! The pure dyconit logic: bounds, conits, per-client delivery state, and the
//! admission and flush decisions. No I/O and no clock reads: the current time
//! is passed in, so every decision can be replayed and property-tested.
//!
//! - [`bounds`]: the three bounds of a conit and the table of defaults and
//!   per-thread overrides.
//! - [`settings`]: every other tunable, validated.
//! - [`admission`]: what a write asks and what the decision answers.
//! - [`engine`]: the state machine that ties them together.
//! - [`parts`]: cutting a flush into Updates of bounded size.
//! - [`policy`]: bounds moved by policies, within operator-set limits.
//! - [`interest`]: which threads a client takes part in (interest policy).
//! - [`limits`]: the laggard rule, thread caps and message rate.
//! - [`schedule`]: which streaming clients are due for a flush, and when.
//! - [`delay`]: how late the scheduler has been running, which flush
//!   deadlines allow for.

pub mod admission;
pub mod bounds;
pub mod client;
pub mod conit;
pub mod delay;
pub mod engine;
pub mod entry;
pub mod interest;
pub mod limits;
pub mod parts;
pub mod policy;
pub mod schedule;
pub mod settings;
pub mod time;

/// A commit sequence number: 1 for the first commit, 0 for "none yet".
pub type Seq = u64;

pub use admission::{
    AckInfo, ClientFault, Decision, Rejection, Submission, SubmissionAck, Verdict,
};
pub use bounds::{Bounds, BoundsOverride, BoundsTable};
pub use engine::{Batch, ClientId, DropReason, Engine, Entry, Event};
pub use settings::Settings;
pub use time::Micros;
