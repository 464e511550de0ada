//! The device manager: places virtio devices on the machine, each with a 4 KiB MMIO slot and
//! an interrupt line, one ioeventfd per queue on the QueueNotify register (datamatch = queue
//! index), one irqfd per device, and `virtio_mmio.device=4K@ADDR:IRQ` on the kernel command
//! line. A root drive also adds `root=` and `ro`/`rw`, as Firecracker does.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::{
    VIRTIO_IRQ_BASE, VIRTIO_IRQ_LAST, VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_START,
};
use crate::config::{DriveList, EntropyConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::virtio::balloon::{Balloon, BalloonConfig, BalloonError};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::{MmioTransport, TransportError};
use crate::devices::virtio::net::config::InterfaceList;
use crate::devices::virtio::net::snapshot::RestoredNet;
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::{Rng, RngError};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VirtioDevice;
use crate::metrics::{
    BalloonDeviceMetrics, BlockDeviceMetrics, DeviceMetrics, EntropyDeviceMetrics,
    NetDeviceMetrics, METRICS,
};
use crate::vmm::taps::OpenTaps;
use crate::vstate::memory::GuestMemory;

/// Errors of device attachment.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// More devices than interrupt lines.
    #[error("No interrupt line left for another virtio device (IRQs {VIRTIO_IRQ_BASE}..={VIRTIO_IRQ_LAST})")]
    NoSlot,
    /// The MMIO bus refused the slot.
    #[error("Cannot place a virtio device on the MMIO bus")]
    Bus(#[from] BusError),
    /// An ioeventfd or irqfd registration failed.
    #[error("Cannot {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The command line has no room for the device.
    #[error("Cannot add a virtio device to the kernel command line")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// The transport refused the device.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A drive cannot be created.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The entropy device cannot be created.
    #[error(transparent)]
    Rng(#[from] RngError),
    /// The balloon device cannot be created.
    #[error(transparent)]
    Balloon(#[from] BalloonError),
    /// A network interface cannot be created.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Where one device lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Base of its register window.
    pub addr: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// Hands out slots in order: 0xc000_1000 with IRQ 5, 0xc000_2000 with IRQ 6, ...
#[derive(Debug)]
pub struct Slots {
    next: u32,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            next: VIRTIO_IRQ_BASE,
        }
    }
}

impl Slots {
    /// The next free slot.
    pub fn allocate(&mut self) -> Result<Slot, AttachError> {
        if self.next > VIRTIO_IRQ_LAST {
            return Err(AttachError::NoSlot);
        }
        let index = u64::from(self.next - VIRTIO_IRQ_BASE);
        let slot = Slot {
            addr: VIRTIO_MMIO_START + index * VIRTIO_MMIO_SLOT_SIZE,
            irq: self.next,
        };
        self.next += 1;
        Ok(slot)
    }
}

/// What attachment needs from the VM being built.
pub struct AttachContext<'a> {
    /// The KVM VM, for ioeventfds and irqfds.
    pub vm: &'a VmFd,
    /// Guest memory, for the transports.
    pub mem: &'a GuestMemory,
    /// The MMIO bus of the vCPUs.
    pub mmio: &'a mut Bus,
    /// The kernel command line, before it is written to guest memory.
    pub cmdline: &'a mut Cmdline,
    /// The slot allocator.
    pub slots: Slots,
}

impl AttachContext<'_> {
    /// Puts `device` in the next slot; returns its transport.
    pub fn attach(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Arc<Mutex<MmioTransport>>, AttachError> {
        let slot = self.slots.allocate()?;
        let transport = MmioTransport::new(device.clone(), self.mem.clone())?;
        {
            let device = device.lock().unwrap_or_else(|e| e.into_inner());
            let notify = IoEventAddress::Mmio(slot.addr + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
            for (index, event) in device.queue_events().iter().enumerate() {
                self.vm
                    .register_ioevent(event, &notify, index as u32)
                    .map_err(|e| AttachError::Kvm("register a queue notify ioeventfd", e))?;
            }
            self.vm
                .register_irqfd(device.interrupt().event(), slot.irq)
                .map_err(|e| AttachError::Kvm("register a virtio irqfd", e))?;
            log::info!(
                "virtio-mmio {} at {:#x}, IRQ {}",
                device.name(),
                slot.addr,
                slot.irq
            );
        }
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), slot.addr, VIRTIO_MMIO_SLOT_SIZE)?;
        self.cmdline.add_virtio_mmio_device(
            VIRTIO_MMIO_SLOT_SIZE,
            GuestAddress(slot.addr),
            slot.irq,
            None,
        )?;
        Ok(transport)
    }
}

/// Subscriber handles for the event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The virtio devices of a VM, kept by the controller for run-time updates.
#[derive(Default)]
pub struct VirtioDevices {
    blocks: Vec<Arc<Mutex<Block>>>,
    rng: Option<Arc<Mutex<Rng>>>,
    nets: Vec<Arc<Mutex<Net>>>,
    vsock: Option<Arc<Mutex<Vsock>>>,
    balloon: Option<Arc<Mutex<Balloon>>>,
    /// Every device's transport, in slot order (snapshots save and restore them).
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl VirtioDevices {
    /// Every device, as event-loop subscribers.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        let mut subs: Vec<Subscriber> = Vec::new();
        for block in &self.blocks {
            subs.push(block.clone());
        }
        if let Some(rng) = &self.rng {
            subs.push(rng.clone());
        }
        for net in &self.nets {
            subs.push(net.clone());
        }
        if let Some(vsock) = &self.vsock {
            subs.push(vsock.clone());
        }
        if let Some(balloon) = &self.balloon {
            subs.push(balloon.clone());
        }
        subs
    }

    /// The transports, in slot order.
    pub fn transports(&self) -> &[Arc<Mutex<MmioTransport>>] {
        &self.transports
    }

    /// The drive with this id, locked.
    pub fn block(&self, id: &str) -> Option<MutexGuard<'_, Block>> {
        find_locked(&self.blocks, |b| b.id() == id)
    }

    /// The network interface with this id, locked.
    pub fn net(&self, id: &str) -> Option<MutexGuard<'_, Net>> {
        find_locked(&self.nets, |n| n.id() == id)
    }

    /// Every drive, locked one at a time, in attach order.
    pub fn blocks(&self) -> impl Iterator<Item = MutexGuard<'_, Block>> {
        self.blocks
            .iter()
            .map(|b| b.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The entropy device, locked.
    pub fn rng(&self) -> Option<MutexGuard<'_, Rng>> {
        self.rng
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The balloon device, locked.
    pub fn balloon(&self) -> Option<MutexGuard<'_, Balloon>> {
        self.balloon
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The vsock device, locked.
    pub fn vsock(&self) -> Option<MutexGuard<'_, Vsock>> {
        self.vsock
            .as_ref()
            .map(|v| v.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The first device `is_it` picks, locked (a poisoned lock is taken over, as the VMM does
/// everywhere).
fn find_locked<D>(
    devices: &[Arc<Mutex<D>>],
    is_it: impl Fn(&D) -> bool,
) -> Option<MutexGuard<'_, D>> {
    devices
        .iter()
        .map(|d| d.lock().unwrap_or_else(PoisonError::into_inner))
        .find(|d| is_it(d))
}

/// `root=/dev/vda` (the root drive is attached first) or `root=PARTUUID=...`, then `ro` or
/// `rw`, as Firecracker writes them.
pub fn add_root_parameters(
    cmdline: &mut Cmdline,
    partuuid: Option<&str>,
    read_only: bool,
) -> Result<(), AttachError> {
    match partuuid {
        Some(partuuid) => cmdline.insert_str(format!("root=PARTUUID={partuuid}"))?,
        None => cmdline.insert_str("root=/dev/vda")?,
    }
    cmdline.insert_str(if read_only { "ro" } else { "rw" })?;
    Ok(())
}

/// What [`attach_devices`] creates.
pub struct DeviceConfigs<'a> {
    /// The drives, root first.
    pub drives: &'a DriveList,
    /// The entropy device.
    pub entropy: Option<&'a EntropyConfig>,
    /// The network interfaces.
    pub nets: &'a InterfaceList,
    /// The interfaces' taps, opened before the build (an interface without one opens its
    /// own).
    pub taps: OpenTaps,
    /// Network interfaces restored from a snapshot (taps open, firewalls restored),
    /// attached after those of `nets`.
    pub restored_nets: Vec<RestoredNet>,
    /// The vsock device (a VM has at most one), created before the build.
    pub vsock: Option<Vsock>,
    /// The balloon device (a VM has at most one).
    pub balloon: Option<&'a BalloonConfig>,
}

/// Creates and attaches the drives (root first), the entropy device and the network
/// interfaces, then attaches the vsock device (Firecracker's order).
pub fn attach_devices(
    ctx: &mut AttachContext<'_>,
    mut configs: DeviceConfigs<'_>,
) -> Result<VirtioDevices, AttachError> {
    let mut devices = VirtioDevices::default();
    for config in configs.drives.iter() {
        let metrics = registered_metrics(BlockDeviceMetrics::key(&config.drive_id));
        let block = Block::new(config, metrics)?;
        if block.is_root() {
            add_root_parameters(ctx.cmdline, block.partuuid(), block.is_read_only())?;
        }
        let block = Arc::new(Mutex::new(block));
        devices.transports.push(ctx.attach(block.clone())?);
        devices.blocks.push(block);
    }
    if let Some(config) = configs.entropy {
        let metrics = registered_metrics(EntropyDeviceMetrics::KEY.to_string());
        let rng = Arc::new(Mutex::new(Rng::new(config, metrics)?));
        devices.transports.push(ctx.attach(rng.clone())?);
        devices.rng = Some(rng);
    }
    for config in configs.nets.iter() {
        let metrics = registered_metrics(NetDeviceMetrics::key(&config.iface_id));
        let net = match configs.taps.take(config) {
            Some(tap) => Net::with_tap(config, tap, metrics)?,
            None => Net::new(config, metrics)?,
        };
        let net = Arc::new(Mutex::new(net));
        devices.transports.push(ctx.attach(net.clone())?);
        devices.nets.push(net);
    }
    for restored in configs.restored_nets {
        let metrics = registered_metrics(NetDeviceMetrics::key(&restored.config.iface_id));
        let net = Arc::new(Mutex::new(Net::restored(restored, metrics)?));
        devices.transports.push(ctx.attach(net.clone())?);
        devices.nets.push(net);
    }
    if let Some(vsock) = configs.vsock {
        let vsock = Arc::new(Mutex::new(vsock));
        devices.transports.push(ctx.attach(vsock.clone())?);
        devices.vsock = Some(vsock);
    }
    if let Some(config) = configs.balloon {
        let metrics = registered_metrics(BalloonDeviceMetrics::KEY.to_string());
        let balloon = Arc::new(Mutex::new(Balloon::new(config, metrics)?));
        devices.transports.push(ctx.attach(balloon.clone())?);
        devices.balloon = Some(balloon);
    }
    Ok(devices)
}

/// A device's metrics group, reported under `key` from the next flush on.
pub fn registered_metrics<M: Default>(key: String) -> Arc<M>
where
    Arc<M>: Into<DeviceMetrics>,
{
    let metrics = Arc::new(M::default());
    METRICS.devices.register(key, metrics.clone());
    metrics
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_root_drive_adds_root_and_ro_or_rw_and_devices_their_slot() {
        let mut cmdline = Cmdline::try_from("console=ttyS0", 2048).unwrap();
        add_root_parameters(&mut cmdline, None, false).unwrap();
        cmdline
            .add_virtio_mmio_device(0x1000, GuestAddress(0xc000_1000), 5, None)
            .unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 root=/dev/vda rw virtio_mmio.device=4K@0xc0001000:5"
        );
        let mut cmdline = Cmdline::new(2048).unwrap();
        add_root_parameters(&mut cmdline, Some("0eaa91a0-01"), true).unwrap();
        assert_eq!(
            cmdline.as_cstring().unwrap().to_str().unwrap(),
            "root=PARTUUID=0eaa91a0-01 ro"
        );
    }

    #[test]
    fn slots_follow_the_boot_timer_with_one_irq_each_from_5() {
        let mut slots = Slots::default();
        assert_eq!(
            slots.allocate().unwrap(),
            Slot {
                addr: 0xc000_1000,
                irq: 5
            }
        );
        assert_eq!(
            slots.allocate().unwrap(),
            Slot {
                addr: 0xc000_2000,
                irq: 6
            }
        );
        for _ in 7..=23 {
            slots.allocate().unwrap();
        }
        assert!(matches!(slots.allocate(), Err(AttachError::NoSlot)));
    }
}
