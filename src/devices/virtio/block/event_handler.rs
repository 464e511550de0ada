//! The drive on the VMM thread's event loop: queue notifications and rate limiter timer
//! expirations drain the queue; each chain is checked, parsed, charged to the limiter and run.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::config::CacheType;
use super::disk::Disk;
use super::exec::{self, ExecContext};
use super::request::{Request, RequestType, ID_BYTES};
use super::{Block, GuestLogs};
use crate::devices::virtio::buffers;
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::device_core::queue_and_limiter_events;
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
    pub fn process_queue(&mut self) {
        let throttled = &self.metrics.rate_limiter_throttled_events;
        let Some(active) = self.core.serving(&self.limiter, Some(throttled)) else {
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
        };
        let [queue] = &mut active.queues;
        let (end, used_any) = drain(queue, &active.mem, |q, head| {
            let outcome = worker.handle(q, head);
            charge_descriptors(outcome, worker.segments.len())
        });
        // The core kicks the queue when the budget ran out (the driver keeps the ring full).
        match self.core.finish_drain(0, end, used_any) {
            DrainEnd::Empty | DrainEnd::Throttled if !used_any => {
                self.metrics.no_avail_buffer.inc();
            }
            _ => {}
        }
    }
}

queue_and_limiter_events!(Block, queue_event_count, rate_limiter_event_count);
