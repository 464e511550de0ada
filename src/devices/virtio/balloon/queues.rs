//! The inflate and deflate queues: each request is an array of little-endian page numbers;
//! each page number passes the [`super::ledger`] rules or is refused and counted, and the pages
//! inflated are given back to the host ([`super::reclaim`]).

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::ledger::Ledger;
use super::reclaim::Runs;
use super::{BAD_REQUEST_LOG, MAX_PFNS_PER_CHAIN, PFN_COST};
use crate::devices::virtio::buffers::{read_stream, Layout};
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{charge_descriptors, ChainOutcome};
use crate::metrics::BalloonDeviceMetrics;
use crate::vstate::memory::GuestMemory;

/// What serving one queue needs.
pub(super) struct Work<'a> {
    pub mem: &'a GuestMemory,
    pub ledger: &'a mut Ledger,
    pub segments: &'a mut Vec<Segment>,
    pub pfns: &'a mut Vec<u32>,
    pub metrics: &'a BalloonDeviceMetrics,
    pub target: u32,
    pub inflate: bool,
}

impl Work<'_> {
    /// Handles one chain: checks it, reads its page numbers, applies each.
    pub fn chain(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let outcome = self.apply();
        charge_descriptors(outcome, self.segments.len())
    }

    fn apply(&mut self) -> ChainOutcome {
        match Layout::check(self.mem, self.segments) {
            Ok(layout) if layout.writable == 0 => {}
            Ok(_) => return self.refuse(&"device-writable buffer in a balloon request"),
            Err(e) => return self.refuse(&e),
        }
        if let Some(seg) = self.segments.iter().find(|s| s.len % 4 != 0) {
            let len = seg.len;
            return self.refuse(&format_args!("buffer of {len} bytes, not a multiple of 4"));
        }
        if self.read_pfns().is_err() {
            // Cannot happen: Layout::check found every buffer in guest memory.
            return self.refuse(&"a buffer cannot be read");
        }
        let mut runs = Runs::default();
        let (mut done, mut refused, mut fails) = (0u64, 0u64, 0u64);
        for &pfn in self.pfns.iter() {
            let result = if self.inflate {
                self.ledger.inflate(self.mem, pfn, self.target)
            } else {
                self.ledger.deflate(pfn)
            };
            match result {
                Ok(()) if self.inflate => {
                    done += 1;
                    fails += runs.push(self.mem, pfn);
                }
                Ok(()) => done += 1,
                Err(e) => {
                    refused += 1;
                    if let Some(n) = BAD_REQUEST_LOG.hit() {
                        log::warn!("Balloon device: page refused: {e} ({n} so far)");
                    }
                }
            }
        }
        fails += runs.flush(self.mem);
        let total = self.total_pfns();
        refused += total.saturating_sub(self.pfns.len() as u64);
        let m = self.metrics;
        let counter = if self.inflate {
            &m.inflated_pages
        } else {
            &m.deflated_pages
        };
        counter.add(done);
        m.refused_pfns.add(refused);
        m.madvise_fails.add(fails);
        ChainOutcome::Moved {
            used_len: 0,
            moved: (self.pfns.len() as u64).saturating_mul(PFN_COST),
        }
    }

    /// The number of page numbers the chain holds (all its buffers are checked already).
    fn total_pfns(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.len / 4)).sum()
    }

    /// Reads at most [`MAX_PFNS_PER_CHAIN`] little-endian page numbers from the chain, in one
    /// pass over its buffers (all of them checked already).
    fn read_pfns(&mut self) -> Result<(), vm_memory::GuestMemoryError> {
        self.pfns.clear();
        let count = self.total_pfns().min(MAX_PFNS_PER_CHAIN as u64) as usize;
        let mut bytes = [0u8; MAX_PFNS_PER_CHAIN * 4];
        let bytes = &mut bytes[..count * 4];
        read_stream(self.mem, self.segments, 0, bytes)?;
        let words = bytes.chunks_exact(4);
        self.pfns
            .extend(words.map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
        Ok(())
    }

    /// Refuses the chain: counted, and logged (rate-limited; `why` is formatted only when the
    /// line is written).
    fn refuse(&self, why: &dyn std::fmt::Display) -> ChainOutcome {
        self.metrics.execute_fails.inc();
        if let Some(n) = BAD_REQUEST_LOG.hit() {
            log::warn!("Balloon device: bad request refused: {why} ({n} so far)");
        }
        ChainOutcome::Used(0)
    }
}
