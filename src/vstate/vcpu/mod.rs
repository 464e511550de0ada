//! vCPUs: configuration before boot, and the threads that run them (`control` starts,
//! pauses and stops them; `run` handles each exit).

mod control;
mod run;
#[cfg(test)]
mod template_tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

pub use control::{GuestRun, Vcpus};
use run::RunningVcpu;

use super::exit::{ExitCode, ExitRequest};
use super::memory::GuestMemory;
use super::snapshot::{Host, StateError, VcpuState};
use super::vm::Vm;
use crate::arch::x86_64::cpu_template::{self, CustomCpuTemplate};
use crate::arch::x86_64::cpuid::{self, VcpuTopology};
use crate::arch::x86_64::regs::{self, EntryMode};
use crate::arch::x86_64::{lapic, msr};
use crate::devices::bus::Buses;
use crate::logger::RateLimitedLog;
use crate::seccomp::{SeccompFilters, ThreadKind};

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
    /// The CPU template does not fit what KVM offers this vCPU.
    #[error("Cannot apply the CPU template to vCPU {0}")]
    Template(u8, #[source] cpu_template::ApplyError),
    /// Register setup failed.
    #[error("Cannot set the registers of vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
    /// LAPIC setup failed.
    #[error("Cannot set the local APIC of vCPU {0}")]
    Lapic(u8, #[source] lapic::LapicError),
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// A snapshot's state was refused or could not be set.
    #[error("Cannot restore the state of vCPU {0}")]
    Restore(u8, #[source] StateError),
    /// The thread could not be spawned.
    #[error("Cannot spawn the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    /// Device buses for I/O and MMIO exits.
    buses: Arc<Buses>,
    /// Guest memory, to read instruction bytes for error reports.
    mem: GuestMemory,
    /// Where a vCPU asks the VM to end.
    exit: Arc<ExitRequest>,
    /// Port accesses no device answered.
    unknown_pio: RateLimitedLog,
    /// MMIO accesses no device answered.
    unknown_mmio: RateLimitedLog,
    /// What snapshot state is checked against (None: this host cannot snapshot).
    host: Option<Host>,
    /// vCPU states captured by `Vcpus::serve_paused`, by index.
    captured: Mutex<BTreeMap<u8, Result<VcpuState, StateError>>>,
}

impl VcpuShared {
    /// What the vCPUs of a VM with these buses and memory share; they end the VM through
    /// `exit`.
    /// `host` is what snapshots check against (probed before seccomp; None when this host
    /// cannot snapshot).
    pub fn new(
        buses: Arc<Buses>,
        mem: GuestMemory,
        exit: Arc<ExitRequest>,
        host: Option<Host>,
    ) -> Self {
        Self {
            buses,
            mem,
            exit,
            unknown_pio: RateLimitedLog::new(),
            unknown_mmio: RateLimitedLog::new(),
            host,
            captured: Mutex::new(BTreeMap::new()),
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// What snapshots check against, if this host can snapshot.
    pub fn host(&self) -> Option<&Host> {
        self.host.as_ref()
    }

    /// Takes the vCPU states captured since the last call.
    pub fn take_captured(&self) -> BTreeMap<u8, Result<VcpuState, StateError>> {
        std::mem::take(&mut *self.captured.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the VM to end with `code` (the first request wins).
    pub fn request_exit(&self, code: ExitCode) {
        self.exit.request(code);
    }
}

/// Installs the kick signal handler: the signal takes a vCPU thread out of KVM_RUN, or
/// keeps it from entering.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    control::register_kick_handler().map_err(VcpuError::Signal)
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
    /// INIT/SIPI in the in-kernel LAPIC. A CPU `template` changes the normalised CPUID
    /// before KVM gets it, and the boot MSRs after they are set.
    pub fn new(
        vm: &Vm,
        mem: &GuestMemory,
        supported: &CpuId,
        topo: VcpuTopology,
        entry: BootEntry,
        template: Option<&CustomCpuTemplate>,
    ) -> Result<Self, VcpuError> {
        let index = topo.index;
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        let mut cpuid = supported.clone();
        cpuid::normalize(&mut cpuid, topo).map_err(|e| VcpuError::CpuidEntries(index, e))?;
        if let Some(template) = template {
            cpu_template::apply_to_cpuid(&mut cpuid, template)
                .map_err(|e| VcpuError::Template(index, e))?;
        }
        fd.set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Cpuid(index, e))?;
        msr::setup_msrs(&fd).map_err(|e| VcpuError::Msr(index, e))?;
        if let Some(template) = template {
            cpu_template::apply_to_msrs(&fd, template)
                .map_err(|e| VcpuError::Template(index, e))?;
        }
        regs::setup_fpu(&fd).map_err(|e| VcpuError::Regs(index, e))?;
        if index == 0 {
            regs::setup_regs(&fd, entry.address, entry.mode)
                .map_err(|e| VcpuError::Regs(index, e))?;
            regs::setup_sregs(mem, &fd, entry.mode).map_err(|e| VcpuError::Regs(index, e))?;
        }
        lapic::setup_lint(&fd).map_err(|e| VcpuError::Lapic(index, e))?;
        Ok(Self { index, fd })
    }

    /// Creates vCPU `index` from a snapshot's `state` (validated before KVM sees it). Call
    /// before the VM's state is restored, with no vCPU of the VM running.
    pub fn restored(vm: &Vm, index: u8, state: &VcpuState, host: &Host) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        state
            .restore(&fd, index, host)
            .map_err(|e| VcpuError::Restore(index, e))?;
        Ok(Self { index, fd })
    }

    /// Spawns the thread `vcpu{index}` in `vcpus`: it installs the vcpu seccomp filter,
    /// then runs the guest once `vcpus` lets it.
    pub fn spawn(
        self,
        vcpus: &mut Vcpus,
        shared: Arc<VcpuShared>,
        seccomp: Arc<SeccompFilters>,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        vcpus
            .spawn(format!("vcpu{index}"), move || RunningVcpu {
                index,
                fd: self.fd,
                shared,
                filtered: Some(seccomp.apply(ThreadKind::Vcpu)),
            })
            .map_err(|e| VcpuError::Spawn(index, e))
    }
}
