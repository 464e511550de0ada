//! Snapshot state of a virtio-mmio transport: the driver-visible registers, the negotiated
//! features, the interrupt status and every queue (size, rings, indices). Saving takes the
//! queues back from an active device and gives them again at once (the VM is paused, so no
//! request is in flight). Restoring treats the state as hostile: the status must be a state
//! of the virtio state machine, the features a subset of the offer, the queue count the
//! device's, each size a power of two within the maximum, and an active device's rings must
//! lie in guest memory (the checks of DRIVER_OK) before the device gets the queues.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK,
};
use virtio_queue::{Queue, QueueT};

use super::{lock, MmioTransport};
use crate::devices::virtio::ActivateContext;

/// Statuses a transport may be restored in: the steps of the state machine.
const STATUSES: [u32; 5] = [
    0,
    ACKNOWLEDGE,
    ACKNOWLEDGE | DRIVER,
    ACKNOWLEDGE | DRIVER | FEATURES_OK,
    ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
];

/// Why a transport state is refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportStateError {
    /// Not a step of the status state machine.
    #[error("virtio-mmio {0}: status {1:#x} is not a state of the virtio state machine")]
    Status(String, u32),
    /// Features the device never offered.
    #[error("virtio-mmio {0}: features {1:#x} were not offered")]
    Features(String, u64),
    /// Another number of queues than the device has.
    #[error("virtio-mmio {0}: {1} queue(s) in the state, the device has {2}")]
    QueueCount(String, usize, usize),
    /// A queue size of 0, not a power of two, or above the maximum.
    #[error("virtio-mmio {0}: queue {1} has size {2}, not a power of two up to {3}")]
    QueueSize(String, usize, u16, u16),
    /// A ring address virtio-queue refuses (misaligned).
    #[error("virtio-mmio {0}: a queue's ring address is not valid")]
    QueueAddress(String),
    /// The device refused its queues (rings outside guest memory, not ready, ...).
    #[error("virtio-mmio {0}: the restored queues are refused")]
    Activate(String),
}

/// One queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Size set by the driver.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available index the device reads.
    pub next_avail: u16,
    /// Next used index the device writes.
    pub next_used: u16,
}

/// One transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// Whether the device held the queues.
    pub active: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The queues.
    pub queues: Vec<QueueState>,
}

fn queue_state(q: &Queue) -> QueueState {
    QueueState {
        size: q.size(),
        ready: q.ready(),
        desc_table: q.desc_table(),
        avail_ring: q.avail_ring(),
        used_ring: q.used_ring(),
        next_avail: q.next_avail(),
        next_used: q.next_used(),
    }
}

/// The low and high halves of an address, as the driver writes them.
fn halves(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

impl MmioTransport {
    /// The state of this transport and its queues; an active device keeps serving them.
    pub fn save(&mut self) -> TransportState {
        let queues: Vec<QueueState> = if self.active {
            let mut device = lock(&self.device);
            // A device that can copy its queues keeps serving untouched (vsock keeps its
            // connections); otherwise it gives them back and takes them again.
            if let Some(queues) = device.active_queues() {
                return self.state_with(queues.iter().map(queue_state).collect());
            }
            let queues = device.reset();
            let states = queues.iter().map(queue_state).collect();
            let ctx = ActivateContext {
                mem: self.mem.clone(),
                queues,
                features: self.driver_features,
            };
            if let Err(e) = device.activate(ctx) {
                // Unreachable (the device was active with these queues); the driver sees
                // NEEDS_RESET rather than a silent stall.
                log::error!("virtio-mmio {}: cannot resume after saving: {e}", self.name);
                self.interrupt.set_needs_reset();
            }
            states
        } else {
            self.queues.iter().map(queue_state).collect()
        };
        self.state_with(queues)
    }

    /// This transport's state with `queues`.
    fn state_with(&self, queues: Vec<QueueState>) -> TransportState {
        TransportState {
            status: self.status,
            features_select: self.features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            active: self.active,
            interrupt_status: self.interrupt.status(),
            queues,
        }
    }

    /// Checks `state` against this transport's device without changing anything.
    pub fn validate(&self, state: &TransportState) -> Result<(), TransportStateError> {
        let name = || self.name.clone();
        if !STATUSES.contains(&state.status) || state.active != (state.status & DRIVER_OK != 0) {
            return Err(TransportStateError::Status(name(), state.status));
        }
        let offered = lock(&self.device).avail_features();
        if state.driver_features & !offered != 0 {
            return Err(TransportStateError::Features(name(), state.driver_features));
        }
        if state.queues.len() != self.max_sizes.len() {
            return Err(TransportStateError::QueueCount(
                name(),
                state.queues.len(),
                self.max_sizes.len(),
            ));
        }
        for (i, (q, &max)) in state.queues.iter().zip(&self.max_sizes).enumerate() {
            if q.size == 0 || !q.size.is_power_of_two() || q.size > max {
                return Err(TransportStateError::QueueSize(name(), i, q.size, max));
            }
        }
        Ok(())
    }

    /// Restores a fresh transport from `state` (validated first; nothing changes when it is
    /// refused); an active device gets its
    /// queues through the DRIVER_OK checks and a kick, and a pending interrupt is raised again.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), TransportStateError> {
        self.validate(state)?;
        let mut queues = self.fresh_queues();
        for (queue, s) in queues.iter_mut().zip(&state.queues) {
            queue.set_size(s.size);
            let (lo, hi) = halves(s.desc_table);
            queue.set_desc_table_address(lo, hi);
            let (lo, hi) = halves(s.avail_ring);
            queue.set_avail_ring_address(lo, hi);
            let (lo, hi) = halves(s.used_ring);
            queue.set_used_ring_address(lo, hi);
            queue.set_next_avail(s.next_avail);
            queue.set_next_used(s.next_used);
            queue.set_ready(s.ready);
            // virtio-queue ignores a misaligned address (keeping the old one): the state is
            // refused rather than restored with rings the guest did not set.
            if queue_state(queue) != *s {
                return Err(TransportStateError::QueueAddress(self.name.clone()));
            }
        }
        self.queues = queues;
        self.features_select = state.features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.queue_select = state.queue_select;
        self.status = state.status;
        if state.active {
            self.activate();
            if !self.active {
                return Err(TransportStateError::Activate(self.name.clone()));
            }
        }
        if state.interrupt_status & 1 != 0 {
            let _ = self.interrupt.signal_used_queue();
        }
        Ok(())
    }
}
