//! Which thread each bench message goes to: spread over `--threads`
//! uniformly or Zipf-skewed (`--zipf S`: thread t gets weight 1/(t+1)^S, a
//! few hot rooms and many quiet ones), and with
//! `--active-threads-per-client N` each client takes part in only N threads
//! (drawn from the same distribution, so hot rooms have many members) and
//! writes only to them. That models the interest workload: a client sees
//! every thread, but takes part in one.
//!
//! Everything is a pure function of the client index and the message
//! number, so the receiving side can tell, for each message it gets, whether
//! it was on one of its own threads (the latency that matters to a user).

use super::mix;

/// The bench's thread layout.
#[derive(Debug, Clone)]
pub struct ThreadPlan {
    threads: usize,
    /// Cumulative weights, ending at 1; empty for a uniform spread.
    cdf: Vec<f64>,
    /// Each client's own threads (empty: it writes anywhere).
    active: Vec<Vec<u32>>,
    /// The clients that send, `first_writer..first_writer + writers`.
    first_writer: usize,
    writers: usize,
}

impl ThreadPlan {
    /// A plan for `clients` clients (send-only writers included) over
    /// `threads` threads.
    pub fn new(
        threads: usize,
        zipf: f64,
        active_per_client: usize,
        clients: usize,
        (first_writer, writers): (usize, usize),
    ) -> Self {
        let mut plan = ThreadPlan {
            threads,
            cdf: Vec::new(),
            active: Vec::new(),
            first_writer,
            writers: writers.max(1),
        };
        if zipf > 0.0 {
            let weights: Vec<f64> = (1..=threads).map(|t| (t as f64).powf(-zipf)).collect();
            let total: f64 = weights.iter().sum();
            let mut acc = 0.0;
            plan.cdf = weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect();
        }
        if active_per_client > 0 {
            let n = active_per_client.min(threads);
            plan.active = (0..clients).map(|c| plan.draw(c as u64, n)).collect();
        }
        plan
    }

    /// A thread from the distribution, for the random value `r`.
    fn pick(&self, r: u64) -> u32 {
        if self.cdf.is_empty() {
            return (r % self.threads as u64) as u32;
        }
        let u = (r >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u).min(self.threads - 1) as u32
    }

    /// `n` distinct threads for client `c`.
    fn draw(&self, c: u64, n: usize) -> Vec<u32> {
        let mut got: Vec<u32> = Vec::with_capacity(n);
        let mut i = 0u64;
        while got.len() < n {
            let t = if i < 64 * n as u64 {
                self.pick(mix(c.rotate_left(20) ^ i ^ 0xa11ce))
            } else {
                // A skewed draw that keeps hitting taken threads: fill in
                // the lowest free ones.
                (0..self.threads as u32)
                    .find(|t| !got.contains(t))
                    .unwrap_or(0)
            };
            if !got.contains(&t) {
                got.push(t);
            }
            i += 1;
        }
        got
    }

    /// The thread of message number `k` (sent by writer `first_writer + k
    /// mod writers`).
    pub fn thread_of(&self, k: u64) -> usize {
        let r = mix(k ^ 0x5eed);
        if self.active.is_empty() {
            return self.pick(r) as usize;
        }
        let w = self.first_writer + (k % self.writers as u64) as usize;
        let own = &self.active[w];
        own[(r % own.len() as u64) as usize] as usize
    }

    /// Whether message `k` went to one of client `c`'s own threads (always
    /// true without `--active-threads-per-client`).
    pub fn is_own(&self, c: usize, k: u64) -> bool {
        match self.active.get(c) {
            None => true,
            Some(own) => own.contains(&(self.thread_of(k) as u32)),
        }
    }

    /// Client `c`'s first own thread, if clients have threads of their own.
    pub fn first_own(&self, c: usize) -> Option<usize> {
        self.active.get(c)?.first().map(|&t| t as usize)
    }

    /// Whether clients have threads of their own.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_without_zipf_and_skewed_with_it() {
        let count = |plan: &ThreadPlan| {
            let mut n = vec![0u32; 50];
            for k in 0..100_000 {
                n[plan.thread_of(k)] += 1;
            }
            n
        };
        let n = count(&ThreadPlan::new(50, 0.0, 0, 10, (0, 10)));
        assert!(n.iter().all(|&c| (1600..2400).contains(&c)), "{n:?}");
        // Zipf s=1 over 50: the top thread gets 1/H(50) = 22% of messages,
        // the last 0.45%.
        let n = count(&ThreadPlan::new(50, 1.0, 0, 10, (0, 10)));
        assert!((20_000..24_500).contains(&n[0]), "{n:?}");
        assert!(n[49] < 800, "{n:?}");
    }

    #[test]
    fn a_client_with_threads_of_its_own_writes_only_there() {
        let plan = ThreadPlan::new(50, 1.0, 1, 1000, (0, 1000));
        for k in 0..5000u64 {
            let w = (k % 1000) as usize;
            assert!(plan.is_own(w, k));
        }
        // Members are skewed too: thread 0 has the most.
        let members0 = (0..1000).filter(|&c| plan.active[c] == [0]).count();
        assert!(members0 > 150, "{members0}");
        let plan = ThreadPlan::new(3, 5.0, 3, 10, (0, 10));
        assert!(plan.active.iter().all(|a| a.len() == 3));
    }
}
