//! A small team of threads for the many short parallel steps of token-by-token decoding.
//!
//! A pool that parks its threads (rayon) pays a wake-up per step, which on a small model costs
//! more than the step; llama.cpp's threadpool spins for the same reason. Here idle members spin
//! briefly, then yield, then sleep. Work is split into chunks that members *claim*; the caller
//! claims too, so when a member is not running (an oversubscribed machine, tests in parallel)
//! the caller simply does the work itself instead of waiting for it.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize, usize) + Sync;

/// The current job as a raw pointer: members only dereference it for a chunk they claimed,
/// and the caller of `run` does not return before every claimed chunk is done.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync`, and its lifetime is guarded by the claim protocol above.
unsafe impl Send for JobPtr {}

struct Shared {
    /// `epoch << 32 | next chunk`: a claim is a compare-and-swap that only succeeds for the
    /// current epoch and a chunk below the job's count.
    claim: AtomicU64,
    /// Chunks of the current job finished.
    done: AtomicUsize,
    stop: AtomicBool,
    /// (job, chunks, epoch) of the current job.
    job: Mutex<Option<(JobPtr, u32, u32)>>,
}

/// `n` threads: the caller plus `n - 1` members.
pub struct Team {
    n: usize,
    epoch: Cell<u32>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("n", &self.n).finish()
    }
}

/// Waits for `cond` with a tiered back-off: spin briefly (the next job usually comes within
/// microseconds), then yield, then sleep (a team idle between prompts costs nothing).
fn wait_until(mut cond: impl FnMut() -> bool) {
    let mut i = 0u32;
    let mut start = None;
    while !cond() {
        if i < 4000 {
            std::hint::spin_loop();
        } else {
            let t = *start.get_or_insert_with(std::time::Instant::now);
            if t.elapsed() < std::time::Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        i = i.saturating_add(1);
    }
}

/// Claims and runs chunks of job `epoch` until none is left.
fn work(s: &Shared, job: JobPtr, chunks: u32, epoch: u32) {
    loop {
        let v = s.claim.load(Ordering::Acquire);
        if (v >> 32) as u32 != epoch || (v as u32) >= chunks {
            return;
        }
        if s.claim
            .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: chunk `v` of the current epoch is claimed and not yet counted in `done`,
            // so `run` is still waiting and the job it points to is alive.
            unsafe { (*job.0)(v as u32 as usize, chunks as usize) };
            s.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Team {
    pub fn new(n: usize) -> Team {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: Mutex::new(None),
        });
        let workers = (1..n)
            .map(|_| {
                let s = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut seen = 0u32;
                    loop {
                        wait_until(|| {
                            s.stop.load(Ordering::Acquire)
                                || (s.claim.load(Ordering::Acquire) >> 32) as u32 != seen
                        });
                        if s.stop.load(Ordering::Acquire) {
                            return;
                        }
                        let snap = *s.job.lock().expect("team lock");
                        match snap {
                            Some((job, chunks, epoch)) => {
                                seen = epoch;
                                work(&s, job, chunks, epoch);
                            }
                            None => seen = (s.claim.load(Ordering::Acquire) >> 32) as u32,
                        }
                    }
                })
            })
            .collect();
        Team {
            n,
            epoch: Cell::new(0),
            shared,
            workers,
        }
    }

    pub fn threads(&self) -> usize {
        self.n
    }

    /// Runs `f(chunk, chunks)` for every chunk in `0..chunks`, on whichever members are free
    /// (the caller included), and returns when all are done.
    pub fn run<'f>(&self, chunks: usize, f: &'f (dyn Fn(usize, usize) + Sync + 'f)) {
        if self.n == 1 || chunks <= 1 {
            for c in 0..chunks {
                f(c, chunks);
            }
            return;
        }
        let chunks32 = u32::try_from(chunks).expect("chunk count fits in u32");
        let epoch = self.epoch.get().wrapping_add(1).max(1);
        self.epoch.set(epoch);
        // SAFETY: only the lifetime is erased: members dereference the pointer only while
        // holding an unfinished claim of this epoch, and this function waits for all of them.
        let job = JobPtr(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize, usize) + Sync + 'f), *const Job>(f)
        });
        let s = &*self.shared;
        *s.job.lock().expect("team lock") = Some((job, chunks32, epoch));
        s.done.store(0, Ordering::Release);
        s.claim.store(u64::from(epoch) << 32, Ordering::Release);
        work(s, job, chunks32, epoch);
        wait_until(|| s.done.load(Ordering::Acquire) == chunks);
        *s.job.lock().expect("team lock") = None;
    }

    /// Splits `0..len` into a few contiguous ranges per member and runs `f` on each.
    pub fn for_ranges(&self, len: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let chunks = len.min(self.n * 4).max(1);
        self.run(chunks, &|c, k| {
            let start = len * c / k;
            let end = len * (c + 1) / k;
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
    fn every_index_runs_exactly_once() {
        for n in 1..5 {
            let t = Team::new(n);
            for len in [0usize, 1, 3, 100, 1000] {
                let total = AtomicU64::new(0);
                let count = AtomicU64::new(0);
                for _ in 0..200 {
                    t.for_ranges(len, &|r| {
                        count.fetch_add(r.len() as u64, Ordering::Relaxed);
                        total.fetch_add(r.map(|x| x as u64).sum(), Ordering::Relaxed);
                    });
                }
                let len64 = len as u64;
                assert_eq!(count.load(Ordering::Relaxed), 200 * len64);
                assert_eq!(
                    total.load(Ordering::Relaxed),
                    200 * len64 * len64.saturating_sub(1) / 2
                );
            }
        }
    }
}
