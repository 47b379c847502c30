//! A small team of threads that spin between jobs, for the many short parallel steps of
//! token-by-token decoding. A pool that parks its threads (rayon) pays a wake-up per step,
//! which on a small model costs more than the step; llama.cpp's threadpool spins for the same
//! reason. The threads spin only while a `Team` is alive and yield when idle for a while.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Bumped once per job; workers run the job when they see a new value.
    epoch: AtomicUsize,
    /// Workers that finished the current job.
    done: AtomicUsize,
    stop: AtomicBool,
    /// The current job, lifetime-erased. Only read between an epoch bump and `done` reaching
    /// the worker count, while `run` keeps the real job alive.
    job: Mutex<Option<&'static Job>>,
}

/// `n` threads: the caller plus `n - 1` workers.
pub struct Team {
    n: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("n", &self.n).finish()
    }
}

fn spin_until(mut cond: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        if spins < 1 << 16 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

impl Team {
    pub fn new(n: usize) -> Team {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: Mutex::new(None),
        });
        let workers = (1..n)
            .map(|idx| {
                let s = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut seen = 0usize;
                    loop {
                        spin_until(|| {
                            s.stop.load(Ordering::Acquire)
                                || s.epoch.load(Ordering::Acquire) != seen
                        });
                        if s.stop.load(Ordering::Acquire) {
                            return;
                        }
                        seen = s.epoch.load(Ordering::Acquire);
                        let job = *s.job.lock().expect("team lock");
                        if let Some(job) = job {
                            job(idx, n);
                        }
                        s.done.fetch_add(1, Ordering::AcqRel);
                    }
                })
            })
            .collect();
        Team { n, shared, workers }
    }

    pub fn threads(&self) -> usize {
        self.n
    }

    /// Runs `f(i, n)` on every member (`i` in `0..n`, the caller is 0) and returns when all
    /// are done.
    pub fn run<'f>(&self, f: &'f (dyn Fn(usize, usize) + Sync + 'f)) {
        if self.n == 1 {
            f(0, 1);
            return;
        }
        // SAFETY: the 'static lifetime is a lie told only to the workers: `run` does not
        // return before every worker has finished with the job (the `done` count below), and
        // the slot is cleared before returning, so no reference outlives `f`.
        let job: &'static Job = unsafe {
            std::mem::transmute::<&'f (dyn Fn(usize, usize) + Sync + 'f), &'static Job>(f)
        };
        *self.shared.job.lock().expect("team lock") = Some(job);
        self.shared.done.store(0, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        f(0, self.n);
        spin_until(|| self.shared.done.load(Ordering::Acquire) == self.n - 1);
        *self.shared.job.lock().expect("team lock") = None;
    }

    /// Splits `0..len` into `n` contiguous ranges and runs `f(range)` on each member.
    pub fn for_ranges(&self, len: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        self.run(&|i, n| {
            let per = len.div_ceil(n);
            let start = (i * per).min(len);
            let end = ((i + 1) * per).min(len);
            if start < end {
                f(start..end);
            }
        });
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_member_runs_every_job() {
        for n in 1..4 {
            let t = Team::new(n);
            let total = AtomicU64::new(0);
            for _ in 0..1000 {
                t.for_ranges(100, &|r| {
                    total.fetch_add(r.map(|x| x as u64).sum(), Ordering::Relaxed);
                });
            }
            assert_eq!(total.load(Ordering::Relaxed), 1000 * 4950);
        }
    }
}
