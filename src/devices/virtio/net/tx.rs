//! Transmit: each chain of the TX queue is one frame with its virtio-net header. It is copied
//! out of guest memory (so the guest cannot change it after the firewall looked at it),
//! charged to the TX limiter, offered to the MMDS responder on an MMDS interface, judged by
//! the firewall, and written to the tap. Every chain is
//! consumed with used length 0, whatever happened to its frame.

use palisade_firewall::Verdict;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::mmds::{classify, Verdict as MmdsVerdict};
use super::tap::VNET_HDR_LEN;
use super::vnet_hdr::{self, TxOffloads};
use super::worker::Worker;
use super::{count_drop, Net, TX};
use crate::devices::virtio::buffers::{self, Layout};
use crate::devices::virtio::chain;
use crate::devices::virtio::queue::ChainOutcome;
use crate::rate_limiter::TokenType;

/// How much of a GSO frame's start the firewall reads (`egress_headers`).
pub const HEADER_PREFIX: usize = 256;

/// TX's chain handler (it keeps no state across chains).
impl Worker<'_, ()> {
    fn refuse(&self, why: &dyn std::fmt::Display) -> ChainOutcome {
        self.refuse_chain(&self.metrics.tx_fails, "bad TX chain refused", why)
    }

    fn handle(&mut self, queue: &Queue, head: u16) -> ChainOutcome {
        let desc_table = GuestAddress(queue.desc_table());
        if let Err(e) = chain::read_chain(self.mem, desc_table, queue.size(), head, self.segments) {
            return ChainOutcome::Broken(e.into());
        }
        let layout = match Layout::check(self.mem, self.segments) {
            Ok(layout) => layout,
            Err(e) => return self.refuse(&e),
        };
        let len = layout.readable as usize;
        if len < VNET_HDR_LEN || len > self.frame.buf.len() {
            return self.refuse(&format_args!("frame of {len} bytes with its header"));
        }
        if let Err(e) = buffers::read_stream(self.mem, self.segments, 0, &mut self.frame.buf[..len])
        {
            return self.refuse(&e);
        }
        let frame_len = (len - VNET_HDR_LEN) as u64;
        let (hdr, eth) = self.frame.buf[..len].split_at(VNET_HDR_LEN);
        let offloads = TxOffloads::from_features(self.features);
        let checked = vnet_hdr::check_tx(hdr, eth, offloads);
        // Charge first, a refused header too (so a guest cannot make us copy and parse frames
        // beyond its limits), and a GSO frame as the segments the host will send; a throttled
        // frame stays in the ring and is judged once, when it goes.
        let ops = checked.as_ref().map_or(1, |h| h.segments(frame_len));
        if !self.limiter.consume(ops, TokenType::Ops) {
            self.metrics.tx_rate_limiter_throttled.inc();
            return ChainOutcome::Throttled;
        }
        if !self.limiter.consume(frame_len, TokenType::Bytes) {
            self.limiter.manual_replenish(ops, TokenType::Ops);
            self.metrics.tx_rate_limiter_throttled.inc();
            return ChainOutcome::Throttled;
        }
        // MMDS before the firewall: its frames (charged to the limiter like any other, so a
        // limit on the interface bounds them too) never reach the firewall or the tap, and no
        // other frame to its address leaves this interface.
        if let Some(stack) = self.mmds.as_deref_mut() {
            let eth = &self.frame.buf[VNET_HDR_LEN..len];
            let plain = checked.as_ref().is_ok_and(|h| !h.is_gso());
            if plain && stack.handle_guest_frame(eth, self.now) == MmdsVerdict::Consumed {
                self.metrics.mmds_frames_in.inc();
                return moved(len);
            }
            if classify::ipv4_to(eth, stack.address()) {
                self.limiter.manual_replenish(ops, TokenType::Ops);
                self.limiter.manual_replenish(frame_len, TokenType::Bytes);
                self.metrics.mmds_other_drops.inc();
                return moved(len);
            }
        }
        let header = match checked {
            Ok(header) => header,
            Err(e) => {
                self.metrics.tx_bad_vnet_hdr.inc();
                if let Some(n) = self.logs.bad_chain.hit() {
                    log::warn!("Interface {}: frame dropped: {e} ({n} so far)", self.iface);
                }
                return moved(len);
            }
        };
        if !header.is_gso() && over_mtu(&self.frame.buf[VNET_HDR_LEN..len], self.mtu) {
            self.metrics.tx_over_mtu_drops.inc();
            if let Some(n) = self.logs.bad_chain.hit() {
                log::warn!(
                    "Interface {}: frame of {frame_len} bytes over the MTU dropped ({n} so far)",
                    self.iface
                );
            }
            return moved(len);
        }
        if let Some(firewall) = self.firewall.as_deref_mut() {
            let eth = &self.frame.buf[VNET_HDR_LEN..len];
            let verdict = if header.is_gso() {
                let prefix = &eth[..eth.len().min(HEADER_PREFIX)];
                firewall.egress_headers(prefix, eth.len(), self.now)
            } else {
                firewall.egress(eth, self.now)
            };
            if let Verdict::Drop(reason) = verdict {
                self.limiter.manual_replenish(ops, TokenType::Ops);
                self.limiter.manual_replenish(frame_len, TokenType::Bytes);
                count_drop(self.metrics, reason, true);
                return moved(len);
            }
        }
        // The tap gets the checked header, never the guest's bytes.
        self.frame.buf[..VNET_HDR_LEN].copy_from_slice(&header.to_bytes());
        match self.tap.write_frame(&self.frame.buf[..len]) {
            Ok(_) => {
                self.metrics.tx_packets_count.inc();
                self.metrics.tx_bytes_count.add(frame_len);
            }
            Err(e) => {
                self.metrics.tx_fails.inc();
                if let Some(n) = self.logs.tap_error.hit() {
                    log::warn!(
                        "Interface {}: tap write failed: {e} ({n} so far)",
                        self.iface
                    );
                }
            }
        }
        moved(len)
    }
}

/// The TPIDs of a VLAN tag: 802.1Q (C-tag) and 802.1ad (S-tag, the outer tag of QinQ).
const VLAN_TPIDS: [[u8; 2]; 2] = [[0x81, 0x00], [0x88, 0xa8]];

/// At most this many tags are left out of the MTU: QinQ's two. A third is payload (a
/// driver stacking tags gains nothing).
const MAX_VLAN_TAGS: usize = 2;

/// Whether a plain (not GSO) Ethernet frame carries more than `mtu` bytes after its header
/// (14 bytes, plus 4 per VLAN tag: 802.1Q, or 802.1ad then 802.1Q for QinQ).
///
/// Enforced whether or not the driver accepted VIRTIO_NET_F_MTU. The virtio spec (5.1.4.2)
/// only binds a driver that negotiated it ("MUST NOT transmit packets exceeding mtu") and
/// says nothing of a device's TX; Firecracker advertises `mtu` and never checks it. Here
/// `mtu` is the operator's limit of the host path behind the tap, so a driver that declined
/// the feature does not get past it: its oversize frame would be dropped (or fragmented on
/// a path sized for less) after the tap anyway; dropping it here counts it
/// (`tx_over_mtu_drops`) and spends nothing on it. A driver that declined the feature sends
/// at most 1514 bytes (Linux's default MTU), so only an `mtu` under 1500 drops its frames.
pub fn over_mtu(eth: &[u8], mtu: Option<u16>) -> bool {
    let Some(mtu) = mtu else {
        return false;
    };
    let mut header = 14;
    for _ in 0..MAX_VLAN_TAGS {
        match eth.get(header - 2..header) {
            Some(tpid) if VLAN_TPIDS.iter().any(|t| t == tpid) => header += 4,
            _ => break,
        }
    }
    eth.len() > header + usize::from(mtu)
}

/// A TX chain is used with length 0 (nothing written to the guest), its frame charged to
/// the drain's byte budget.
fn moved(len: usize) -> ChainOutcome {
    ChainOutcome::Moved {
        used_len: 0,
        moved: len as u64,
    }
}

impl Net {
    /// Sends what the TX queue holds: at most one queue's worth of chains, then yields.
    pub fn process_tx(&mut self) {
        self.drain_queue(TX, (), |w, q, head| w.handle(q, head));
    }
}
