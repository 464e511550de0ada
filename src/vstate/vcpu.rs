//! vCPUs: configuration before boot, and the thread that runs each one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::exit::{ExitCode, ExitRequest};
use super::memory::GuestMemory;
use super::vm::Vm;
use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::arch::x86_64::{lapic, msr};
use crate::devices::bus::Buses;
use crate::logger::RateLimitedLog;
use crate::metrics::METRICS;
use crate::seccomp::{SeccompFilters, ThreadKind};

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// KVM_SYSTEM_EVENT types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;

/// Errors of vCPU setup and start.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// The CPUID list cannot hold the entries this vCPU needs.
    #[error("Cannot build the CPUID of vCPU {0}")]
    CpuidEntries(u8, #[source] vmm_sys_util::fam::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("Cannot set the CPUID of vCPU {0}")]
    Cpuid(u8, #[source] kvm_ioctls::Error),
    /// MSR setup failed.
    #[error("Cannot set the MSRs of vCPU {0}")]
    Msr(u8, #[source] msr::MsrError),
    /// Register setup failed.
    #[error("Cannot set the registers of vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
    /// LAPIC setup failed.
    #[error("Cannot set the local APIC of vCPU {0}")]
    Lapic(u8, #[source] lapic::LapicError),
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The thread could not be spawned.
    #[error("Cannot spawn the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    /// Device buses for I/O and MMIO exits.
    pub buses: Arc<Buses>,
    /// Guest memory, to read instruction bytes for error reports.
    pub mem: GuestMemory,
    /// Where a vCPU asks the VM to end.
    pub exit: Arc<ExitRequest>,
    /// Set when the VMM stops the vCPUs.
    pub stop: AtomicBool,
    /// Set while the VMM wants the vCPUs parked (paused).
    pub pause_requested: AtomicBool,
    /// Number of vCPU threads parked.
    pub parked: Mutex<usize>,
    /// Signalled when `parked` or `pause_requested` changes.
    pub park_changed: Condvar,
    /// Port accesses no device answered.
    pub unknown_pio: RateLimitedLog,
    /// MMIO accesses no device answered.
    pub unknown_mmio: RateLimitedLog,
}

/// One vCPU before it runs.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

/// How the boot vCPU starts.
#[derive(Clone, Copy, Debug)]
pub struct BootEntry {
    /// Entry address.
    pub address: u64,
    /// Boot protocol.
    pub mode: EntryMode,
}

impl Vcpu {
    /// Creates vCPU `index` of `topo.count` and sets CPUID, MSRs, FPU and LAPIC; the boot vCPU
    /// (index 0) also gets the registers for `entry`. Application processors wait for
    /// INIT/SIPI in the in-kernel LAPIC.
    pub fn new(
        vm: &Vm,
        mem: &GuestMemory,
        supported: &CpuId,
        topo: VcpuTopology,
        entry: BootEntry,
    ) -> Result<Self, VcpuError> {
        let index = topo.index;
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        let mut cpuid = supported.clone();
        cpuid::normalize(&mut cpuid, topo).map_err(|e| VcpuError::CpuidEntries(index, e))?;
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Cpuid(index, e))?;
        msr::setup_msrs(&fd).map_err(|e| VcpuError::Msr(index, e))?;
        regs::setup_fpu(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        if index == 0 {
            regs::setup_regs(&fd, entry.address, entry.mode)
                .map_err(|e| VcpuError::Regs(index, e))?;
            regs::setup_sregs(mem, &fd, entry.mode).map_err(|e| VcpuError::Regs(index, e))?;
        }
        lapic::setup_lint(&fd).map_err(|e| VcpuError::Lapic(index, e))?;
        Ok(Self { index, fd })
    }

    /// Starts the thread `vcpu{index}`: it installs the vcpu seccomp filter, waits until
    /// `gate` opens, then runs the guest.
    pub fn start(
        self,
        shared: Arc<VcpuShared>,
        gate: Arc<StartGate>,
        seccomp: Arc<SeccompFilters>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let filtered = seccomp.apply(ThreadKind::Vcpu);
                if !gate.wait() {
                    return;
                }
                if let Err(e) = filtered {
                    log::error!("vCPU {index}: {e}");
                    shared.exit.request(ExitCode::VmmError);
                    return;
                }
                self.run(&shared);
            })
            .map_err(|e| VcpuError::Spawn(index, e))
    }

    fn run(mut self, shared: &VcpuShared) {
        while !shared.stop.load(Ordering::Acquire) {
            if shared.pause_requested.load(Ordering::Acquire) {
                park(shared);
                continue;
            }
            match self.run_once(shared) {
                Ok(true) => {}
                Ok(false) => break,
                Err(code) => {
                    METRICS.vcpu.failures.inc();
                    shared.exit.request(code);
                    break;
                }
            }
        }
        log::debug!("vCPU {} stopped", self.index);
    }

    /// Runs the guest until its next exit and handles it. Ok(false) ends this vCPU.
    fn run_once(&mut self, shared: &VcpuShared) -> Result<bool, ExitCode> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(true);
            }
            Err(e) => {
                METRICS.vcpu.failures.inc();
                log::error!("KVM_RUN failed on vCPU {}: {e}", self.index);
                return Err(ExitCode::VmmError);
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                METRICS.vcpu.exit_io_in.inc();
                if !shared.buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    if let Some(n) = shared.unknown_pio.hit() {
                        log::debug!("Unhandled port read at {port:#x} (#{n})");
                    }
                }
            }
            VcpuExit::IoOut(port, data) => {
                METRICS.vcpu.exit_io_out.inc();
                if !shared.buses.pio.write(u64::from(port), data) {
                    if let Some(n) = shared.unknown_pio.hit() {
                        log::debug!("Unhandled port write at {port:#x} (#{n})");
                    }
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                METRICS.vcpu.exit_mmio_read.inc();
                if !shared.buses.mmio.read(addr, data) {
                    data.fill(0xff);
                    if let Some(n) = shared.unknown_mmio.hit() {
                        log::debug!("Unhandled MMIO read at {addr:#x} (#{n})");
                    }
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                METRICS.vcpu.exit_mmio_write.inc();
                if !shared.buses.mmio.write(addr, data) {
                    if let Some(n) = shared.unknown_mmio.hit() {
                        log::debug!("Unhandled MMIO write at {addr:#x} (#{n})");
                    }
                }
            }
            VcpuExit::Hlt => {
                log::info!("vCPU {} halted; ending the VM", self.index);
                shared.exit.request(ExitCode::Ok);
                return Ok(false);
            }
            VcpuExit::Shutdown => {
                log::info!(
                    "vCPU {} shut down (triple fault); ending the VM",
                    self.index
                );
                shared.exit.request(ExitCode::Ok);
                return Ok(false);
            }
            VcpuExit::SystemEvent(kind, _) => {
                let what = match kind {
                    SYSTEM_EVENT_SHUTDOWN => "shutdown",
                    SYSTEM_EVENT_RESET => "reset",
                    _ => "system event",
                };
                log::info!(
                    "vCPU {} reported a {what} ({kind}); ending the VM",
                    self.index
                );
                shared.exit.request(ExitCode::Ok);
                return Ok(false);
            }
            VcpuExit::FailEntry(reason, cpu) => {
                log::error!(
                    "KVM_EXIT_FAIL_ENTRY on vCPU {}: hardware entry failure reason {reason:#x} \
                     on host CPU {cpu}; {}",
                    self.index,
                    self.describe_rip(shared)
                );
                return Err(ExitCode::GuestError);
            }
            VcpuExit::InternalError => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // union member KVM filled in.
                let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
                let ndata = (internal.ndata as usize).min(internal.data.len());
                log::error!(
                    "KVM_EXIT_INTERNAL_ERROR on vCPU {}: suberror {} ({}), data {:x?}; {}",
                    self.index,
                    internal.suberror,
                    suberror_name(internal.suberror),
                    &internal.data[..ndata],
                    self.describe_rip(shared)
                );
                return Err(ExitCode::GuestError);
            }
            VcpuExit::Intr => {}
            other => {
                let what = format!("{other:?}");
                log::error!(
                    "Unexpected exit {what} on vCPU {}; {}",
                    self.index,
                    self.describe_rip(shared)
                );
                return Err(ExitCode::GuestError);
            }
        }
        Ok(true)
    }

    /// "RIP 0x.. (guest physical 0x..), instruction bytes [..]" for error reports.
    fn describe_rip(&self, shared: &VcpuShared) -> String {
        let rip = match self.fd.get_regs() {
            Ok(r) => r.rip,
            Err(e) => return format!("registers unavailable: {e}"),
        };
        let gpa = match self.fd.translate_gva(rip) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ => return format!("RIP {rip:#x} (not mapped)"),
        };
        let mut bytes = [0u8; 16];
        match shared.mem.read_slice(&mut bytes, GuestAddress(gpa)) {
            Ok(()) => {
                format!("RIP {rip:#x} (guest physical {gpa:#x}), instruction bytes {bytes:02x?}")
            }
            Err(_) => format!("RIP {rip:#x} (guest physical {gpa:#x}, outside RAM)"),
        }
    }
}

/// Holds vCPU threads until every one exists and the VMM thread is filtered, then releases
/// them together (or tells them to end without running).
#[derive(Default)]
pub struct StartGate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    /// Releases the waiting threads; `run` says whether they run the guest.
    pub fn open(&self, run: bool) {
        *lock(&self.state) = Some(run);
        self.opened.notify_all();
    }

    /// Waits until the gate opens; true when the guest should run.
    fn wait(&self) -> bool {
        let mut state = lock(&self.state);
        loop {
            if let Some(run) = *state {
                return run;
            }
            state = self.opened.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Waits, out of KVM_RUN, while a pause is requested and the VM is not stopping.
fn park(shared: &VcpuShared) {
    let mut parked = lock(&shared.parked);
    *parked += 1;
    shared.park_changed.notify_all();
    while shared.pause_requested.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
        parked = shared
            .park_changed
            .wait(parked)
            .unwrap_or_else(|e| e.into_inner());
    }
    *parked -= 1;
    shared.park_changed.notify_all();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parks every vCPU thread out of KVM_RUN; returns once all are parked, or false after
/// `timeout`.
pub fn pause_vcpus(shared: &VcpuShared, handles: &[JoinHandle<()>], timeout: Duration) -> bool {
    shared.pause_requested.store(true, Ordering::Release);
    let deadline = Instant::now() + timeout;
    let mut parked = lock(&shared.parked);
    while *parked < handles.iter().filter(|h| !h.is_finished()).count() {
        if Instant::now() > deadline {
            return false;
        }
        for handle in handles.iter().filter(|h| !h.is_finished()) {
            // A failed kick is retried at the next round.
            let _ = handle.kill(kick_signal());
        }
        parked = shared
            .park_changed
            .wait_timeout(parked, Duration::from_millis(2))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// Lets parked vCPU threads run the guest again.
pub fn resume_vcpus(shared: &VcpuShared) {
    let _parked = lock(&shared.parked);
    shared.pause_requested.store(false, Ordering::Release);
    shared.park_changed.notify_all();
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event via an event-delivery fault",
        4 => "unexpected exit during event delivery",
        _ => "unknown",
    }
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick signal handler so the signal interrupts KVM_RUN.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::Signal)
}

/// Stops every vCPU: sets the stop flag and kicks the threads until they end, for at most
/// `timeout`. Returns the number of threads still running.
pub fn stop_vcpus(
    shared: &VcpuShared,
    handles: Vec<JoinHandle<()>>,
    timeout: std::time::Duration,
) -> usize {
    shared.stop.store(true, Ordering::Release);
    {
        let _parked = lock(&shared.parked);
        shared.park_changed.notify_all();
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut running = handles;
    while !running.is_empty() && std::time::Instant::now() < deadline {
        for handle in &running {
            if !handle.is_finished() {
                // A failed kick is retried at the next round.
                let _ = handle.kill(kick_signal());
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        let (done, still): (Vec<_>, Vec<_>) = running.into_iter().partition(|h| h.is_finished());
        for handle in done {
            // A vCPU thread that panicked is already reported by the panic hook.
            let _ = handle.join();
        }
        running = still;
    }
    running.len()
}
