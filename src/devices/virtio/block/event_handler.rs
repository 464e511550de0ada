//! The drive on the VMM thread's event loop: queue notifications and rate limiter timer
//! expirations drain the queue; each chain is checked, parsed, charged to the limiter and run,
//! or, on an `Async` drive, a read or write is handed to io_uring and its completion (the
//! engine's eventfd) writes the status and the used ring.

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::epoll::EventSet;

use super::config::CacheType;
use super::disk::Disk;
use super::disk::SECTOR_SIZE;
use super::exec::{self, ExecContext};
use super::request::{Request, RequestType, HEADER_SIZE, ID_BYTES};
use super::uring::{AsyncEngine, Completion, Pending};
use super::{Block, GuestLogs};
use crate::devices::virtio::buffers;
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{
    charge_descriptors, drain, ChainOutcome, DrainEnd, QueueError,
};
use crate::metrics::BlockDeviceMetrics;
use crate::rate_limiter::{RateLimiter, TokenType};
use crate::vstate::memory::GuestMemory;

/// The parts of a drive one chain needs, borrowed while the queue is borrowed too.
struct Worker<'a> {
    drive: &'a str,
    disk: &'a mut Disk,
    limiter: &'a mut RateLimiter,
    segments: &'a mut Vec<Segment>,
    mem: &'a GuestMemory,
    read_only: bool,
    cache: CacheType,
    id: &'a [u8; ID_BYTES],
    metrics: &'a BlockDeviceMetrics,
    logs: &'a GuestLogs,
    engine: Option<&'a mut AsyncEngine>,
    /// Chains handed to the engine in this drain.
    taken: bool,
    /// A chain waited for a free slot of the engine.
    full: bool,
}

impl Worker<'_> {
    fn handle(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let Some(status) = buffers::last_writable_byte(self.mem, self.segments) else {
            return ChainOutcome::Broken(QueueError::NoStatus);
        };
        let req = match Request::parse(self.mem, self.segments, self.disk.sectors()) {
            Ok(req) => req,
            Err(e) => {
                self.metrics.execute_fails.inc();
                self.metrics.invalid_reqs_count.inc();
                if let Some(n) = self.logs.bad_request.hit() {
                    log::warn!(
                        "Drive {}: bad request refused: {e} ({n} so far)",
                        self.drive
                    );
                }
                return self.finish(status, VIRTIO_BLK_S_IOERR, 0);
            }
        };
        let is_data = matches!(req.kind, RequestType::In | RequestType::Out);
        let queue_size = usize::from(queue.size());
        if is_data
            && (self.engine.as_ref()).is_some_and(|e| !e.has_room() || e.in_flight() >= queue_size)
        {
            // A queue's worth is in flight (a driver can post a head again while it is): the
            // chain waits in the ring for a completion.
            self.full = true;
            return ChainOutcome::Throttled;
        }
        if !self.limiter.consume(1, TokenType::Ops) {
            self.metrics.rate_limiter_throttled_events.inc();
            return ChainOutcome::Throttled;
        }
        let bytes = req.transfer_bytes();
        if bytes > 0 && !self.limiter.consume(bytes, TokenType::Bytes) {
            self.limiter.manual_replenish(1, TokenType::Ops);
            self.metrics.rate_limiter_throttled_events.inc();
            return ChainOutcome::Throttled;
        }
        if is_data && !(req.kind == RequestType::Out && self.read_only) {
            if let Some(outcome) = self.submit(&req, head, status) {
                return outcome;
            }
        }
        let mut ctx = ExecContext {
            disk: self.disk,
            mem: self.mem,
            segments: self.segments,
            read_only: self.read_only,
            cache: self.cache,
            id: self.id,
        };
        let result = exec::execute(&req, &mut ctx);
        match (req.kind, result) {
            (RequestType::Unsupported(_), _) => {
                self.metrics.invalid_reqs_count.inc();
                self.finish(status, VIRTIO_BLK_S_UNSUPP, 0)
            }
            (kind, Ok(written)) => {
                match kind {
                    RequestType::In => {
                        self.metrics.read_count.inc();
                        self.metrics.read_bytes.add(bytes);
                    }
                    RequestType::Out => {
                        self.metrics.write_count.inc();
                        self.metrics.write_bytes.add(bytes);
                    }
                    RequestType::Flush => self.metrics.flush_count.inc(),
                    _ => {}
                }
                match self.finish(status, VIRTIO_BLK_S_OK, written) {
                    ChainOutcome::Used(used_len) => ChainOutcome::Moved {
                        used_len,
                        moved: bytes,
                    },
                    other => other,
                }
            }
            (kind, Err(e)) => {
                self.metrics.invalid_reqs_count.inc();
                if let Some(n) = self.logs.io_error.hit() {
                    log::warn!(
                        "Drive {}: {kind:?} request failed: {e} ({n} so far)",
                        self.drive
                    );
                }
                self.finish(status, VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }

    /// Hands a read or write to the engine of an `Async` drive (None on a `Sync` one).
    fn submit(&mut self, req: &Request, head: u16, status: GuestAddress) -> Option<ChainOutcome> {
        let engine = self.engine.as_deref_mut()?;
        let write = req.kind == RequestType::Out;
        let start = if write { u64::from(HEADER_SIZE) } else { 0 };
        let pieces = buffers::stream_pieces(self.segments, !write, start, u64::from(req.data_len));
        let pending = Pending {
            head,
            status,
            kind: req.kind,
            len: req.data_len,
        };
        let offset = req.sector * SECTOR_SIZE;
        Some(match engine.push(self.mem, offset, pending, pieces) {
            Ok(()) => {
                self.taken = true;
                ChainOutcome::Taken {
                    moved: u64::from(req.data_len),
                }
            }
            Err(e) => {
                self.metrics.invalid_reqs_count.inc();
                if let Some(n) = self.logs.io_error.hit() {
                    log::warn!(
                        "Drive {}: request not submitted: {e} ({n} so far)",
                        self.drive
                    );
                }
                self.finish(status, VIRTIO_BLK_S_IOERR, 0)
            }
        })
    }

    /// Writes the status; the used length counts the data written and the status byte.
    fn finish(&self, status_addr: GuestAddress, status: u32, written: u32) -> ChainOutcome {
        match exec::write_status(self.mem, status_addr, status) {
            Ok(()) => ChainOutcome::Used(written.saturating_add(1)),
            Err(_) => ChainOutcome::Broken(QueueError::NoStatus),
        }
    }
}

impl Block {
    /// Serves the queue: at most one queue's worth of chains, then yields to the event loop.
    /// On an `Async` drive the completions the kernel posted are answered in the same pass
    /// (before the drain, so their slots take new chains, and after the submission, for what
    /// the page cache served at once), with one interrupt for all.
    pub fn process_queue(&mut self) {
        let mut done = std::mem::take(&mut self.completions);
        if let Some(engine) = self.engine.as_mut() {
            engine.reap_ready(&mut done);
        }
        let throttled = &self.metrics.rate_limiter_throttled_events;
        let Some(active) = self.core.serving(&self.limiter, Some(throttled)) else {
            // Completions still go to the used ring (dropped when the device needs a reset).
            self.complete(&mut done);
            self.completions = done;
            return;
        };
        let mut worker = Worker {
            drive: &self.id,
            disk: &mut self.disk,
            limiter: &mut self.limiter,
            segments: &mut self.segments,
            mem: &active.mem,
            read_only: self.read_only,
            cache: self.cache,
            id: &self.id_bytes,
            metrics: &self.metrics,
            logs: &self.logs,
            engine: self.engine.as_mut(),
            taken: false,
            full: false,
        };
        let [queue] = &mut active.queues;
        let (end, used_any) = drain(queue, &active.mem, |q, head| {
            let outcome = worker.handle(q, head);
            charge_descriptors(outcome, worker.segments.len())
        });
        let (taken, full) = (worker.taken, worker.full);
        let mut freed = 0;
        if let Some(engine) = self.engine.as_mut() {
            if let Err(e) = engine.submit() {
                self.metrics.event_fails.inc();
                log::error!("Drive {}: {e}", self.id);
            }
            // Orphans of a reset free slots too.
            freed = engine.reap_ready(&mut done);
        }
        let freed = freed > 0;
        let (used, broken) = self.complete_into(&mut done);
        self.completions = done;
        let end = match broken {
            Some(e) if !matches!(end, DrainEnd::Broken(_)) => DrainEnd::Broken(e),
            _ => end,
        };
        let used_any = used_any || used;
        // Chains left waiting for a free slot go when one was freed: come back to them.
        if full && freed && matches!(end, DrainEnd::Throttled) {
            self.core.kick(0);
        }
        // The core kicks the queue when the budget ran out (the driver keeps the ring full).
        match self.core.finish_drain(0, end, used_any) {
            DrainEnd::Empty | DrainEnd::Throttled if !used_any && !taken => {
                self.metrics.no_avail_buffer.inc();
            }
            _ => {}
        }
    }

    /// The engine signalled completions: the queue is served, completions first.
    pub(super) fn on_completions(&mut self) {
        if let Some(engine) = &self.engine {
            engine.consume_event();
        }
        self.process_queue();
    }

    /// Finishes `done` (emptied) into the used ring, with the interrupt the driver wants.
    /// Dropped when the device is not serving (reset, or waiting for one).
    pub(super) fn complete(&mut self, done: &mut Vec<Completion>) {
        if done.is_empty() {
            return;
        }
        let (used_any, broken) = self.complete_into(done);
        let end = broken.map_or(DrainEnd::Empty, DrainEnd::Broken);
        self.core.finish_drain(0, end, used_any);
    }

    /// Writes the status of each of `done` (emptied) and puts it in the used ring; returns
    /// whether any went there and why the queue broke, if it did. Dropped when the device is
    /// not serving (reset, or waiting for one).
    fn complete_into(&mut self, done: &mut Vec<Completion>) -> (bool, Option<QueueError>) {
        if done.is_empty() {
            return (false, None);
        }
        let needs_reset = self.core.interrupt.needs_reset();
        let Some(active) = self.core.active.as_mut().filter(|_| !needs_reset) else {
            done.clear();
            return (false, None);
        };
        let [queue] = &mut active.queues;
        let mut used_any = false;
        let mut broken = None;
        for c in done.drain(..) {
            let ok = c.ok();
            let bytes = u64::from(c.request.len);
            let written = match (c.request.kind, ok) {
                (RequestType::In, true) => {
                    self.metrics.read_count.inc();
                    self.metrics.read_bytes.add(bytes);
                    c.request.len
                }
                (_, true) => {
                    self.metrics.write_count.inc();
                    self.metrics.write_bytes.add(bytes);
                    0
                }
                (kind, false) => {
                    self.metrics.invalid_reqs_count.inc();
                    if let Some(n) = self.logs.io_error.hit() {
                        log::warn!(
                            "Drive {}: {kind:?} request failed: result {} of {} bytes ({n} so far)",
                            self.id,
                            c.result,
                            c.request.len
                        );
                    }
                    0
                }
            };
            let status = if ok {
                VIRTIO_BLK_S_OK
            } else {
                VIRTIO_BLK_S_IOERR
            };
            if broken.is_some() {
                continue;
            }
            if exec::write_status(&active.mem, c.request.status, status).is_err() {
                broken = Some(QueueError::NoStatus);
                continue;
            }
            match queue.add_used(&active.mem, c.request.head, written.saturating_add(1)) {
                Ok(()) => used_any = true,
                Err(e) => broken = Some(QueueError::Used(e)),
            }
        }
        (used_any, broken)
    }
}

/// The event data of the engine's completions (the queue's and the limiter's are 0 and 1).
const EVENT_COMPLETION: u32 = 2;

impl MutEventSubscriber for Block {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        if data == EVENT_COMPLETION {
            self.on_completions();
            return;
        }
        let (queue, timer) = (
            &self.metrics.queue_event_count,
            &self.metrics.rate_limiter_event_count,
        );
        if self
            .core
            .on_queue_or_limiter_event(data, &mut self.limiter, queue, timer)
        {
            self.process_queue();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.watch_queue_and_limiter(ops, &self.limiter);
        if let Some(engine) = &self.engine {
            let event =
                Events::with_data(engine.completion_event(), EVENT_COMPLETION, EventSet::IN);
            self.core.watch(ops, [event]);
        }
    }
}
