//! vCPU thread control: run, pause and stop, with kicks that cannot be lost.
//!
//! The VMM thread writes the wanted state under a mutex, then kicks every vCPU thread with
//! the kick signal. The signal's handler sets the thread's `kvm_run.immediate_exit`: a kick
//! during KVM_RUN interrupts it, and a kick that lands before KVM_RUN makes KVM_RUN return
//! at once with EINTR. A vCPU thread clears `immediate_exit` before it reads the wanted
//! state, so it either sees the new state or its next KVM_RUN returns at once. Parked
//! threads wait on a condition variable; nothing polls or sleeps.
//!
//! The handler, not the VMM thread, writes `immediate_exit`: the `kvm_run` mapping belongs
//! to the vCPU thread and is unmapped when that thread ends, so only that thread may touch
//! it. The effect is the same as "set immediate_exit, then signal": no kick is lost.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Signal used to kick a vCPU thread out of KVM_RUN.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run.immediate_exit` while it runs a guest, else null.
    static IMMEDIATE_EXIT: Cell<*const AtomicU8> = const { Cell::new(std::ptr::null()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` never panics; the const-initialised slot needs no lazy set-up.
    let _ = IMMEDIATE_EXIT.try_with(|slot| {
        let byte = slot.get();
        if !byte.is_null() {
            // SAFETY: `KickArm` stores a pointer that stays valid until it is dropped, and
            // it clears the slot before that; the handler runs on the thread that owns it.
            unsafe { (*byte).store(1, Ordering::SeqCst) };
        }
    });
}

/// Installs the kick signal handler, which sets the interrupted thread's
/// `kvm_run.immediate_exit`.
pub(super) fn register_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

/// What a vCPU thread runs, one guest exit at a time.
///
/// # Safety
/// The kick signal handler writes through the pointer [`GuestRun::immediate_exit`] returns,
/// from this thread, at any moment while the guest runs: it must point at one writable byte
/// that stays valid (and at the same address) for as long as `self` lives.
pub unsafe trait GuestRun {
    /// The `kvm_run.immediate_exit` byte; valid, at a fixed address, while `self` lives.
    fn immediate_exit(&mut self) -> *mut u8;
    /// Runs the guest until its next exit (a kick is one) and handles it; false ends this
    /// vCPU.
    fn run_once(&mut self) -> bool;
    /// Serves a request of the VMM while paused ([`Vcpus::serve_paused`]), on this thread.
    fn serve(&mut self) {}
}

/// Points this thread's kick at a guest's `immediate_exit` until dropped.
struct KickArm {
    byte: *const AtomicU8,
}

impl KickArm {
    /// # Safety
    /// `byte` must stay valid until the returned value is dropped, on this thread.
    unsafe fn new(byte: *mut u8) -> Self {
        // SAFETY: the caller keeps `byte` valid; AtomicU8 has the layout of u8.
        let byte = unsafe { AtomicU8::from_ptr(byte) } as *const AtomicU8;
        IMMEDIATE_EXIT.with(|slot| slot.set(byte));
        Self { byte }
    }

    /// Forgets the kicks so far. Called before reading the wanted state, so a kick after
    /// the read makes the next KVM_RUN return at once.
    fn clear(&self) {
        // SAFETY: valid while `self` lives (see `new`).
        unsafe { (*self.byte).store(0, Ordering::SeqCst) };
        // The clear must not move after the state read that follows.
        compiler_fence(Ordering::SeqCst);
    }
}

impl Drop for KickArm {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|slot| slot.set(std::ptr::null()));
    }
}

/// What the VMM wants the vCPU threads to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Run,
    Pause,
    Stop,
    /// Internal to `next`: serve the VMM's request, then park again.
    Serve,
}

struct State {
    wanted: Wanted,
    /// Requests made by `serve_paused` so far.
    requests: u64,
    /// Threads that served the latest request.
    served: usize,
    /// Threads spawned and not yet ended.
    live: usize,
    /// Threads waiting in `Control::next` while a pause is wanted.
    parked: usize,
}

/// The state the VMM thread and the vCPU threads share.
struct Control {
    state: Mutex<State>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, wanted: Wanted) {
        self.lock().wanted = wanted;
        self.changed.notify_all();
    }

    /// For a vCPU thread before each KVM_RUN: parks while a pause is wanted, then says
    /// whether to run or stop, or to serve a request made while it was parked (`seen` is the
    /// last request this thread served).
    fn next(&self, seen: &mut u64) -> Wanted {
        let mut state = self.lock();
        if state.wanted == Wanted::Pause {
            state.parked += 1;
            self.changed.notify_all();
            while state.wanted == Wanted::Pause && state.requests == *seen {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.parked -= 1;
            if state.wanted == Wanted::Pause {
                *seen = state.requests;
                return Wanted::Serve;
            }
        }
        state.wanted
    }

    /// A vCPU thread served the latest request.
    fn served(&self) {
        self.lock().served += 1;
        self.changed.notify_all();
    }

    /// Waits until `done` holds, or false at `deadline`.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&State) -> bool) -> bool {
        let mut state = self.lock();
        while !done(&state) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Counts a vCPU thread as ended when dropped, even by a panic.
struct Live(Arc<Control>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.lock().live -= 1;
        self.0.changed.notify_all();
    }
}

/// The body of a vCPU thread: run the guest until it ends or the VMM stops it.
fn run_guest(mut guest: impl GuestRun, control: &Control) {
    // SAFETY: `guest` outlives `kick`, which is declared after it and dropped first.
    let kick = unsafe { KickArm::new(guest.immediate_exit()) };
    // Every request counts, also one made before this thread got here (a snapshot of a VM
    // loaded without resume_vm can be asked for while its threads are still starting).
    let mut seen = 0;
    loop {
        kick.clear();
        match control.next(&mut seen) {
            Wanted::Stop => break,
            Wanted::Serve => {
                guest.serve();
                control.served();
            }
            Wanted::Run | Wanted::Pause => {
                if !guest.run_once() {
                    break;
                }
            }
        }
    }
    drop(kick);
}

/// The vCPU threads of a VM. Threads start held (paused) until the first `resume`.
pub struct Vcpus {
    control: Arc<Control>,
    threads: Vec<JoinHandle<()>>,
}

impl Default for Vcpus {
    fn default() -> Self {
        Self::new()
    }
}

impl Vcpus {
    /// No threads yet; the ones `spawn` starts are held until `resume`.
    pub fn new() -> Self {
        Self {
            control: Arc::new(Control {
                state: Mutex::new(State {
                    wanted: Wanted::Pause,
                    requests: 0,
                    served: 0,
                    live: 0,
                    parked: 0,
                }),
                changed: Condvar::new(),
            }),
            threads: Vec::new(),
        }
    }

    /// Spawns the thread `name`: it calls `make` (on the new thread: e.g. to install its
    /// seccomp filter), then runs the guest `make` returns whenever the VMM lets it.
    pub fn spawn<G, F>(&mut self, name: String, make: F) -> std::io::Result<()>
    where
        G: GuestRun,
        F: FnOnce() -> G + Send + 'static,
    {
        self.control.lock().live += 1;
        let live = Live(self.control.clone());
        let control = self.control.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let _live = live;
            run_guest(make(), &control);
        });
        // On failure the closure, and `live` with it, is dropped: the count is undone.
        self.threads.push(spawned?);
        Ok(())
    }

    /// The number of vCPU threads spawned.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// True before any thread is spawned.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Sends the kick signal to every thread that has not ended.
    fn kick_all(&self) {
        for thread in self.threads.iter().filter(|t| !t.is_finished()) {
            // Fails only for a thread that has just ended, which needs no kick.
            let _ = thread.kill(kick_signal());
        }
    }

    /// Parks every vCPU thread outside KVM_RUN; returns once all are parked (threads that
    /// ended do not count), or false after `timeout` (the pause stays wanted).
    pub fn pause(&self, timeout: Duration) -> bool {
        self.control.set(Wanted::Pause);
        self.kick_all();
        self.control
            .wait_until(Instant::now() + timeout, |s| s.parked == s.live)
    }

    /// While paused: makes every live vCPU thread call its guest's `serve` once, on its own
    /// thread, and returns once all did (true) or after `timeout` (false). A thread that
    /// ends meanwhile does not hold this up.
    pub fn serve_paused(&self, timeout: Duration) -> bool {
        {
            let mut state = self.control.lock();
            if state.wanted != Wanted::Pause {
                return false;
            }
            state.requests += 1;
            state.served = 0;
        }
        self.control.changed.notify_all();
        self.control.wait_until(Instant::now() + timeout, |s| {
            s.served >= s.live && s.parked == s.live
        })
    }

    /// Lets the vCPU threads run the guest (again).
    pub fn resume(&self) {
        self.control.set(Wanted::Run);
    }

    /// Stops every vCPU thread and joins it; waits at most `timeout` for the threads to
    /// leave KVM_RUN. Returns the number of threads that did not end in time.
    pub fn stop(self, timeout: Duration) -> usize {
        self.control.set(Wanted::Stop);
        self.kick_all();
        let all_ended = self
            .control
            .wait_until(Instant::now() + timeout, |s| s.live == 0);
        // Once none is live, each thread is past its guest and joins at once.
        let (ended, running): (Vec<_>, Vec<_>) = self
            .threads
            .into_iter()
            .partition(|t| all_ended || t.is_finished());
        for thread in ended {
            // A vCPU thread that panicked is already reported by the panic hook.
            let _ = thread.join();
        }
        running.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::mpsc::{channel, Receiver, Sender};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Does what KVM_RUN does with a kick: with the kick signal blocked, checks
    /// `immediate_exit`, and if it is clear waits for the signal with it unblocked in one
    /// step (ppoll). Returns true when kicked, false after `timeout`.
    fn fake_kvm_run(byte: &AtomicU8, timeout: Duration) -> bool {
        // SAFETY: an all-zero sigset_t is a valid value to initialise.
        let mut kick: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `kick` is a valid, owned set.
        unsafe { libc::sigemptyset(&mut kick) };
        // SAFETY: as above.
        unsafe { libc::sigaddset(&mut kick, kick_signal()) };
        // SAFETY: valid sets; changes only this thread's mask.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &kick, &mut old) };
        if byte.load(Ordering::SeqCst) == 0 {
            let ts = libc::timespec {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
            };
            // SAFETY: no fds to watch; valid timeout and mask.
            unsafe { libc::ppoll(std::ptr::null_mut(), 0, &ts, &old) };
        }
        // SAFETY: restores this thread's mask from a valid set.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        byte.load(Ordering::SeqCst) == 1
    }

    /// A guest that stays in its fake KVM_RUN until kicked; reports each run.
    struct FakeGuest {
        index: usize,
        immediate_exit: Box<AtomicU8>,
        runs: Sender<usize>,
        /// Ends this vCPU at this run.
        end_at: Option<usize>,
        count: usize,
    }

    // SAFETY: `immediate_exit` points into `self.immediate_exit`, a field of the guest that
    // lives (and does not move) while the thread runs it.
    unsafe impl GuestRun for FakeGuest {
        fn immediate_exit(&mut self) -> *mut u8 {
            self.immediate_exit.as_ptr()
        }

        fn run_once(&mut self) -> bool {
            self.count += 1;
            let _ = self.runs.send(self.index);
            if self.end_at == Some(self.count) {
                return false;
            }
            fake_kvm_run(&self.immediate_exit, DEADLINE);
            true
        }

        fn serve(&mut self) {
            // Proves the thread: each fake runs on the thread named after its index.
            let on_own_thread =
                std::thread::current().name() == Some(format!("fake{}", self.index).as_str());
            let _ = self
                .runs
                .send(SERVED + self.index + if on_own_thread { 0 } else { 100 });
        }
    }

    /// Added to a fake's index when it reports a `serve`.
    const SERVED: usize = 1000;

    fn spawn_fakes(
        count: usize,
        end_at: impl Fn(usize) -> Option<usize>,
    ) -> (Vcpus, Receiver<usize>) {
        register_kick_handler().unwrap();
        let (tx, rx) = channel();
        let mut vcpus = Vcpus::new();
        for index in 0..count {
            let runs = tx.clone();
            let end_at = end_at(index);
            vcpus
                .spawn(format!("fake{index}"), move || FakeGuest {
                    index,
                    immediate_exit: Box::new(AtomicU8::new(0)),
                    runs,
                    end_at,
                    count: 0,
                })
                .unwrap();
        }
        (vcpus, rx)
    }

    /// Waits until each of `count` vCPUs has run once more.
    fn each_runs(rx: &Receiver<usize>, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = HashSet::new();
        while seen.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            seen.insert(rx.recv_timeout(left).expect("a vCPU did not run"));
        }
    }

    fn parked_and_live(vcpus: &Vcpus) -> (usize, usize) {
        let state = vcpus.control.lock();
        (state.parked, state.live)
    }

    #[test]
    fn threads_are_held_until_the_first_resume() {
        let (vcpus, rx) = spawn_fakes(2, |_| None);
        assert!(vcpus.pause(DEADLINE), "spawned threads must park at once");
        assert_eq!(parked_and_live(&vcpus), (2, 2));
        assert!(rx.try_recv().is_err(), "a held vCPU ran the guest");
        vcpus.resume();
        each_runs(&rx, 2);
        assert_eq!(vcpus.stop(DEADLINE), 0);
    }

    #[test]
    fn pause_returns_once_every_thread_is_parked_outside_the_guest() {
        let (vcpus, rx) = spawn_fakes(3, |_| None);
        vcpus.resume();
        each_runs(&rx, 3);
        for round in 0..20 {
            assert!(vcpus.pause(DEADLINE), "round {round}: pause timed out");
            assert_eq!(parked_and_live(&vcpus), (3, 3), "round {round}");
            // Every run started before its thread parked; none starts while parked.
            while rx.try_recv().is_ok() {}
            assert!(rx.try_recv().is_err(), "round {round}: a paused vCPU ran");
            vcpus.resume();
            each_runs(&rx, 3);
        }
        assert_eq!(vcpus.stop(DEADLINE), 0);
    }

    #[test]
    fn serve_paused_runs_once_on_each_paused_vcpu_thread_and_not_the_guest() {
        let (vcpus, rx) = spawn_fakes(3, |_| None);
        vcpus.resume();
        each_runs(&rx, 3);
        assert!(!vcpus.serve_paused(DEADLINE), "served while running");
        assert!(vcpus.pause(DEADLINE));
        while rx.try_recv().is_ok() {}
        for _ in 0..2 {
            assert!(vcpus.serve_paused(DEADLINE));
            let mut served: Vec<usize> =
                (0..3).map(|_| rx.recv_timeout(DEADLINE).unwrap()).collect();
            served.sort_unstable();
            assert_eq!(served, vec![SERVED, SERVED + 1, SERVED + 2]);
            assert!(rx.try_recv().is_err(), "a paused vCPU ran the guest");
            assert_eq!(parked_and_live(&vcpus), (3, 3));
        }
        vcpus.resume();
        each_runs(&rx, 3);
        assert_eq!(vcpus.stop(DEADLINE), 0);
    }

    #[test]
    fn a_request_made_while_a_thread_is_still_starting_is_served() {
        register_kick_handler().unwrap();
        let (tx, rx) = channel();
        let (release, held) = channel::<()>();
        let mut vcpus = Vcpus::new();
        vcpus
            .spawn("fake0".to_string(), move || {
                let _ = held.recv();
                FakeGuest {
                    index: 0,
                    immediate_exit: Box::new(AtomicU8::new(0)),
                    runs: tx,
                    end_at: None,
                    count: 0,
                }
            })
            .unwrap();
        let vcpus = Arc::new(vcpus);
        let server = {
            let vcpus = vcpus.clone();
            std::thread::spawn(move || vcpus.serve_paused(DEADLINE))
        };
        // The request is made before the thread reaches its loop.
        assert!(vcpus
            .control
            .wait_until(Instant::now() + DEADLINE, |s| s.requests == 1));
        release.send(()).unwrap();
        assert!(server.join().unwrap(), "the request was never served");
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), SERVED);
        let vcpus = Arc::try_unwrap(vcpus).ok().unwrap();
        assert_eq!(vcpus.stop(DEADLINE), 0);
    }

    #[test]
    fn stop_joins_running_threads() {
        let (vcpus, rx) = spawn_fakes(3, |_| None);
        vcpus.resume();
        each_runs(&rx, 3);
        let started = Instant::now();
        assert_eq!(vcpus.stop(DEADLINE), 0);
        assert!(started.elapsed() < DEADLINE / 2, "a kick was lost");
    }

    #[test]
    fn stop_joins_paused_threads() {
        let (vcpus, rx) = spawn_fakes(2, |_| None);
        vcpus.resume();
        each_runs(&rx, 2);
        assert!(vcpus.pause(DEADLINE));
        assert_eq!(vcpus.stop(DEADLINE), 0);
    }

    #[test]
    fn stop_before_the_first_resume_ends_threads_without_running_the_guest() {
        let (vcpus, rx) = spawn_fakes(2, |_| None);
        assert_eq!(vcpus.stop(DEADLINE), 0);
        assert!(rx.try_recv().is_err(), "a vCPU ran after a stop");
    }

    #[test]
    fn a_vcpu_that_ends_by_itself_does_not_hold_up_pause_or_stop() {
        let (vcpus, rx) = spawn_fakes(2, |index| (index == 0).then_some(1));
        vcpus.resume();
        each_runs(&rx, 2);
        assert!(vcpus
            .control
            .wait_until(Instant::now() + DEADLINE, |s| s.live == 1));
        assert!(vcpus.pause(DEADLINE));
        assert_eq!(parked_and_live(&vcpus), (1, 1));
        assert_eq!(vcpus.stop(DEADLINE), 0);
    }

    /// Sends the kick signal to the calling thread; it is handled before this returns.
    fn kick_self() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: signals this very thread, whose handler is installed.
        let rc = unsafe { libc::pthread_kill(me, kick_signal()) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn the_kick_sets_immediate_exit_of_an_armed_thread_only() {
        register_kick_handler().unwrap();
        let byte = AtomicU8::new(0);
        // SAFETY: `byte` outlives `arm`.
        let arm = unsafe { KickArm::new(byte.as_ptr()) };
        kick_self();
        assert_eq!(byte.load(Ordering::SeqCst), 1);
        arm.clear();
        assert_eq!(byte.load(Ordering::SeqCst), 0);
        drop(arm);
        kick_self();
        assert_eq!(
            byte.load(Ordering::SeqCst),
            0,
            "a disarmed thread was written"
        );
    }

    /// The race a sleep loop papers over: the VMM asks for a pause and kicks just after the
    /// vCPU read "run" and just before it enters KVM_RUN. immediate_exit makes that run
    /// return at once.
    #[test]
    fn a_kick_between_the_state_check_and_kvm_run_is_not_lost() {
        register_kick_handler().unwrap();
        let (vcpus, _rx) = spawn_fakes(0, |_| None);
        let byte = AtomicU8::new(0);
        // SAFETY: `byte` outlives `arm`.
        let arm = unsafe { KickArm::new(byte.as_ptr()) };
        vcpus.resume();
        arm.clear();
        assert_eq!(vcpus.control.next(&mut 0), Wanted::Run);
        vcpus.control.set(Wanted::Pause);
        kick_self();
        let started = Instant::now();
        assert!(fake_kvm_run(&byte, DEADLINE), "the kick was lost");
        assert!(started.elapsed() < DEADLINE / 2);
        drop(arm);
    }
}
