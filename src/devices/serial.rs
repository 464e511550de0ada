//! The 8250 UART on COM1 (vm-superio), output to a writer, input queued by the VMM thread.
//! Its registers and receive FIFO are saved in snapshots (`UartState`); a restored FIFO
//! longer than the UART's is refused.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
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

/// The UART's registers and receive FIFO, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UartState {
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// Bytes received and not yet read by the guest.
    pub fifo: Vec<u8>,
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

    /// A UART in the saved `state` (a pending interrupt is raised again); refused when the
    /// FIFO is longer than the UART's.
    pub fn from_state(
        state: &UartState,
        trigger: EventFdTrigger,
        out: Box<dyn Write + Send>,
    ) -> std::io::Result<Self> {
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = state.registers;
        let state = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: state.fifo.clone(),
        };
        let serial = Serial::from_state(&state, trigger, vm_superio::serial::NoEvents, out)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        Ok(Self { serial })
    }

    /// The registers and FIFO, for a snapshot.
    pub fn state(&self) -> UartState {
        let s = self.serial.state();
        UartState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            fifo: s.in_buffer,
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
    fn a_saved_uart_comes_back_with_its_registers_and_fifo_and_an_oversized_fifo_is_refused() {
        let mut dev = SerialDevice::new(EventFdTrigger::new().unwrap(), Box::new(Sink::default()));
        dev.write(7, &[0x5a]);
        dev.write(3, &[0x03]);
        dev.enqueue_input(b"ab");
        let state = dev.state();
        let mut back = SerialDevice::from_state(
            &state,
            EventFdTrigger::new().unwrap(),
            Box::new(Sink::default()),
        )
        .unwrap();
        assert_eq!(back.state(), state);
        let mut b = [0u8];
        back.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        back.read(0, &mut b);
        assert_eq!(b[0], b'a');
        let hostile = UartState {
            registers: state.registers,
            fifo: vec![0; 1 << 20],
        };
        assert!(SerialDevice::from_state(
            &hostile,
            EventFdTrigger::new().unwrap(),
            Box::new(Sink::default())
        )
        .is_err());
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
