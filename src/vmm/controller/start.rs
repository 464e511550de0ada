//! Why the VM could not start, one variant per cause, and the exit code each cause gives a
//! `--no-api` run.

use crate::config::{BootSourceConfig, ConfigError};
use crate::devices::virtio::net::config::NetConfigError;
use crate::devices::virtio::net::NetError;
use crate::devices::virtio::vsock::VsockError;
use crate::sandbox::SandboxError;
use crate::vmm::builder::BuildError;
use crate::vmm::controller::mmds::MmdsStartError;
use crate::vmm::device_manager::AttachError;
use crate::vmm::RunError;
use crate::vstate::exit::ExitCode;

/// Why the VM could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The machine config does not fit this host.
    #[error(transparent)]
    MachineConfig(ConfigError),
    /// The boot source's files do not open (a config file's resources had no PUT checks).
    #[error("{source} (boot-source {})", boot_files(boot))]
    BootSource {
        /// Why it was refused.
        source: ConfigError,
        /// The boot source refused.
        boot: Box<BootSourceConfig>,
    },
    /// A network interface's tap does not open.
    #[error(transparent)]
    Taps(NetError),
    /// The vsock device (a config file's `vsock` section) cannot be created.
    #[error(transparent)]
    Vsock(VsockError),
    /// The console output does not open.
    #[error(transparent)]
    Serial(crate::config::SerialConfigError),
    /// A network interface's flow log cannot be created.
    #[error(transparent)]
    FlowLog(NetConfigError),
    /// The VMM's Landlock ruleset cannot be applied.
    #[error(transparent)]
    Landlock(SandboxError),
    /// The VM cannot be built.
    #[error(transparent)]
    Build(BuildError),
    /// The MMDS responders cannot be set up.
    #[error(transparent)]
    Mmds(MmdsStartError),
    /// The built VM's vCPUs cannot start.
    #[error(transparent)]
    Start(Box<RunError>),
}

impl StartError {
    /// The process exit code of a `--no-api` run that fails this way: a bad configuration,
    /// a host without what the VM needs, or the VMM's own failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::MachineConfig(_)
            | Self::BootSource { .. }
            | Self::Taps(_)
            | Self::FlowLog(_)
            | Self::Vsock(_)
            | Self::Serial(_)
            | Self::Landlock(_) => ExitCode::BadConfiguration,
            Self::Build(BuildError::Vm(_) | BuildError::CpuTemplate(_)) => {
                ExitCode::HostUnsupported
            }
            Self::Build(
                BuildError::Kernel(_)
                | BuildError::MissingKernelConfig
                | BuildError::Vcpu(crate::vstate::vcpu::VcpuError::Template(..))
                | BuildError::Virtio(
                    AttachError::Block(_)
                    | AttachError::Net(_)
                    | AttachError::NoSlot
                    | AttachError::Cmdline(_),
                ),
            ) => ExitCode::BadConfiguration,
            Self::Build(_) | Self::Start(_) | Self::Mmds(_) => ExitCode::VmmError,
        }
    }
}

/// The files of a boot source, for a config file's error line.
fn boot_files(boot: &BootSourceConfig) -> String {
    match &boot.initrd_path {
        Some(initrd) => format!(
            "kernel_image_path {}, initrd_path {initrd}",
            boot.kernel_image_path
        ),
        None => format!("kernel_image_path {}", boot.kernel_image_path),
    }
}
