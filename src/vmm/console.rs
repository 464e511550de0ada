//! The serial console's input: stdin, in raw mode when it is a terminal, fed to COM1.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;

use nix::sys::termios::{self, SetArg, Termios};

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

/// Moves what is waiting on stdin into the serial receive FIFO, as much as it has room for.
/// Returns false when stdin is closed or failed and should no longer be watched.
pub fn forward_input(serial: &Mutex<SerialDevice>) -> bool {
    let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
    let room = serial.input_room().min(64);
    if room == 0 {
        return true;
    }
    let mut buf = [0u8; 64];
    match std::io::stdin().lock().read(&mut buf[..room]) {
        Ok(0) => false,
        Ok(n) => {
            serial.enqueue_input(&buf[..n]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
        Err(e) => {
            log::warn!("Console input stopped: {e}");
            false
        }
    }
}
