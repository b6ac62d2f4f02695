//! The resource-limit flags of `serve` (thread caps, message and Connect
//! rates) and how they merge with the config file.

use super::FileConfig;
use crate::consistency::limits::Limits;
use crate::consistency::time::parse_duration;
use std::time::Duration;

/// Flags of `serve` that limit what one client (or one address) may take.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Resource limits")]
pub struct LimitArgs {
    /// Most threads the server holds at once (threads written within
    /// --thread-idle-timeout, or with messages some client has not
    /// acknowledged); a write that would add one more is refused with
    /// RESOURCE_EXHAUSTED [default: 10000]
    #[arg(long, env = "DYCONIT_MAX_THREADS", value_name = "N")]
    pub max_threads: Option<usize>,
    /// Most new threads one client may add per minute (a burst of N, then N
    /// spread over the minute); more get RESOURCE_EXHAUSTED; 0: no limit
    /// [default: 60]
    #[arg(long, env = "DYCONIT_MAX_NEW_THREADS_PER_MINUTE", value_name = "N")]
    pub max_new_threads_per_minute: Option<u32>,
    /// A thread without a write for this long, and with nothing left for any
    /// client to acknowledge, is freed from memory (its history stays in
    /// the log) and no longer counts toward --max-threads [default: 1m]
    #[arg(long, env = "DYCONIT_THREAD_IDLE_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub thread_idle_timeout: Option<Duration>,
    /// Messages one client may send per second on average, in bursts of up
    /// to 5 seconds' worth; more get RESOURCE_EXHAUSTED; 0: no limit
    /// [default: 1000]
    #[arg(long, env = "DYCONIT_MAX_MESSAGES_PER_SECOND", value_name = "N")]
    pub max_messages_per_second: Option<u32>,
    /// Connects one peer address (an IPv6 /64) may make per second on
    /// average, in bursts of up to 5 seconds' worth; more get
    /// RESOURCE_EXHAUSTED; 0: no limit [default: 100]
    #[arg(long, env = "DYCONIT_MAX_CONNECTS_PER_SECOND", value_name = "N")]
    pub max_connects_per_second: Option<u32>,
}

impl LimitArgs {
    /// The core's limits: flags over the file over the defaults.
    pub(super) fn limits(&self, file: &FileConfig) -> Limits {
        let d = Limits::default();
        Limits {
            max_threads: self
                .max_threads
                .or(file.max_threads)
                .unwrap_or(d.max_threads),
            max_new_threads_per_minute: self
                .max_new_threads_per_minute
                .or(file.max_new_threads_per_minute)
                .unwrap_or(d.max_new_threads_per_minute),
            thread_idle_timeout: self
                .thread_idle_timeout
                .or(file.thread_idle_timeout)
                .unwrap_or(d.thread_idle_timeout),
            max_messages_per_second: self
                .max_messages_per_second
                .or(file.max_messages_per_second)
                .unwrap_or(d.max_messages_per_second),
        }
    }

    /// Connects per second per peer address (0: no limit).
    pub(super) fn connects_per_second(&self, file: &FileConfig, default: u32) -> u32 {
        self.max_connects_per_second
            .or(file.max_connects_per_second)
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ServeArgs;
    use super::*;

    #[test]
    fn limits_come_from_flags_over_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "max_threads = 500\nmax_new_threads_per_minute = 7\nthread_idle_timeout = \"10s\"\n\
             max_messages_per_second = 20\nmax_connects_per_second = 3\n",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        args.limits.max_messages_per_second = Some(0);
        let r = args.resolve().unwrap();
        let l = r.config.settings.limits;
        assert_eq!(l.max_threads, 500);
        assert_eq!(l.max_new_threads_per_minute, 7);
        assert_eq!(l.thread_idle_timeout, Duration::from_secs(10));
        assert_eq!(l.max_messages_per_second, 0);
        assert_eq!(r.config.max_connects_per_second, 3);
        let d = ServeArgs::default().resolve().unwrap();
        assert_eq!(d.config.settings.limits, Limits::default());
        assert_eq!(d.config.max_connects_per_second, 100);
        let bad = ServeArgs {
            limits: LimitArgs {
                max_threads: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = format!("{:#}", bad.resolve().unwrap_err());
        assert!(e.contains("max threads 0"), "{e}");
    }
}
