//! The few platform devices the probe touches outside virtio: port I/O, the boot timer, the
//! i8042 reset line, and the gate to halting at CPL0.

use core::arch::asm;

/// Firecracker's boot-timer device: writing this byte marks "guest booted".
const BOOT_TIMER_ADDR: u64 = 0xc000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_CMD_RESET: u8 = 0xfe;

extern "C" {
    /// `ud2` at a RIP that the #UD handler in boot.rs turns into `cli; hlt` at CPL0.
    fn probe_idle_gate() -> !;
    /// `ud2` at a RIP that the #UD handler turns into a triple fault at CPL0.
    fn probe_triple_fault_gate() -> !;
}

/// Port output; legal at CPL0 and at CPL3 (boot.rs runs CPL3 with IOPL 3).
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output touches no memory of this program; the probe owns the machine.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) };
}

/// Port input; legal at CPL3 for ports 0..0x3ff (I/O permission bitmap).
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input touches no memory of this program; the probe owns the machine.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Ends the machine with a triple fault (an empty IDT, then an exception at CPL0).
pub fn triple_fault() -> ! {
    // SAFETY: the gate never returns; the #UD handler recognises its address.
    unsafe { probe_triple_fault_gate() }
}

pub fn write_boot_timer() {
    // SAFETY: 0xc000_0000 is mapped uncached and user-accessible by boot.rs; it is MMIO.
    unsafe { core::ptr::write_volatile(BOOT_TIMER_ADDR as *mut u8, BOOT_TIMER_MAGIC) };
}

/// Halts the boot CPU forever at CPL0 (`cli; hlt` loop) until the VMM is killed.
pub fn halt_forever() -> ! {
    // SAFETY: the gate never returns; the #UD handler recognises its address.
    unsafe { probe_idle_gate() }
}

/// Asks the VMM to power off through the i8042 reset line; halts if it does not.
pub fn power_off() -> ! {
    outb(I8042_COMMAND_PORT, I8042_CMD_RESET);
    halt_forever()
}

/// Power-off request usable from the CPL0 exception path (which halts by itself after it).
pub fn request_power_off() {
    outb(I8042_COMMAND_PORT, I8042_CMD_RESET);
}
