//! Per-thread read and write permissions, as a token's `threads` claim
//! grants them. Pure: no I/O, no transport types. The claim is
//!
//! ```json
//! "threads": { "read": ["lobby", "team-*"], "write": ["team-a"] }
//! ```
//!
//! Each list holds patterns: an exact thread id, a prefix ending in `*`
//! (`team-*` matches `team-a` and `team-`), or `*` alone (every thread).
//! A list that is missing or empty grants nothing; a token without the
//! claim grants everything. Reading and writing are separate: a bot may
//! write to a thread it does not read.

use serde::{Deserialize, Serialize};

/// Most patterns in one list: a token is sent with every `Connect`, and
/// each delivered message is checked against the list.
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;

/// One pattern of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(p: &str) -> Pattern {
        match p.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(p.to_owned()),
        }
    }

    fn matches(&self, thread: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == thread,
            Pattern::Prefix(p) => thread.starts_with(p.as_str()),
        }
    }
}

/// The claim as it is written in the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadsClaim {
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

/// Why a `threads` claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the threads claim has more than {MAX_PATTERNS} {0} patterns")]
    TooMany(&'static str),
    #[error("a {0} pattern of the threads claim is longer than {MAX_PATTERN_BYTES} bytes")]
    TooLong(&'static str),
}

/// What one client may read and write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadAccess {
    read: Vec<Pattern>,
    write: Vec<Pattern>,
}

impl ThreadAccess {
    /// The permissions a claim grants, or why it is refused.
    pub fn from_claim(claim: &ThreadsClaim) -> Result<ThreadAccess, ClaimError> {
        Ok(ThreadAccess {
            read: patterns(&claim.read, "read")?,
            write: patterns(&claim.write, "write")?,
        })
    }

    pub fn may_read(&self, thread: &str) -> bool {
        self.read.iter().any(|p| p.matches(thread))
    }

    pub fn may_write(&self, thread: &str) -> bool {
        self.write.iter().any(|p| p.matches(thread))
    }

    /// True if every thread is readable (deliveries need no filtering).
    pub fn reads_all(&self) -> bool {
        self.read
            .iter()
            .any(|p| *p == Pattern::Prefix(String::new()))
    }
}

fn patterns(list: &[String], which: &'static str) -> Result<Vec<Pattern>, ClaimError> {
    if list.len() > MAX_PATTERNS {
        return Err(ClaimError::TooMany(which));
    }
    list.iter()
        .map(|p| {
            if p.len() > MAX_PATTERN_BYTES {
                Err(ClaimError::TooLong(which))
            } else {
                Ok(Pattern::parse(p))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(read: &[&str], write: &[&str]) -> ThreadAccess {
        ThreadAccess::from_claim(&ThreadsClaim {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn patterns_are_exact_prefixes_or_everything() {
        let a = access(&["lobby", "team-*"], &["team-a"]);
        assert!(a.may_read("lobby") && a.may_read("team-a") && a.may_read("team-"));
        assert!(!a.may_read("lobby2") && !a.may_read("secret") && !a.may_read(""));
        assert!(a.may_write("team-a") && !a.may_write("team-b") && !a.may_write("lobby"));
        assert!(!a.reads_all());
        let all = access(&["*"], &[]);
        assert!(all.reads_all() && all.may_read("") && all.may_read("x"));
        assert!(!all.may_write(""));
    }

    #[test]
    fn oversized_claims_are_refused() {
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| i.to_string()).collect();
        let claim = ThreadsClaim {
            read: many,
            write: vec![],
        };
        assert_eq!(
            ThreadAccess::from_claim(&claim),
            Err(ClaimError::TooMany("read"))
        );
        let claim = ThreadsClaim {
            read: vec![],
            write: vec!["x".repeat(MAX_PATTERN_BYTES + 1)],
        };
        assert_eq!(
            ThreadAccess::from_claim(&claim),
            Err(ClaimError::TooLong("write"))
        );
    }
}
