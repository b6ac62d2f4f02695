//! Out of file descriptors, the accept loop pauses instead of spinning.
//! Its own test binary: it lowers this process's open-files limit.

mod common;

use common::*;
use std::time::Duration;

fn set_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit reads the struct passed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// User plus system CPU time of this process (getrusage: it needs no
/// descriptor, unlike /proc).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only the struct passed.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) }, 0);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_connection_without_descriptors_does_not_spin_the_accept_loop() {
    // The limit must hold for the server too (it raises the soft limit to
    // the hard one), so both are lowered.
    set_fd_limit(512);
    let server = TestServer::start(config(100, 256, 32)).await;
    // The server is serving once its admin port answers.
    assert_eq!(
        http(server.admin, "GET", "/healthz", None, None).await.0,
        200
    );
    // Use up every descriptor but one, then connect with that one: the
    // connection waits in the backlog and the server's accept fails.
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    hog.pop();
    let pending = std::net::TcpStream::connect(server.url.trim_start_matches("http://"))
        .expect("connect with the last descriptor");
    let before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds() - before;
    drop(hog);
    assert!(
        used < 0.25,
        "the process used {used:.2} s of CPU in 1 s while the accept loop had no descriptor"
    );
    // Descriptors back: the pending connection is accepted (and, sending
    // nothing, closed by the handshake timeout later).
    let (_, text) = http(server.admin, "GET", "/metrics", None, None).await;
    let errors: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("chat_accept_errors_total{port=\"grpc\"}")?
                .trim()
                .parse()
                .ok()
        })
        .expect("chat_accept_errors_total in /metrics");
    assert!(errors >= 1.0, "accept errors counted: {errors}");
    drop(pending);
}
