//! virtio-rng (virtio 1.x 5.4), Firecracker's `entropy` device: one queue whose device-writable
//! buffers are filled from the host's getrandom(2), under an optional rate limiter.
//!
//! A chain with any device-readable buffer is refused (used length 0). At most
//! [`MAX_BYTES_PER_REQUEST`] bytes go into one chain whatever its size, so a huge buffer cannot
//! keep the VMM thread busy; the used length tells the driver how much it got.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::buffers::{self, Layout};
use super::chain::{self, Segment};
use super::device_core::{
    core_accessors, queue_and_limiter_events, CoreDevice, DeviceCore, DeviceLabel,
};
use super::queue::{charge_descriptors, drain, ChainOutcome, MAX_QUEUE_SIZE};
use super::VIRTIO_F_VERSION_1;
use crate::logger::RateLimitedLog;
use crate::metrics::EntropyDeviceMetrics;
use crate::rate_limiter::{
    RateLimiter, RateLimiterConfig, RateLimiterError, RateLimiterState, RateLimiterStateError,
    TokenType,
};
use crate::vstate::memory::GuestMemory;

/// The `entropy` section and the body of `PUT /entropy` (virtio-rng).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Limits on the entropy the guest may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// The most entropy one request receives.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
/// Bytes asked of getrandom at once.
const CHUNK: usize = 4096;

static BAD_REQUEST_LOG: RateLimitedLog = RateLimitedLog::new();

/// Errors of entropy device creation.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// An eventfd cannot be created.
    #[error("Cannot create an event for the entropy device")]
    Event(#[source] std::io::Error),
    /// The rate limiter's timer cannot be created.
    #[error(transparent)]
    RateLimiter(#[from] RateLimiterError),
}

/// The entropy device.
pub struct Rng {
    core: DeviceCore<1>,
    limiter: RateLimiter,
    segments: Vec<Segment>,
    metrics: Arc<EntropyDeviceMetrics>,
}

/// Fills `buf` from the host's getrandom(2) (also the generation ID's source).
pub fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which is valid and
        // exclusively borrowed for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl Rng {
    /// An entropy device from its configuration, counting into `metrics` (which the caller
    /// registers as `entropy`).
    pub fn new(
        config: &EntropyConfig,
        metrics: Arc<EntropyDeviceMetrics>,
    ) -> Result<Self, RngError> {
        let label = DeviceLabel {
            name: "entropy".to_string(),
            who: "Entropy device".to_string(),
        };
        Ok(Self {
            core: DeviceCore::new(VIRTIO_F_VERSION_1, label, metrics.clone())
                .map_err(RngError::Event)?,
            limiter: RateLimiter::new(&config.rate_limiter.unwrap_or_default())?,
            segments: Vec::with_capacity(usize::from(MAX_QUEUE_SIZE)),
            metrics,
        })
    }

    /// The rate limiter's remaining tokens, for a snapshot.
    pub fn save_limiter(&mut self) -> RateLimiterState {
        self.limiter.save_state()
    }

    /// Gives the rate limiter the tokens a snapshot saved (never above its buckets).
    pub fn restore_limiter(
        &mut self,
        state: &RateLimiterState,
    ) -> Result<(), RateLimiterStateError> {
        self.limiter.restore_state(state)
    }

    /// Serves the queue: at most one queue's worth of chains, then yields to the event loop.
    pub fn process_queue(&mut self) {
        let throttled = &self.metrics.entropy_rate_limiter_throttled;
        let Some(active) = self.core.serving(&self.limiter, Some(throttled)) else {
            return;
        };
        let (limiter, segments, mem) = (&mut self.limiter, &mut self.segments, &active.mem);
        let metrics = &*self.metrics;
        let [queue] = &mut active.queues;
        let (end, used_any) = drain(queue, mem, |queue, head| {
            let outcome = fill_chain(mem, queue, head, segments, limiter, metrics);
            charge_descriptors(outcome, segments.len())
        });
        self.core.finish_drain(0, end, used_any);
    }
}

/// Handles one chain: checks it, charges the limiter, fills its writable buffers.
fn fill_chain(
    mem: &GuestMemory,
    queue: &Queue,
    head: u16,
    segments: &mut Vec<Segment>,
    limiter: &mut RateLimiter,
    metrics: &EntropyDeviceMetrics,
) -> ChainOutcome {
    let desc_table = GuestAddress(queue.desc_table());
    if let Err(e) = chain::read_chain(mem, desc_table, queue.size(), head, segments) {
        return ChainOutcome::Broken(e.into());
    }
    let layout = match Layout::check(mem, segments) {
        Ok(layout) if layout.readable == 0 => layout,
        Ok(_) => return refuse(metrics, "device-readable buffer in an entropy request"),
        Err(e) => return refuse(metrics, &e.to_string()),
    };
    let len = layout.writable.min(MAX_BYTES_PER_REQUEST);
    if !limiter.consume(1, TokenType::Ops) {
        metrics.entropy_rate_limiter_throttled.inc();
        return ChainOutcome::Throttled;
    }
    if !limiter.consume(u64::from(len), TokenType::Bytes) {
        limiter.manual_replenish(1, TokenType::Ops);
        metrics.entropy_rate_limiter_throttled.inc();
        return ChainOutcome::Throttled;
    }
    let mut buf = [0u8; CHUNK];
    let mut written = 0u32;
    for (addr, n) in buffers::stream_pieces(segments, true, 0, u64::from(len)) {
        let mut done = 0;
        while done < n {
            let part = (n - done).min(CHUNK);
            if host_random(&mut buf[..part]).is_err() {
                metrics.host_rng_fails.inc();
                return ChainOutcome::Used(written);
            }
            if mem
                .write_slice(&buf[..part], addr.unchecked_add(done as u64))
                .is_err()
            {
                return ChainOutcome::Used(written);
            }
            done += part;
            written += part as u32;
        }
    }
    metrics.entropy_bytes.add(u64::from(written));
    ChainOutcome::Used(written)
}

fn refuse(metrics: &EntropyDeviceMetrics, why: &str) -> ChainOutcome {
    metrics.execute_fails.inc();
    if let Some(n) = BAD_REQUEST_LOG.hit() {
        log::warn!("Entropy device: bad request refused: {why} ({n} so far)");
    }
    ChainOutcome::Used(0)
}

impl CoreDevice for Rng {
    const DEVICE_TYPE: u32 = VIRTIO_ID_RNG;
    core_accessors!(core: DeviceCore<1>);

    fn config_read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn config_write(&mut self, _offset: u64, _data: &[u8]) {}
}

queue_and_limiter_events!(Rng, entropy_event_count, rate_limiter_event_count);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::{ActivateContext, VirtioDevice};
    use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn active_rng(
        mem: &GuestMemory,
        q: &MockSplitQueue<GuestMemory>,
        config: EntropyConfig,
    ) -> Rng {
        let mut rng = Rng::new(&config, Arc::new(EntropyDeviceMetrics::new())).unwrap();
        rng.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![q.create_queue().unwrap()],
            features: VIRTIO_F_VERSION_1,
        })
        .unwrap();
        rng
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn used_len(mem: &GuestMemory, q: &MockSplitQueue<GuestMemory>, i: u64) -> u32 {
        mem.read_obj(q.used_addr().unchecked_add(8 + 8 * i))
            .unwrap()
    }

    #[test]
    fn writable_buffers_are_filled_with_random_bytes() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut rng = active_rng(&mem, &q, EntropyConfig::default());
        q.add_desc_chains(&[desc(0x10_0000, 4096, VRING_DESC_F_WRITE as u16)], 0)
            .unwrap();
        rng.process_queue();
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(used_len(&mem, &q, 0), 4096);
        let mut buf = vec![0u8; 4096];
        mem.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
        let distinct = buf.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 200, "{distinct} distinct byte values");
    }

    #[test]
    fn readable_buffers_are_refused_and_huge_ones_capped() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut rng = active_rng(&mem, &q, EntropyConfig::default());
        q.add_desc_chains(
            &[
                desc(0x10_0000, 64, 0),
                desc(0x10_0000, 0x10_0000, VRING_DESC_F_WRITE as u16),
            ],
            0,
        )
        .unwrap();
        rng.process_queue();
        assert_eq!(q.used().idx().load(), 2);
        assert_eq!(used_len(&mem, &q, 0), 0);
        assert_eq!(used_len(&mem, &q, 1), MAX_BYTES_PER_REQUEST);
    }

    #[test]
    fn a_throttled_request_waits_and_is_not_dropped() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let config = EntropyConfig {
            rate_limiter: Some(RateLimiterConfig {
                bandwidth: None,
                ops: Some(TokenBucketConfig {
                    size: 1,
                    one_time_burst: None,
                    refill_time: 100,
                }),
            }),
        };
        let mut rng = active_rng(&mem, &q, config);
        let w = VRING_DESC_F_WRITE as u16;
        q.add_desc_chains(&[desc(0x10_0000, 16, w), desc(0x10_1000, 16, w)], 0)
            .unwrap();
        rng.process_queue();
        assert_eq!(q.used().idx().load(), 1, "the second request waits");
        assert!(rng.limiter.is_blocked());
        std::thread::sleep(std::time::Duration::from_millis(150));
        rng.limiter.on_timer().unwrap();
        rng.process_queue();
        assert_eq!(q.used().idx().load(), 2);
    }

    #[test]
    fn a_looping_chain_puts_the_device_in_needs_reset() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut rng = active_rng(&mem, &q, EntropyConfig::default());
        let next = (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16;
        q.desc_table()
            .store(
                0,
                RawDescriptor::from(Descriptor::new(0x10_0000, 16, next, 0)),
            )
            .unwrap();
        q.avail().ring().ref_at(0).unwrap().store(0);
        q.avail().idx().store(1);
        rng.process_queue();
        assert!(rng.core.interrupt.needs_reset());
        assert_eq!(q.used().idx().load(), 0);
        assert_eq!(rng.reset().len(), 1);
    }
}
