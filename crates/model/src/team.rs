//! A fixed team of threads for the phases of one forward pass.
//!
//! A batched decode step on two cores is about a third of a millisecond and has nine phases
//! (two per layer and the head), so handing a phase to another thread must cost well under
//! a microsecond. A general work-stealing pool does not fit: its idle threads go to sleep
//! within microseconds and are woken by a system call, which on this VM took longer than
//! the phase itself. A [`Team`] is the calling thread plus `size − 1` helpers that spin
//! for a short while after each job (long enough to see the next phase of the same step)
//! before parking, so consecutive phases are handed over through one atomic counter.
//!
//! [`Team::run`] lends its closure to the helpers by pointer and does not return, nor
//! unwind, before every helper is done with it; that is the whole of the module's `unsafe`.

use std::{
    fmt,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// How long a helper keeps looking for the next job before it parks.
const SPIN: Duration = Duration::from_micros(100);

/// The job of one [`Team::run`], its lifetime erased (see `Team::run`).
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the pointee is `Sync`, and `Team::run` keeps it alive while helpers can reach it.
#[allow(unsafe_code)]
unsafe impl Send for JobRef {}

struct Shared {
    /// Bumped once per job; helpers wait for it to change.
    epoch: AtomicU64,
    /// Helpers that have not finished the current job.
    busy: AtomicUsize,
    job: Mutex<Option<JobRef>>,
    panicked: AtomicBool,
    stop: AtomicBool,
}

/// The calling thread and `size − 1` helper threads that run the parts of a job together.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<thread::JoinHandle<()>>,
    /// Held for the whole of a `run`: one job at a time.
    running: Mutex<()>,
}

impl fmt::Debug for Team {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Team").field("size", &self.size()).finish()
    }
}

impl Team {
    /// A team of `size` threads (at least one): the caller of [`Team::run`] and `size − 1`
    /// helpers named `name-1`, `name-2`, …. A helper that cannot be started leaves the
    /// team smaller.
    pub fn new(size: usize, name: &str) -> Team {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            job: Mutex::new(None),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let helpers = (1..size.max(1))
            .filter_map(|index| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn(move || help(&shared, index))
                    .ok()
            })
            .collect();
        Team {
            shared,
            helpers,
            running: Mutex::new(()),
        }
    }

    /// The number of threads, the caller's included.
    pub fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..size()`, `f(0)` on the calling thread and the others
    /// on the helpers, and returns when all have returned. A panic in any of them is resumed
    /// here once all are done. Calls from several threads take turns; `f` must not call
    /// `run` on the same team (it would wait for itself).
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let _one = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if self.helpers.is_empty() {
            f(0);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: only the lifetime changes. Helpers call the job between the epoch bump
        // below and their decrement of `busy`, and `Wait` (dropped on return and on unwind)
        // does not let this call end before `busy` is zero and the pointer is cleared.
        #[allow(unsafe_code)]
        let job = unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(f)
        };
        *shared.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(JobRef(job));
        // A flag left by a job whose caller itself panicked.
        shared.panicked.store(false, Ordering::Relaxed);
        shared.busy.store(self.helpers.len(), Ordering::Release);
        shared.epoch.fetch_add(1, Ordering::AcqRel);
        for helper in &self.helpers {
            // Cheap unless the helper is parked.
            helper.thread().unpark();
        }

        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                let mut spins = 0u32;
                while self.0.busy.load(Ordering::Acquire) != 0 {
                    spins += 1;
                    if spins < 1 << 16 {
                        std::hint::spin_loop();
                    } else {
                        thread::yield_now();
                    }
                }
                *self.0.job.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
        let wait = Wait(shared);
        f(0);
        drop(wait);
        if shared.panicked.swap(false, Ordering::AcqRel) {
            panic::resume_unwind(Box::new("a team helper thread panicked"));
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            // A helper's panics are caught per job, so it always ends.
            let _ = helper.join();
        }
    }
}

/// A helper's loop: wait for a new epoch, run its part of the job, report it done.
fn help(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            match since {
                None => since = Some(now),
                // `Team::run` unparks after bumping the epoch, so a park that starts after
                // the bump returns at once.
                Some(start) if now - start > SPIN => thread::park(),
                Some(_) => std::hint::spin_loop(),
            }
        }
        let job = *shared.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(JobRef(f)) = job {
            // SAFETY: `Team::run` keeps the job alive until `busy` reaches zero, which
            // cannot happen before the decrement below.
            #[allow(unsafe_code)]
            let f = unsafe { &*f };
            if panic::catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job() {
        let team = Team::new(3, "test-team");
        assert_eq!(team.size(), 3);
        let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            team.run(&|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for c in &counts {
            assert_eq!(c.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn a_helper_sees_the_callers_borrowed_data_after_parking() {
        let team = Team::new(2, "test-team");
        for round in 0..5u64 {
            // Long enough apart that the helper has parked.
            thread::sleep(SPIN * 5);
            let data: Vec<u64> = (0..100).map(|x| x * round).collect();
            let sums: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
            team.run(&|i| {
                let s = data.iter().skip(i).step_by(2).sum::<u64>();
                sums[i].store(s, Ordering::Relaxed);
            });
            let total: u64 = sums.iter().map(|s| s.load(Ordering::Relaxed)).sum();
            assert_eq!(total, data.iter().sum::<u64>());
        }
    }

    #[test]
    fn a_panic_in_a_helper_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::new(2, "test-team");
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            team.run(&|i| assert!(i != 1, "helper fails"));
        }));
        assert!(caught.is_err());
        let ran = AtomicUsize::new(0);
        team.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_team_of_one_runs_on_the_caller() {
        let team = Team::new(1, "test-team");
        let here = thread::current().id();
        team.run(&|i| {
            assert_eq!(i, 0);
            assert_eq!(thread::current().id(), here);
        });
    }
}
