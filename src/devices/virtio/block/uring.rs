//! The `Async` engine of a drive: reads and writes submitted through io_uring, their
//! completions signalled on an eventfd the VMM thread's event loop watches.
//!
//! Bounds a guest cannot move: the ring and the in-flight table are sized once, at the
//! largest queue size, when the drive is made; each in-flight request holds one slot (the
//! head, the status address, the data length, its iovecs: at most [`MAX_QUEUE_SIZE`] of
//! them, as a chain has no more descriptors). When every slot is taken the device stops
//! taking chains until one completes. The iovecs point into guest memory the chain's checks
//! ([`crate::devices::virtio::buffers::Layout::check`]) found inside guest RAM with the
//! access the request needs; the engine keeps a handle on guest memory while anything is in
//! flight, so the mapping outlives every request the kernel still works on.
//!
//! [`AsyncEngine::quiesce`] waits (bounded) for what is in flight: the device calls it before
//! a change of backing file and a snapshot, so nothing completes against a stale file, and a
//! snapshot never records a half-done request. A driver's reset never waits (it runs on a
//! vCPU thread holding the device, and a guest can reset at will):
//! [`AsyncEngine::orphan_in_flight`] orphans every request at once, with no syscall. An
//! orphan's completion is dropped, so it never reaches the reset queue; its slot stays taken
//! until the kernel gives it back, and guest memory stays mapped while it is in flight (for
//! good if the engine is dropped before it completes). What an orphaned read still writes
//! lands in the guest's own memory, in buffers its driver gave up by resetting.
//!
//! The ring cannot be turned against the seccomp filter (whose rules io_uring's operations
//! never meet): it is made while the drive is built, before the VMM thread is filtered
//! (`io_uring_setup` is not in the filter), disabled until its drive file (fixed file, slot
//! 0) and eventfd are registered and the kernel's restrictions are in place: its SQEs may only
//! be READV or WRITEV on a fixed file, and the only `io_uring_register` left is
//! FILES_UPDATE (a PATCH of the drive's path swaps slot 0). Any other SQE completes with
//! -EACCES; any other register operation fails with EACCES.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::RequestType;
use crate::devices::virtio::queue::MAX_QUEUE_SIZE;
use crate::vstate::memory::GuestMemory;

/// How long [`AsyncEngine::quiesce`] waits for requests in flight.
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// `IORING_REGISTER_FILES_UPDATE` (include/uapi/linux/io_uring.h): the one register
/// operation a drive's ring allows once it runs; the seccomp profile allows no other.
pub const IORING_REGISTER_FILES_UPDATE: u8 = 6;

/// The fixed-file slot of the drive file.
const FILE_SLOT: u32 = 0;

thread_local! {
    /// Set on the thread whose seccomp filter no longer allows `io_uring_setup`.
    static SEALED: Cell<bool> = const { Cell::new(false) };
}

/// Called on the VMM thread just before its seccomp filter is installed: a ring made on it
/// after that fails with [`UringError::Sealed`] instead of calling `io_uring_setup` (which
/// the filter kills). No path builds a drive then (drives are built before `InstanceStart`
/// or at a snapshot load, both before the filter); this keeps it so.
pub fn seal_thread() {
    SEALED.with(|s| s.set(true));
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// io_uring_setup failed (EPERM, ENOSYS: the kernel refuses io_uring).
    #[error("io_uring is not available: {0}")]
    Setup(#[source] std::io::Error),
    /// A ring was asked for after the thread's seccomp filter was installed.
    #[error("An io_uring cannot be made after the VMM thread's seccomp filter is installed")]
    Sealed,
    /// The drive file cannot be registered, or the restrictions cannot be put in place.
    #[error("Cannot restrict the io_uring to the drive file: {0}")]
    Restrict(#[source] std::io::Error),
    /// The completion eventfd cannot be made or registered.
    #[error("Cannot set up the io_uring completion event: {0}")]
    Event(#[source] std::io::Error),
    /// A buffer is not inside one guest memory region.
    #[error("Buffer at {0:#x} is not inside guest memory")]
    Buffer(u64),
    /// The submission queue is full (cannot happen: it has a slot per request).
    #[error("The io_uring submission queue is full")]
    SubmissionFull,
    /// io_uring_enter failed.
    #[error("io_uring_enter failed: {0}")]
    Enter(#[source] std::io::Error),
}

/// Whether this host lets a process make a drive's restricted ring: makes (and drops) one of
/// one entry on `file` until one was made, then answers yes without a ring (it depends on
/// the kernel, its io_uring sysctl and the process's seccomp filter, not on the drive file),
/// so a drive's ring is made once, by its engine, not again at every `PUT /drives`.
pub fn check_available(file: RawFd) -> Result<(), UringError> {
    static AVAILABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SEALED.with(Cell::get) {
        return Err(UringError::Sealed);
    }
    if AVAILABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    AsyncEngine::with_slots(1, file)?;
    AVAILABLE.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// A disabled ring of `entries` on `file` (fixed file, slot 0), its completions signalled on
/// `completion`, restricted (READV and WRITEV SQEs on a fixed file; FILES_UPDATE), enabled.
fn restricted_ring(entries: u32, file: RawFd, completion: RawFd) -> Result<IoUring, UringError> {
    if SEALED.with(Cell::get) {
        return Err(UringError::Sealed);
    }
    let ring = IoUring::builder()
        .setup_r_disabled()
        .build(entries)
        .map_err(UringError::Setup)?;
    let submitter = ring.submitter();
    submitter
        .register_eventfd(completion)
        .map_err(UringError::Event)?;
    submitter
        .register_files(&[file])
        .map_err(UringError::Restrict)?;
    let mut rules = [
        Restriction::sqe_op(opcode::Readv::CODE),
        Restriction::sqe_op(opcode::Writev::CODE),
        Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
        Restriction::register_op(IORING_REGISTER_FILES_UPDATE),
    ];
    submitter
        .register_restrictions(&mut rules)
        .map_err(UringError::Restrict)?;
    submitter
        .register_enable_rings()
        .map_err(UringError::Restrict)?;
    Ok(ring)
}

/// An iovec (`struct iovec`'s layout), kept as integers so that the engine is `Send`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct IoVec {
    base: usize,
    len: usize,
}

/// A request the engine took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The chain's head, for the used ring.
    pub head: u16,
    /// Where its status byte goes.
    pub status: GuestAddress,
    /// Read or write.
    pub kind: RequestType,
    /// Its data bytes: any other result is an error.
    pub len: u32,
}

/// One finished request, or an error for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request.
    pub request: Pending,
    /// The kernel's result: the bytes moved, or a negative errno.
    pub result: i32,
}

impl Completion {
    /// True when the whole request was done.
    pub fn ok(&self) -> bool {
        u32::try_from(self.result).is_ok_and(|n| n == self.request.len)
    }
}

#[derive(Default)]
struct Slot {
    pending: Option<Pending>,
    /// Dropped at completion (a reset or a path change while it was in flight).
    orphan: bool,
    iovecs: Vec<IoVec>,
}

/// The io_uring of one drive.
pub struct AsyncEngine {
    ring: IoUring,
    completion: EventFd,
    slots: Vec<Slot>,
    free: Vec<u16>,
    in_flight: usize,
    /// Of `in_flight`, the orphans.
    orphans: usize,
    /// Not yet handed to the kernel.
    unsubmitted: usize,
    /// Guest memory, held while a request is in flight.
    mem: Option<GuestMemory>,
}

impl AsyncEngine {
    /// A restricted ring on the drive file `file` of [`MAX_QUEUE_SIZE`] entries and as many
    /// slots, its completions signalled on a fresh eventfd.
    pub fn new(file: RawFd) -> Result<Self, UringError> {
        Self::with_slots(MAX_QUEUE_SIZE, file)
    }

    /// As `new`, with `slots` requests in flight at most.
    pub fn with_slots(slots: u16, file: RawFd) -> Result<Self, UringError> {
        let completion = EventFd::new(EFD_NONBLOCK).map_err(UringError::Event)?;
        let ring = restricted_ring(
            u32::from(slots).next_power_of_two(),
            file,
            completion.as_raw_fd(),
        )?;
        Ok(Self {
            ring,
            completion,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            free: (0..slots).rev().collect(),
            in_flight: 0,
            orphans: 0,
            unsubmitted: 0,
            mem: None,
        })
    }

    /// The eventfd the event loop watches.
    pub fn completion_event(&self) -> &EventFd {
        &self.completion
    }

    /// Makes `file` the drive file of the requests pushed from now on (FILES_UPDATE of slot
    /// 0; requests in flight keep the file they were issued on).
    pub fn set_file(&self, file: RawFd) -> Result<(), UringError> {
        self.ring
            .submitter()
            .register_files_update(FILE_SLOT, &[file])
            .map(drop)
            .map_err(UringError::Restrict)
    }

    /// Requests taken and not yet completed (orphans included).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// True when a request can be taken now.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Queues the read or write `request` of the drive file at byte `offset` between the
    /// file and the guest memory `pieces` (checked by the caller to lie in guest memory with
    /// the access `request.kind` needs), without submitting it ([`Self::submit`] does). A read
    /// marks its pieces dirty now: a snapshot, the only reader of the dirty bitmap, waits for
    /// what is in flight first.
    pub fn push(
        &mut self,
        mem: &GuestMemory,
        offset: u64,
        request: Pending,
        pieces: impl Iterator<Item = (GuestAddress, usize)>,
    ) -> Result<(), UringError> {
        let Some(&index) = self.free.last() else {
            return Err(UringError::SubmissionFull);
        };
        let slot = &mut self.slots[usize::from(index)];
        slot.iovecs.clear();
        for (addr, len) in pieces {
            for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
                let slice = slice.map_err(|_| UringError::Buffer(addr.0))?;
                // A chain has at most a queue's worth of descriptors; a piece crossing a
                // region boundary (never in RAM with guard pages between regions) is no more.
                if slot.iovecs.len() >= usize::from(MAX_QUEUE_SIZE) {
                    return Err(UringError::Buffer(addr.0));
                }
                if request.kind == RequestType::In {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
                slot.iovecs.push(IoVec {
                    base: slice.ptr_guard_mut().as_ptr() as usize,
                    len: slice.len(),
                });
            }
        }
        let iovecs = slot.iovecs.as_ptr().cast::<libc::iovec>();
        let count = slot.iovecs.len() as u32;
        // Fixed sets IOSQE_FIXED_FILE, which the ring requires of every SQE.
        let file = types::Fixed(FILE_SLOT);
        let entry = match request.kind {
            RequestType::In => opcode::Readv::new(file, iovecs, count)
                .offset(offset)
                .build(),
            _ => opcode::Writev::new(file, iovecs, count)
                .offset(offset)
                .build(),
        }
        .user_data(u64::from(index));
        // SAFETY: the entry points at the slot's iovecs, which stay unchanged until its
        // completion is reaped (the slot is not free until then), and they point at guest
        // memory that stays mapped while `self.mem` holds it (set below, kept until nothing is
        // in flight).
        unsafe { self.ring.submission().push(&entry) }.map_err(|_| UringError::SubmissionFull)?;
        slot.pending = Some(request);
        slot.orphan = false;
        self.free.pop();
        self.in_flight += 1;
        self.unsubmitted += 1;
        if self.mem.is_none() {
            self.mem = Some(mem.clone());
        }
        Ok(())
    }

    /// Hands the queued requests to the kernel.
    pub fn submit(&mut self) -> Result<(), UringError> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        self.ring.submit().map_err(UringError::Enter)?;
        self.unsubmitted = 0;
        Ok(())
    }

    /// Consumes the completion event and appends the finished requests (orphans dropped) to
    /// `out`, in the order the kernel finished them. Returns how many slots it freed
    /// (orphans included).
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        self.consume_event();
        self.reap_ring(out)
    }

    /// Reads the completion event (the event loop watches it level-triggered).
    pub fn consume_event(&self) {
        let _ = self.completion.read();
    }

    /// As `reap` when the ring holds completions; nothing (and no syscall) otherwise: the
    /// device calls it around each drain.
    pub fn reap_ready(&mut self, out: &mut Vec<Completion>) -> usize {
        if self.in_flight > 0 && !self.ring.completion().is_empty() {
            self.reap(out)
        } else {
            0
        }
    }

    /// As `reap`, leaving the completion event as it is; no syscall, and nothing allocated
    /// but room in `out` when it has none.
    fn reap_ring(&mut self, out: &mut Vec<Completion>) -> usize {
        let mut freed = 0;
        for c in self.ring.completion() {
            let index = c.user_data();
            let Some(slot) = usize::try_from(index)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
            else {
                continue;
            };
            let Some(request) = slot.pending.take() else {
                continue;
            };
            // The slot index fits: there are at most MAX_QUEUE_SIZE slots.
            self.free.push(index as u16);
            self.in_flight -= 1;
            freed += 1;
            if std::mem::take(&mut slot.orphan) {
                self.orphans -= 1;
            } else {
                out.push(Completion {
                    request,
                    result: c.result(),
                });
            }
        }
        if self.in_flight == 0 {
            self.mem = None;
        }
        freed
    }

    /// Orphans every request in flight without waiting, with no syscall and no allocation (a
    /// reset runs on a vCPU thread): each is dropped when the kernel finishes it, or was
    /// already, when its completion is reaped. Returns how many it orphaned now.
    pub fn orphan_in_flight(&mut self) -> usize {
        if self.in_flight == self.orphans {
            return 0;
        }
        let mut orphaned = 0;
        for slot in &mut self.slots {
            if slot.pending.is_some() && !slot.orphan {
                slot.orphan = true;
                orphaned += 1;
            }
        }
        self.orphans += orphaned;
        orphaned
    }

    /// Requests in flight that were orphaned.
    pub fn orphans(&self) -> usize {
        self.orphans
    }

    /// Waits until nothing is in flight (orphans included) or `timeout` passed, handing each
    /// completion of a request that is not an orphan to `done`; at the deadline what is left
    /// is orphaned. Returns how many are still in flight.
    pub fn quiesce(&mut self, timeout: Duration, mut done: impl FnMut(Completion)) -> usize {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let _ = self.submit();
        loop {
            self.reap_ring(&mut out);
            out.drain(..).for_each(&mut done);
            if self.in_flight == 0 {
                return 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.orphan_in_flight();
                return self.in_flight;
            }
            let ts = types::Timespec::from(left.min(Duration::from_millis(100)));
            let args = types::SubmitArgs::new().timespec(&ts);
            // ETIME is the timeout; anything else is retried until the deadline.
            let _ = self.ring.submitter().submit_with_args(1, &args);
        }
    }
}

impl Drop for AsyncEngine {
    /// The kernel finishes what is in flight before guest memory can go (bounded wait); what
    /// outlives the wait keeps guest memory mapped for good (a late read must never land in
    /// memory that was unmapped or reused).
    fn drop(&mut self) {
        if self.in_flight > 0 && self.quiesce(QUIESCE_TIMEOUT, drop) > 0 {
            std::mem::forget(self.mem.take());
        }
    }
}

#[cfg(test)]
#[path = "uring_tests.rs"]
mod tests;
