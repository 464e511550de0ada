//! Output on the 8250 UART at 0x3f8, one `out` per byte.
//!
//! The VMM's UART always accepts a byte, so the line status register is never polled (every
//! port-I/O exit costs ~25 µs on the development host). No `core::fmt`: these helpers are
//! also used by the CPL0 exception reporter, which must stay free of SSE.

use crate::platform::outb;

const COM1: u16 = 0x3f8;

pub fn put_byte(byte: u8) {
    outb(COM1, byte);
}

pub fn put_bytes(bytes: &[u8]) {
    for &byte in bytes {
        put_byte(byte);
    }
}

pub fn put_str(text: &str) {
    put_bytes(text.as_bytes());
}

pub fn put_dec(value: u64) {
    // Digits from the most significant, without a buffer (a zeroed array becomes SSE).
    let mut divisor = 1;
    while divisor <= value / 10 {
        divisor *= 10;
    }
    loop {
        put_byte(b'0' + (value / divisor % 10) as u8);
        if divisor == 1 {
            break;
        }
        divisor /= 10;
    }
}

/// `0x` and the value in lower-case hex without leading zeros.
pub fn put_hex(value: u64) {
    put_str("0x");
    let mut shift = 60;
    while shift > 0 && (value >> shift) & 0xf == 0 {
        shift -= 4;
    }
    loop {
        put_byte(b"0123456789abcdef"[((value >> shift) & 0xf) as usize]);
        if shift == 0 {
            break;
        }
        shift -= 4;
    }
}

/// One `probe: NAME ok|fail ...` result line, built piece by piece.
#[must_use = "finish the line with end()"]
pub struct ResultLine;

impl ResultLine {
    pub fn ok(name: &[u8]) -> Self {
        Self::start(name, true)
    }

    pub fn fail(name: &[u8]) -> Self {
        Self::start(name, false)
    }

    pub fn start(name: &[u8], ok: bool) -> Self {
        put_str("probe: ");
        put_bytes(name);
        put_str(if ok { " ok" } else { " fail" });
        ResultLine
    }

    /// Appends ` text`.
    pub fn text(self, text: &str) -> Self {
        put_byte(b' ');
        put_str(text);
        self
    }

    /// Appends ` key=decimal`.
    pub fn dec(self, key: &str, value: u64) -> Self {
        put_byte(b' ');
        put_str(key);
        put_byte(b'=');
        put_dec(value);
        self
    }

    /// Appends ` key=text`.
    pub fn word(self, key: &str, text: &[u8]) -> Self {
        put_byte(b' ');
        put_str(key);
        put_byte(b'=');
        put_bytes(text);
        self
    }

    /// Appends ` key=0xhex`.
    pub fn hex(self, key: &str, value: u64) -> Self {
        put_byte(b' ');
        put_str(key);
        put_byte(b'=');
        put_hex(value);
        self
    }

    pub fn end(self) {
        put_byte(b'\n');
    }
}
