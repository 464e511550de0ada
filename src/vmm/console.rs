//! The serial console's input: stdin, in raw mode when it is a terminal, fed to COM1.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use nix::sys::termios::{self, SetArg, Termios};
use vmm_sys_util::epoll::EventSet;

use crate::devices::serial::SerialDevice;

/// Puts the terminal on stdin in raw mode and restores it when dropped.
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Raw mode for stdin if it is a terminal; None otherwise.
    pub fn enable() -> Option<Self> {
        let stdin = std::io::stdin();
        if !nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Keep output post-processing so the VMM's own log lines still start at column 0.
        raw.output_flags = saved.output_flags;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Moves bytes typed on stdin into the serial receive FIFO.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
}

impl ConsoleInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self { serial }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let room = serial.input_room().min(64);
        if events.event_set().contains(EventSet::IN) && room > 0 {
            let mut buf = [0u8; 64];
            match std::io::stdin().lock().read(&mut buf[..room]) {
                Ok(0) => {
                    let _ = ops.remove(events);
                }
                Ok(n) => serial.enqueue_input(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("Console input stopped: {e}");
                    let _ = ops.remove(events);
                }
            }
        } else if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            let _ = ops.remove(events);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            log::warn!("Cannot watch stdin for console input: {e}");
        }
    }
}
