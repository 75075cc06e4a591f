//! An in-process group of ranks (one thread each) implementing [`Communicator`]: what tests of sharded
//! training run on without GPUs. Each collective is an exchange: every rank deposits its tensor, the last
//! to arrive publishes the set, every rank computes its own result from it (sums in rank order, so all
//! ranks agree bit for bit), and the round closes when all have read. A rank that does not arrive within
//! the timeout, or whose handle is dropped (it exited), makes the others' collectives fail with an error
//! naming it instead of hanging.

use super::exchange::Exchange;
use candle_core::{bail, Result, Tensor};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, PartialEq)]
enum Phase {
    /// Ranks are depositing.
    Collect,
    /// The set is published; ranks are reading.
    Drain,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    round: u64,
    slots: Vec<Option<Tensor>>,
    published: Arc<Vec<Tensor>>,
    left: usize,
    /// A rank that left the group (dropped) or a failure every later call reports.
    broken: Option<String>,
}

#[derive(Debug)]
struct Shared {
    n: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// One rank's handle on an in-process group.
#[derive(Debug)]
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

/// A group of `n` in-process ranks: `n` handles (rank 0..n), to be moved one per thread; a collective
/// waits at most `timeout` for the other ranks.
pub fn group(n: usize, timeout: Duration) -> Vec<LocalComm> {
    let shared = Arc::new(Shared {
        n: n.max(1),
        timeout,
        state: Mutex::new(State {
            phase: Phase::Collect,
            round: 0,
            slots: vec![None; n.max(1)],
            published: Arc::new(Vec::new()),
            left: 0,
            broken: None,
        }),
        cv: Condvar::new(),
    });
    (0..n.max(1))
        .map(|rank| LocalComm {
            rank,
            shared: shared.clone(),
        })
        .collect()
}

impl LocalComm {
    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        match self.shared.state.lock() {
            Ok(g) => Ok(g),
            Err(_) => bail!("communicator: a rank panicked inside a collective"),
        }
    }

    /// Waits on the condition variable while `busy` holds; errors when the group broke or on timeout.
    fn wait_while<'a>(
        &self,
        mut g: MutexGuard<'a, State>,
        deadline: Instant,
        what: &str,
        busy: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'a, State>> {
        while busy(&g) {
            if let Some(why) = &g.broken {
                bail!("communicator (rank {}): {why}", self.rank);
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<usize> = (0..self.shared.n)
                    .filter(|&r| g.slots[r].is_none())
                    .collect();
                let why = format!(
                    "{what} timed out after {:.1} s; ranks {missing:?} did not arrive",
                    self.shared.timeout.as_secs_f64()
                );
                g.broken = Some(why.clone());
                self.shared.cv.notify_all();
                bail!("communicator (rank {}): {why}", self.rank);
            }
            g = match self.shared.cv.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => bail!("communicator: a rank panicked inside a collective"),
            };
        }
        // not waiting any more: this collective completed, even if a rank has left since
        Ok(g)
    }

    /// Deposits `x`, returns every rank's tensor (rank order) once all have deposited.
    fn exchange(&self, x: &Tensor, what: &str) -> Result<Arc<Vec<Tensor>>> {
        let deadline = Instant::now() + self.shared.timeout;
        let g = self.lock()?;
        // a fast rank may arrive while the previous round is still being read
        let mut g = self.wait_while(g, deadline, what, |s| s.phase == Phase::Drain)?;
        let round = g.round;
        g.slots[self.rank] = Some(x.clone());
        if g.slots.iter().all(Option::is_some) {
            let all: Vec<Tensor> = g.slots.iter_mut().filter_map(Option::take).collect();
            g.published = Arc::new(all);
            g.phase = Phase::Drain;
            g.left = self.shared.n;
            self.shared.cv.notify_all();
        }
        let mut g = self.wait_while(g, deadline, what, |s| {
            s.phase == Phase::Collect && s.round == round
        })?;
        let out = g.published.clone();
        g.left -= 1;
        if g.left == 0 {
            g.phase = Phase::Collect;
            g.round += 1;
            self.shared.cv.notify_all();
        }
        Ok(out)
    }
}

impl Drop for LocalComm {
    fn drop(&mut self) {
        if let Ok(mut g) = self.shared.state.lock() {
            if g.broken.is_none() {
                g.broken = Some(format!("rank {} left the group", self.rank));
            }
            self.shared.cv.notify_all();
        }
    }
}

impl Exchange for LocalComm {
    fn member(&self) -> (usize, usize) {
        (self.rank, self.shared.n)
    }

    fn exchange(&self, x: &Tensor, what: &str) -> Result<Arc<Vec<Tensor>>> {
        LocalComm::exchange(self, x, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::Communicator;
    use candle_core::Device;

    fn run<T: Send + 'static>(
        n: usize,
        f: impl Fn(LocalComm) -> Result<T> + Send + Sync + 'static,
    ) -> Vec<Result<T>> {
        let f = Arc::new(f);
        let hs: Vec<_> = group(n, Duration::from_secs(10))
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    }

    #[test]
    fn collectives_agree_with_their_definitions_for_1_to_4_ranks() {
        for n in 1..=4usize {
            let out = run(n, move |c| {
                let r = c.rank() as f32;
                let x = Tensor::new(&[r, 10.0 * r, 1.0, 2.0], &Device::Cpu)?;
                let sum: Vec<f32> = c.all_reduce_sum(&x)?.to_vec1()?;
                let gathered: Vec<f32> = c
                    .all_gather(&Tensor::new(&[r, r], &Device::Cpu)?)?
                    .to_vec1()?;
                let full = Tensor::arange(0f32, (4 * n) as f32, &Device::Cpu)?;
                let mine: Vec<f32> = c.reduce_scatter_sum(&(full + r as f64)?)?.to_vec1()?;
                let b: Vec<f32> = c.broadcast(&x, n - 1)?.to_vec1()?;
                c.barrier()?;
                Ok((sum, gathered, mine, b))
            });
            let tri = (n * (n - 1) / 2) as f32;
            for (rank, o) in out.into_iter().enumerate() {
                let (sum, gathered, mine, b) = o.expect("collectives succeed");
                assert_eq!(sum, vec![tri, 10.0 * tri, n as f32, 2.0 * n as f32]);
                let want: Vec<f32> = (0..n).flat_map(|r| [r as f32, r as f32]).collect();
                assert_eq!(gathered, want);
                let want: Vec<f32> = (rank * 4..rank * 4 + 4)
                    .map(|i| n as f32 * i as f32 + tri)
                    .collect();
                assert_eq!(mine, want, "rank {rank} of {n}");
                let last = (n - 1) as f32;
                assert_eq!(b, vec![last, 10.0 * last, 1.0, 2.0]);
            }
        }
    }

    #[test]
    fn a_rank_that_leaves_stops_the_others_with_its_name() {
        let out = run(3, |c| {
            if c.rank() == 1 {
                return Ok(()); // exits: its handle is dropped
            }
            c.barrier()
        });
        for (rank, o) in out.into_iter().enumerate() {
            if rank != 1 {
                let e = o.expect_err("the others must fail").to_string();
                assert!(e.contains("rank 1 left the group"), "{e}");
            }
        }
    }

    #[test]
    fn a_rank_that_never_arrives_times_out_naming_it() {
        let mut comms = group(2, Duration::from_millis(200));
        let late = comms.pop().expect("rank 1");
        let c0 = comms.pop().expect("rank 0");
        let t0 = Instant::now();
        let e = c0.barrier().expect_err("timeout").to_string();
        assert!(e.contains("timed out") && e.contains("[1]"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(late);
    }
}
