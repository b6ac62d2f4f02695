//! Small operating-system helpers: the file-descriptor limit and per-process
//! CPU and memory figures from `/proc` (Linux).

/// Raises the soft limit on open files to the hard limit, so that a server or
/// a load generator with thousands of connections does not fail at the usual
/// soft limit of 1024. Returns the soft limit now in force (`None` where it
/// cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let wanted = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// CPU time and memory of one process, read from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    /// User plus system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size now, in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size, in bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// Reads the CPU time and memory of process `pid` (`None` if it is gone or
/// this is not Linux).
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc(&stat, &status, clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no memory effects.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    }
    #[cfg(not(unix))]
    {
        100.0
    }
}

/// Parses `/proc/<pid>/stat` (utime and stime, fields 14 and 15, counted
/// after the parenthesised command name, which may contain spaces) and the
/// `VmRSS`/`VmHWM` lines of `/proc/<pid>/status`.
fn parse_proc(stat: &str, status: &str, ticks: f64) -> Option<ProcStats> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some(ProcStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        rss_bytes: kb("VmRSS:").unwrap_or(0),
        peak_rss_bytes: kb("VmHWM:").unwrap_or(0),
    })
}

/// CPU seconds the whole machine has spent busy (all cores, everything but
/// idle and iowait) since boot, from `/proc/stat`.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy as f64 / clock_ticks_per_second())
}

/// The one-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The kernel's id of the calling thread (Linux; 0 elsewhere).
pub fn thread_id() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no arguments and cannot fail.
        unsafe { libc::gettid() }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// `struct sched_attr` of `sched_setattr(2)`, its first version (48 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Debug, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For a normal thread since Linux 6.12: its time slice, nanoseconds.
    runtime: u64,
    deadline: u64,
    period: u64,
}

#[cfg(target_os = "linux")]
fn sched_getattr() -> std::io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` (48) bytes into `attr`, which
    // has that layout; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    if rc == 0 {
        Ok(attr)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel for a time slice of `slice` for the calling thread.
/// Since Linux 6.12 (EEVDF), `sched_setattr` sets a normal thread's slice
/// (0.1-100 ms), and a waking thread whose slice is shorter than the
/// running thread's may preempt it: a thread that runs briefly and must
/// run on time waits less for a core, with the same share of the CPU
/// (nice would change the share). Keeps the thread's policy and nice
/// value; refused for real-time threads. Older kernels accept and ignore
/// it.
pub fn request_time_slice(slice: std::time::Duration) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut attr = sched_getattr()?;
        if attr.policy != libc::SCHED_OTHER as u32 && attr.policy != libc::SCHED_BATCH as u32 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "not a normal (time-shared) thread",
            ));
        }
        attr.size = std::mem::size_of::<SchedAttr>() as u32;
        attr.flags = 0;
        attr.runtime = slice.as_nanos().min(u64::MAX as u128) as u64;
        // SAFETY: `attr` is a valid, initialised sched_attr of `size` bytes;
        // pid 0 is the calling thread.
        let rc =
            unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slice;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "time slices are a Linux feature",
        ))
    }
}

/// How long a thread of this process has run on a core, and how long it has
/// been ready to run but waited for one (its run-queue wait), in total.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThreadTimes {
    pub ran: std::time::Duration,
    pub waited: std::time::Duration,
}

/// [`ThreadTimes`] of thread `tid` of this process, from
/// `/proc/self/task/<tid>/schedstat` (Linux with schedstats).
pub fn thread_times(tid: i32) -> Option<ThreadTimes> {
    parse_schedstat(&std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?)
}

/// `schedstat`: nanoseconds on a core, nanoseconds waiting on a run queue,
/// time slices.
fn parse_schedstat(text: &str) -> Option<ThreadTimes> {
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some(ThreadTimes {
        ran: std::time::Duration::from_nanos(f.next()??),
        waited: std::time::Duration::from_nanos(f.next()??),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schedstat() {
        let t = parse_schedstat("2914687066 2224750513 21573\n").unwrap();
        assert_eq!(t.ran.as_nanos(), 2_914_687_066);
        assert_eq!(t.waited.as_nanos(), 2_224_750_513);
        assert_eq!(parse_schedstat("12 x 3"), None);
        assert_eq!(parse_schedstat(""), None);
    }

    /// Linux `major.minor` of the running kernel.
    #[cfg(target_os = "linux")]
    fn kernel_version() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release.split(['.', '-']).map(|x| x.parse().unwrap_or(0));
        (v.next().unwrap_or(0), v.next().unwrap_or(0))
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_gets_the_time_slice_it_asks_for_and_keeps_its_nice_value() {
        std::thread::spawn(|| {
            let before = sched_getattr().unwrap();
            request_time_slice(std::time::Duration::from_micros(100)).unwrap();
            let after = sched_getattr().unwrap();
            assert_eq!((after.policy, after.nice), (before.policy, before.nice));
            if kernel_version() >= (6, 12) {
                assert_eq!(after.runtime, 100_000, "{after:?}");
            }
        })
        .join()
        .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_threads_times() {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(20) {
            std::hint::black_box(start.elapsed());
        }
        let t = thread_times(thread_id()).expect("schedstat of this thread");
        assert!(t.ran >= std::time::Duration::from_millis(10), "{t:?}");
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 8 0 100 1000 200";
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        let s = parse_proc(stat, status, 100.0).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.rss_bytes, 1024 * 1024);
        assert_eq!(s.peak_rss_bytes, 2048 * 1024);
    }

    #[test]
    fn own_process_is_readable_and_the_limit_is_raised() {
        let s = proc_stats(std::process::id()).expect("/proc/self");
        assert!(s.rss_bytes > 0 && s.peak_rss_bytes >= s.rss_bytes);
        assert!(raise_fd_limit().is_some_and(|n| n >= 256));
        assert!(machine_busy_seconds().is_some_and(|b| b > 0.0));
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }
}
