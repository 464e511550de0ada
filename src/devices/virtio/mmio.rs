//! The virtio-mmio transport, register layout version 2 (virtio 1.x 4.2.2).
//!
//! It runs on the vCPU threads: the driver's register accesses negotiate features, configure
//! the queues and walk the status state machine (virtio 1.x 3.1.1). The transport owns the
//! queues until DRIVER_OK, checks them, and hands them to the device; a reset (status 0) takes
//! them back. Accesses that break the protocol (wrong width, wrong state, unknown register)
//! are ignored, counted and logged at a limited rate: a guest cannot make the VMM fail here.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::interrupt::Interrupt;
use super::queue::check_queue;
use super::{ActivateContext, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::logger::RateLimitedLog;
use crate::metrics::METRICS;
use crate::vstate::memory::GuestMemory;

/// "virt" in little endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The register layout of virtio 1.x (legacy devices are version 1).
const MMIO_VERSION: u32 = 2;
/// No vendor of our own.
const VENDOR_ID: u32 = 0;

/// Protocol violations of all transports, counted for the log's rate limit.
static BAD_ACCESS_LOG: RateLimitedLog = RateLimitedLog::new();
/// Failed activations of all transports.
static ACTIVATE_LOG: RateLimitedLog = RateLimitedLog::new();

/// Errors of transport creation.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device declared a queue size virtio-queue refuses (0, not a power of 2, too big).
    #[error("Invalid virtio queue size {0}")]
    QueueSize(u16),
}

/// One device's register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    mem: GuestMemory,
    /// Taken by the device between DRIVER_OK and reset.
    queues: Vec<Queue>,
    /// The largest size of each queue (valid for `Queue::new`).
    max_sizes: Vec<u16>,
    name: String,
    status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    /// True while the device holds the queues.
    active: bool,
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemory,
    ) -> Result<Self, TransportError> {
        let (max_sizes, interrupt, name) = {
            let d = lock(&device);
            (
                d.queue_max_sizes().to_vec(),
                d.interrupt().clone(),
                d.name(),
            )
        };
        if let Some(&size) = max_sizes.iter().find(|&&s| Queue::new(s).is_err()) {
            return Err(TransportError::QueueSize(size));
        }
        let mut transport = Self {
            device,
            interrupt,
            mem,
            queues: Vec::new(),
            max_sizes,
            name,
            status: 0,
            features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            active: false,
        };
        transport.queues = transport.fresh_queues();
        Ok(transport)
    }

    /// The status register as the driver reads it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    fn ignore(&self, what: &str, offset: u64) {
        METRICS.virtio.mmio_ignored_accesses.inc();
        if let Some(n) = BAD_ACCESS_LOG.hit() {
            log::warn!(
                "virtio-mmio {}: {what} at {offset:#x} ignored (status {:#x}; {n} so far)",
                self.name,
                self.status
            );
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> Option<u32> {
        let selected = self.queues.get(self.queue_select as usize);
        Some(match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device().device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.features_select {
                0 => self.device().avail_features() as u32,
                1 => (self.device().avail_features() >> 32) as u32,
                _ => 0,
            },
            // A queue that does not exist reads as size 0 ("not available").
            VIRTIO_MMIO_QUEUE_NUM_MAX => selected.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => {
                u32::from(self.active || selected.is_some_and(|q| q.ready()))
            }
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            VIRTIO_MMIO_CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => return None,
        })
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.status == ACKNOWLEDGE | DRIVER | FEATURES_OK && !self.interrupt.needs_reset()
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) -> bool {
        if !self.queue_setup_allowed() {
            return false;
        }
        let Some(queue) = self.selected_queue() else {
            return false;
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
                .ok()
                .is_some_and(|size| queue.try_set_size(size).is_ok()),
            VIRTIO_MMIO_QUEUE_READY => {
                queue.set_ready(value == 1);
                true
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                let f = if offset == VIRTIO_MMIO_QUEUE_DESC_LOW {
                    low(queue.desc_table())
                } else {
                    high(queue.desc_table())
                };
                queue.try_set_desc_table_address(GuestAddress(f)).is_ok()
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                let f = if offset == VIRTIO_MMIO_QUEUE_AVAIL_LOW {
                    low(queue.avail_ring())
                } else {
                    high(queue.avail_ring())
                };
                queue.try_set_avail_ring_address(GuestAddress(f)).is_ok()
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                let f = if offset == VIRTIO_MMIO_QUEUE_USED_LOW {
                    low(queue.used_ring())
                } else {
                    high(queue.used_ring())
                };
                queue.try_set_used_ring_address(GuestAddress(f)).is_ok()
            }
            _ => false,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) -> bool {
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                if self.status != ACKNOWLEDGE | DRIVER {
                    return false;
                }
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return value == 0,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features =
                    (self.driver_features & !mask) | ((u64::from(value) << shift) & mask);
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => return self.write_status(value),
            // The notify register is an ioeventfd; a write that reaches here names a queue
            // that does not exist or is not 32 bits wide.
            VIRTIO_MMIO_QUEUE_NOTIFY => return false,
            other => return self.write_queue_register(other, value),
        }
        true
    }

    /// The status state machine: 0 resets; otherwise each write may add the next bit.
    fn write_status(&mut self, value: u32) -> bool {
        if value == 0 {
            self.reset();
            return true;
        }
        if value & FAILED != 0 {
            self.status |= FAILED;
            return true;
        }
        let next = match self.status {
            0 => ACKNOWLEDGE,
            s if s == ACKNOWLEDGE => ACKNOWLEDGE | DRIVER,
            s if s == ACKNOWLEDGE | DRIVER => ACKNOWLEDGE | DRIVER | FEATURES_OK,
            s if s == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
            }
            _ => return false,
        };
        if value != next {
            return false;
        }
        if next & FEATURES_OK != 0 && next & DRIVER_OK == 0 && !self.features_acceptable() {
            // FEATURES_OK stays clear: the driver reads it back and gives up.
            return false;
        }
        self.status = next;
        if next & DRIVER_OK != 0 {
            self.activate();
        }
        true
    }

    /// The driver accepted virtio 1.x and nothing the device did not offer.
    fn features_acceptable(&self) -> bool {
        let offered = self.device().avail_features();
        self.driver_features & VIRTIO_F_VERSION_1 != 0 && self.driver_features & !offered == 0
    }

    fn activate(&mut self) {
        // The queues the accepted features leave unused are neither checked nor served.
        let in_use = lock(&self.device).queues_in_use(self.driver_features);
        let checked = self
            .queues
            .iter()
            .take(in_use)
            .enumerate()
            .try_for_each(|(i, q)| check_queue(i, q, &self.mem));
        let result = checked.map_err(|e| e.to_string()).and_then(|()| {
            let ctx = ActivateContext {
                mem: self.mem.clone(),
                queues: std::mem::take(&mut self.queues),
                features: self.driver_features,
            };
            let mut device = lock(&self.device);
            device.activate(ctx).map_err(|e| e.to_string())?;
            // Notifications sent before the device listened are not lost.
            for event in device.queue_events() {
                let _ = event.write(1);
            }
            Ok(())
        });
        match result {
            Ok(()) => self.active = true,
            Err(e) => {
                // Queues a failed activation consumed come back fresh at the next reset.
                METRICS.virtio.activate_fails.inc();
                self.interrupt.set_needs_reset();
                if let Some(n) = ACTIVATE_LOG.hit() {
                    log::warn!(
                        "virtio-mmio {}: cannot activate: {e} ({n} so far)",
                        self.name
                    );
                }
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.queues = lock(&self.device).reset();
            self.active = false;
        }
        if self.queues.len() != self.max_sizes.len() {
            self.queues = self.fresh_queues();
        }
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt.clear();
    }

    fn fresh_queues(&self) -> Vec<Queue> {
        // Every size was checked by `new`.
        self.max_sizes
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }
}

fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device()
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let value = if data.len() == 4 {
            self.read_register(offset)
        } else {
            None
        };
        match value {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                data.fill(0);
                self.ignore("read", offset);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            if self.status & DRIVER != 0 && self.status & FAILED == 0 {
                self.device()
                    .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            } else {
                self.ignore("config write", offset);
            }
            return;
        }
        let accepted = match <[u8; 4]>::try_from(data) {
            Ok(bytes) => self.write_register(offset, u32::from_le_bytes(bytes)),
            Err(_) => false,
        };
        if !accepted {
            self.ignore("write", offset);
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "mmio_kick_tests.rs"]
mod kick_tests;

#[path = "mmio_state.rs"]
mod state;
pub use state::{QueueState, TransportState, TransportStateError};
