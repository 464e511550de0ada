//! Moving packets between the queues and the connection table.
//!
//! TX: each chain is one packet: its header is copied out and checked ([`check_tx`]), its
//! payload copied into the device's buffer (at most 64 KiB), charged to the device limiter and
//! handed to the muxer. Every chain is used with length 0. A bad header is dropped and counted
//! by reason, and answered with an RST where the sender can be told.
//!
//! RX: each chain receives one packet the muxer has for the guest (an RST, a connection's
//! control packet, or host data up to the chain's room and the guest's credit). Without such a
//! packet the chain stays in the ring for later.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::connection::chunk_limit;
use super::muxer::Muxer;
use super::packet::{check_tx, BadPacket, Op, HDR_LEN, MAX_PKT_LEN};
use super::{GuestLogs, Vsock, RX, TX};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain::{self, Segment};
use crate::devices::virtio::queue::{charge_descriptors, drain, ChainOutcome};
use crate::metrics::VsockDeviceMetrics;
use crate::rate_limiter::{RateLimiter, TokenType};
use crate::vstate::memory::GuestMemory;

/// What one chain needs of the device, borrowed while the queue is borrowed too.
struct Worker<'a> {
    cid: u64,
    mem: &'a GuestMemory,
    muxer: &'a mut Muxer,
    limiter: &'a mut RateLimiter,
    segments: &'a mut Vec<Segment>,
    payload: &'a mut [u8],
    metrics: &'a VsockDeviceMetrics,
    logs: &'a GuestLogs,
}

fn count_bad(m: &VsockDeviceMetrics, bad: BadPacket) {
    m.bad_header.inc();
    let counter = match bad {
        BadPacket::Short => &m.bad_header_short,
        BadPacket::SrcCid(_) => &m.bad_src_cid,
        BadPacket::DstCid(_) => &m.bad_dst_cid,
        BadPacket::Type(_) => &m.bad_type,
        BadPacket::Op(_) => &m.bad_op,
        BadPacket::Len(_) => &m.bad_len,
    };
    counter.inc();
}

impl Worker<'_> {
    fn tx(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let readable = match Layout::check(self.mem, self.segments) {
            Ok(layout) => layout.readable,
            Err(e) => return self.drop_packet(BadPacket::Short, &e),
        };
        let mut raw = [0u8; HDR_LEN];
        if readable < HDR_LEN as u32
            || buffers::read_stream(self.mem, self.segments, 0, &mut raw).is_err()
        {
            return self.drop_packet(BadPacket::Short, &BadPacket::Short);
        }
        let (hdr, op) = match check_tx(&raw, readable, self.cid) {
            Ok(checked) => checked,
            Err(bad) => {
                if bad.deserves_rst() && raw[30..32] != (Op::Rst as u16).to_le_bytes() {
                    let hdr = super::packet::Header::from_bytes(&raw);
                    self.muxer.reply_rst(&hdr);
                }
                return self.drop_packet(bad, &bad);
            }
        };
        // Charged before anything else is done for it, so a flood waits for the limiter.
        if !self.limiter.consume(1, TokenType::Ops) {
            self.metrics.rate_limiter_throttled.inc();
            return ChainOutcome::Throttled;
        }
        if !self.limiter.consume(u64::from(hdr.len), TokenType::Bytes) {
            self.limiter.manual_replenish(1, TokenType::Ops);
            self.metrics.rate_limiter_throttled.inc();
            return ChainOutcome::Throttled;
        }
        let data = &mut self.payload[..hdr.len as usize];
        if buffers::read_stream(self.mem, self.segments, HDR_LEN as u64, data).is_err() {
            return self.drop_packet(BadPacket::Len(hdr.len), &BadPacket::Len(hdr.len));
        }
        self.metrics.tx_packets_count.inc();
        self.metrics.tx_bytes_count.add(u64::from(hdr.len));
        self.muxer.on_guest_packet(&hdr, op, data);
        ChainOutcome::Moved {
            used_len: 0,
            moved: HDR_LEN as u64 + u64::from(hdr.len),
        }
    }

    fn drop_packet(&self, bad: BadPacket, why: &dyn std::fmt::Display) -> ChainOutcome {
        count_bad(self.metrics, bad);
        if let Some(n) = self.logs.bad_packet.hit() {
            log::warn!("vsock: guest packet dropped: {why} ({n} so far)");
        }
        ChainOutcome::Used(0)
    }

    fn rx(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        if !self.muxer.has_rx() || self.limiter.is_blocked() {
            return ChainOutcome::Throttled;
        }
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let writable = match Layout::check(self.mem, self.segments) {
            Ok(layout) if layout.readable == 0 && layout.writable >= HDR_LEN as u32 => {
                layout.writable
            }
            Ok(_) => return self.refuse_rx(&"not a device-writable buffer of 44 bytes or more"),
            Err(e) => return self.refuse_rx(&e),
        };
        let room = (writable - HDR_LEN as u32).min(MAX_PKT_LEN) as usize;
        let room = chunk_limit(self.limiter, room);
        // Paid before the host socket is read, the unused part refunded after.
        if !self.limiter.consume(1, TokenType::Ops) {
            self.metrics.rate_limiter_throttled.inc();
            return ChainOutcome::Throttled;
        }
        if !self.limiter.consume(room as u64, TokenType::Bytes) {
            self.limiter.manual_replenish(1, TokenType::Ops);
            self.metrics.rate_limiter_throttled.inc();
            return ChainOutcome::Throttled;
        }
        let Some(hdr) = self.muxer.next_rx(&mut self.payload[..room]) else {
            self.limiter.manual_replenish(1, TokenType::Ops);
            self.limiter.manual_replenish(room as u64, TokenType::Bytes);
            return ChainOutcome::Throttled;
        };
        let len = hdr.len as usize;
        self.limiter
            .manual_replenish((room - len) as u64, TokenType::Bytes);
        let written =
            buffers::write_stream(self.mem, self.segments, 0, &hdr.to_bytes()).and_then(|()| {
                buffers::write_stream(
                    self.mem,
                    self.segments,
                    HDR_LEN as u64,
                    &self.payload[..len],
                )
            });
        if let Err(e) = written {
            return self.refuse_rx(&e);
        }
        self.metrics.rx_packets_count.inc();
        self.metrics.rx_bytes_count.add(len as u64);
        ChainOutcome::Used((HDR_LEN + len) as u32)
    }

    fn refuse_rx(&self, why: &dyn std::fmt::Display) -> ChainOutcome {
        self.metrics.bad_rx_chain.inc();
        if let Some(n) = self.logs.bad_packet.hit() {
            log::warn!("vsock: RX chain refused: {why} ({n} so far)");
        }
        ChainOutcome::Used(0)
    }
}

impl Vsock {
    fn worker(&mut self) -> Option<(Worker<'_>, &mut Queue, &mut Queue)> {
        let active = self.core.active.as_mut()?;
        let [rx, tx, _] = &mut active.queues;
        let worker = Worker {
            cid: self.cid,
            mem: &active.mem,
            muxer: &mut self.muxer,
            limiter: &mut self.limiter,
            segments: &mut self.segments,
            payload: &mut self.payload,
            metrics: &self.metrics,
            logs: &self.logs,
        };
        Some((worker, rx, tx))
    }

    /// Takes the guest's packets: at most one queue's worth, then yields.
    pub fn process_tx(&mut self) {
        if self.core.interrupt.needs_reset() || self.limiter.is_blocked() {
            return;
        }
        let Some((mut worker, _, tx)) = self.worker() else {
            return;
        };
        let mem = worker.mem;
        let (end, used_any) = drain(tx, mem, |q, head| {
            let outcome = worker.tx(q, head);
            charge_descriptors(outcome, worker.segments.len())
        });
        self.core.finish_drain(TX, end, used_any);
    }

    /// Gives the guest what the muxer has for it: at most one queue's worth, then yields.
    pub fn process_rx(&mut self) {
        if self.core.interrupt.needs_reset()
            || self.limiter.is_blocked()
            || self.waiting_for_reset()
        {
            return;
        }
        let Some((mut worker, rx, _)) = self.worker() else {
            return;
        };
        let mem = worker.mem;
        let (end, used_any) = drain(rx, mem, |q, head| {
            let outcome = worker.rx(q, head);
            charge_descriptors(outcome, worker.segments.len())
        });
        // Empty: more packets wait for the driver's next buffers (its notification).
        // Throttled: nothing to send, or the limiter's timer brings it back.
        self.core.finish_drain(RX, end, used_any);
    }
}
