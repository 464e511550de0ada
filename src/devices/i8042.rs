//! The i8042 keyboard controller, as much of it as a guest needs to ask for a reset
//! (`reboot=k`) and to receive Ctrl+Alt+Del. Its registers and output buffer are saved in a
//! snapshot ([`I8042State`]) and checked as hostile input when restored.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::bus::BusDevice;
use crate::metrics::METRICS;
use crate::vstate::exit::{ExitCode, ExitRequest};

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYS_FLAG: u8 = 0x04;
const SB_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

const CTR_KBD_INT: u8 = 0x01;
const CTR_SYS_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;

const KBD_ACK: u8 = 0xfa;
const SELF_TEST_OK: u8 = 0x55;
const BUFFER_SIZE: usize = 16;

/// Set 1 make and break codes of Ctrl+Alt+Del.
const CTRL_ALT_DEL: [u8; 10] = [0x1d, 0xe0, 0x38, 0xe0, 0x53, 0x9d, 0xe0, 0xb8, 0xe0, 0xd3];

/// Status bits the controller ever sets.
const SB_KNOWN: u8 = SB_OUT_DATA_AVAIL | SB_SYS_FLAG | SB_CMD_DATA | SB_KBD_ENABLED;

/// Why a saved controller state is refused.
#[derive(Debug, thiserror::Error)]
pub enum I8042StateError {
    /// More bytes than the output buffer holds.
    #[error("The saved i8042 output buffer holds {0} bytes, more than {BUFFER_SIZE}")]
    BufferTooLong(usize),
    /// A status bit the controller never sets, or the data-available bit disagreeing with
    /// the buffer.
    #[error("The saved i8042 status {0:#x} is not one the controller can be in")]
    Status(u8),
    /// A pending command that takes no data byte.
    #[error("The saved i8042 pending command {0:#x} takes no data byte")]
    PendingCommand(u8),
    /// The interrupt event cannot be created.
    #[error("Cannot create the i8042 interrupt event")]
    Event(#[source] std::io::Error),
}

/// The controller's state in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Controller configuration byte.
    pub control: u8,
    /// Output port.
    pub output_port: u8,
    /// A command waiting for its data byte.
    pub pending_command: Option<u8>,
    /// Bytes the guest has not read yet (at most 16).
    pub output: Vec<u8>,
}

impl I8042State {
    /// Checks a saved state: only values the controller itself can reach.
    pub fn validate(&self) -> Result<(), I8042StateError> {
        if self.output.len() > BUFFER_SIZE {
            return Err(I8042StateError::BufferTooLong(self.output.len()));
        }
        let avail = self.status & SB_OUT_DATA_AVAIL != 0;
        if self.status & !SB_KNOWN != 0 || avail == self.output.is_empty() {
            return Err(I8042StateError::Status(self.status));
        }
        match self.pending_command {
            None | Some(CMD_WRITE_CTR) | Some(CMD_WRITE_OUTP) => Ok(()),
            Some(cmd) => Err(I8042StateError::PendingCommand(cmd)),
        }
    }
}

/// The controller.
pub struct I8042Device {
    reset: Arc<ExitRequest>,
    kbd_interrupt: EventFd,
    status: u8,
    control: u8,
    output_port: u8,
    pending_command: Option<u8>,
    output: VecDeque<u8>,
}

impl I8042Device {
    /// A controller that turns the guest's reset request into a VM exit.
    pub fn new(reset: Arc<ExitRequest>) -> std::io::Result<Self> {
        Ok(Self {
            reset,
            kbd_interrupt: EventFd::new(EFD_NONBLOCK)?,
            status: SB_SYS_FLAG | SB_KBD_ENABLED,
            control: CTR_KBD_INT | CTR_SYS_FLAG,
            output_port: 0x01,
            pending_command: None,
            output: VecDeque::with_capacity(BUFFER_SIZE),
        })
    }

    /// A controller restored from `state` (validated first). A byte waiting in the buffer
    /// already raised its interrupt before the snapshot: the in-kernel interrupt controller
    /// state carries it, so none is raised again.
    pub fn from_state(
        reset: Arc<ExitRequest>,
        state: &I8042State,
    ) -> Result<Self, I8042StateError> {
        state.validate()?;
        let mut device = Self::new(reset).map_err(I8042StateError::Event)?;
        device.status = state.status;
        device.control = state.control;
        device.output_port = state.output_port;
        device.pending_command = state.pending_command;
        device.output = state.output.iter().copied().collect();
        Ok(device)
    }

    /// The state to save.
    pub fn state(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            output_port: self.output_port,
            pending_command: self.pending_command,
            output: self.output.iter().copied().collect(),
        }
    }

    /// The keyboard interrupt (IRQ 1) event, to register as irqfd.
    pub fn interrupt_event(&self) -> &EventFd {
        &self.kbd_interrupt
    }

    /// Types Ctrl+Alt+Del on the keyboard and raises IRQ 1.
    pub fn send_ctrl_alt_del(&mut self) -> std::io::Result<()> {
        for code in CTRL_ALT_DEL {
            self.push(code);
        }
        self.raise_interrupt()
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < BUFFER_SIZE {
            self.output.push_back(byte);
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    fn raise_interrupt(&self) -> std::io::Result<()> {
        if self.control & CTR_KBD_INT != 0 && self.control & CTR_KBD_DISABLED == 0 {
            self.kbd_interrupt.write(1)?;
        }
        Ok(())
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_CMD_DATA;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_command = Some(cmd),
            CMD_READ_OUTP => self.push(self.output_port),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(0),
            CMD_KBD_DISABLE => self.control |= CTR_KBD_DISABLED,
            CMD_KBD_ENABLE => self.control &= !CTR_KBD_DISABLED,
            CMD_RESET_CPU => {
                METRICS.i8042.reset_count.inc();
                if self.reset.code().is_none() {
                    log::info!("The guest asked for a reset through the i8042; ending the VM");
                }
                self.reset.request(ExitCode::Ok);
            }
            _ => log::debug!("Ignored i8042 command {cmd:#x}"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !SB_CMD_DATA;
        match self.pending_command.take() {
            Some(CMD_WRITE_CTR) => self.control = byte,
            Some(_) => self.output_port = byte,
            // A command to the keyboard itself: acknowledge it.
            None => {
                self.push(KBD_ACK);
                if let Err(e) = self.raise_interrupt() {
                    METRICS.i8042.error_count.inc();
                    log::warn!("Cannot raise the keyboard interrupt: {e}");
                }
            }
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            METRICS.i8042.missed_read_count.inc();
            data.fill(0xff);
            return;
        }
        METRICS.i8042.read_count.inc();
        data[0] = match offset {
            OFFSET_DATA => {
                let byte = self.output.pop_front().unwrap_or(0);
                if self.output.is_empty() {
                    self.status &= !SB_OUT_DATA_AVAIL;
                }
                byte
            }
            OFFSET_COMMAND => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            METRICS.i8042.missed_write_count.inc();
            return;
        }
        METRICS.i8042.write_count.inc();
        match offset {
            OFFSET_DATA => self.data(data[0]),
            OFFSET_COMMAND => self.command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042Device, Arc<ExitRequest>) {
        let exit = Arc::new(ExitRequest::new().unwrap());
        (I8042Device::new(exit.clone()).unwrap(), exit)
    }

    #[test]
    fn reset_command_requests_a_clean_exit() {
        let (mut d, exit) = dev();
        d.write(OFFSET_COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(exit.code(), Some(0));
    }

    #[test]
    fn control_register_round_trips() {
        let (mut d, _) = dev();
        d.write(OFFSET_COMMAND, &[CMD_WRITE_CTR]);
        d.write(OFFSET_DATA, &[0x47]);
        d.write(OFFSET_COMMAND, &[CMD_READ_CTR]);
        let mut b = [0u8];
        d.read(OFFSET_COMMAND, &mut b);
        assert_ne!(b[0] & SB_OUT_DATA_AVAIL, 0);
        d.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x47);
        d.read(OFFSET_COMMAND, &mut b);
        assert_eq!(b[0] & SB_OUT_DATA_AVAIL, 0);
    }

    #[test]
    fn keyboard_commands_are_acknowledged_with_an_interrupt() {
        let (mut d, _) = dev();
        d.write(OFFSET_DATA, &[0xf4]);
        assert_eq!(d.interrupt_event().read().unwrap(), 1);
        let mut b = [0u8];
        d.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], KBD_ACK);
    }

    #[test]
    fn ctrl_alt_del_fills_the_buffer_and_interrupts() {
        let (mut d, _) = dev();
        d.send_ctrl_alt_del().unwrap();
        assert_eq!(d.interrupt_event().read().unwrap(), 1);
        let mut b = [0u8];
        d.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x1d);
    }

    #[test]
    fn a_saved_state_round_trips_with_its_pending_command_and_buffer() {
        let (mut d, exit) = dev();
        d.write(OFFSET_COMMAND, &[CMD_WRITE_CTR]);
        d.send_ctrl_alt_del().unwrap();
        let state = d.state();
        state.validate().unwrap();
        let mut r = I8042Device::from_state(exit, &state).unwrap();
        assert_eq!(r.state(), state);
        r.write(OFFSET_DATA, &[0x33]);
        r.write(OFFSET_COMMAND, &[CMD_READ_CTR]);
        let mut b = [0u8];
        r.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x1d, "the saved buffer comes first");
    }

    #[test]
    fn saved_states_the_controller_cannot_reach_are_refused() {
        let good = dev().0.state();
        let exit = Arc::new(ExitRequest::new().unwrap());
        let bad = [
            (
                I8042State {
                    output: vec![0; BUFFER_SIZE + 1],
                    status: good.status | SB_OUT_DATA_AVAIL,
                    ..good.clone()
                },
                I8042StateError::BufferTooLong(BUFFER_SIZE + 1),
            ),
            (
                I8042State {
                    status: good.status | 0x80,
                    ..good.clone()
                },
                I8042StateError::Status(good.status | 0x80),
            ),
            (
                I8042State {
                    status: good.status | SB_OUT_DATA_AVAIL,
                    ..good.clone()
                },
                I8042StateError::Status(good.status | SB_OUT_DATA_AVAIL),
            ),
            (
                I8042State {
                    output: vec![1],
                    ..good.clone()
                },
                I8042StateError::Status(good.status),
            ),
            (
                I8042State {
                    pending_command: Some(CMD_RESET_CPU),
                    ..good.clone()
                },
                I8042StateError::PendingCommand(CMD_RESET_CPU),
            ),
        ];
        for (state, error) in bad {
            assert_eq!(state.validate().unwrap_err().to_string(), error.to_string());
            assert!(I8042Device::from_state(exit.clone(), &state).is_err());
        }
        assert_eq!(exit.code(), None);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let (mut d, _) = dev();
        for _ in 0..100 {
            d.write(OFFSET_DATA, &[0xff]);
        }
        assert_eq!(d.output.len(), BUFFER_SIZE);
    }
}
