//! The 8250 UART on COM1 (vm-superio), output to a writer, input queued by the VMM thread.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::BusDevice;
use crate::metrics::METRICS;

/// Raises the serial interrupt through an irqfd.
pub struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    /// A new trigger and its event, to be registered as the IRQ's irqfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self(EventFd::new(EFD_NONBLOCK)?))
    }

    /// The event KVM listens on.
    pub fn event(&self) -> &EventFd {
        &self.0
    }
}

/// COM1 as a bus device.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `trigger`.
    pub fn new(trigger: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(trigger, out),
        }
    }

    /// The interrupt event to register as irqfd.
    pub fn interrupt_event(&self) -> &EventFd {
        self.serial.interrupt_evt().event()
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Queues bytes typed by the user for the guest.
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        if let Err(e) = self.serial.enqueue_raw_bytes(bytes) {
            METRICS.uart.missed_read_count.inc();
            log::warn!("Serial input dropped: {e}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            METRICS.uart.missed_read_count.inc();
            data.fill(0xff);
            return;
        }
        METRICS.uart.read_count.inc();
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            METRICS.uart.missed_write_count.inc();
            return;
        }
        METRICS.uart.write_count.inc();
        if let Err(e) = self.serial.write(offset as u8, data[0]) {
            METRICS.uart.error_count.inc();
            log::debug!("Serial write failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let sink = Sink::default();
        let mut dev = SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn queued_input_is_read_from_rbr() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        dev.enqueue_input(b"x");
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
    }

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const IER_RDI: u8 = 0x01;
    const IER_THRI: u8 = 0x02;
    const IIR_NO_INT: u8 = 0x01;
    const IIR_THRI: u8 = 0x02;

    /// Interrupts raised (irqfd writes) since the last call.
    fn raised(dev: &SerialDevice) -> u64 {
        dev.interrupt_event().read().unwrap_or(0)
    }

    fn reg(dev: &mut SerialDevice, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    /// Linux's 8250 `start_tx` only sets IER.THRI and waits for the interrupt (with this
    /// UART its start-up probe does not flag UART_BUG_TXEN, so nothing else sends the first
    /// byte): that write must raise THRE, or userspace output stays in the guest's tty
    /// buffer while polled printk output still gets out.
    #[test]
    fn enabling_the_thre_interrupt_raises_it_at_once() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        dev.write(IER, &[IER_RDI]);
        assert_eq!(raised(&dev), 0);
        dev.write(IER, &[IER_RDI | IER_THRI]);
        assert_eq!(raised(&dev), 1, "start_tx's IER write raises THRE");
        assert_eq!(reg(&mut dev, IIR) & 0x0f, IIR_THRI);
        assert_eq!(
            reg(&mut dev, IIR) & 0x0f,
            IIR_NO_INT,
            "reading IIR acknowledges"
        );
        // The handler writes a FIFO's worth; THRE comes back for the next batch.
        for b in b"0123456789abcdef" {
            dev.write(0, &[*b]);
        }
        assert_eq!(raised(&dev), 1);
        assert_eq!(reg(&mut dev, IIR) & 0x0f, IIR_THRI);
    }

    /// The 8250 console masks IER around each printk and restores it: with a transmission
    /// in progress (THRI enabled, THRE already acknowledged) the restore must raise THRE
    /// again, as a real 16550's level interrupt output does on an edge-triggered line.
    #[test]
    fn restoring_ier_after_a_console_write_raises_thre_again() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        dev.write(IER, &[IER_RDI | IER_THRI]);
        assert_eq!(reg(&mut dev, IIR) & 0x0f, IIR_THRI);
        let _ = raised(&dev);
        let saved = reg(&mut dev, IER);
        dev.write(IER, &[0]);
        for b in b"[    1.0] printk\r\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(
            raised(&dev),
            0,
            "masked: no interrupt while printk polls LSR"
        );
        dev.write(IER, &[saved]);
        assert_eq!(raised(&dev), 1);
        assert_eq!(reg(&mut dev, IIR) & 0x0f, IIR_THRI);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        let mut b = [0u8; 2];
        dev.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
    }
}
