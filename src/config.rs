//! The Firecracker-format VM configuration (`--config-file`), with Palisade's checks.

use std::fs::File;

use serde::{Deserialize, Serialize};
// Each device's configuration lives beside the device; the whole file's sections are here.
pub use crate::devices::serial_config::{SerialConfig, SerialConfigError};
pub use crate::devices::valid_resource_id;
pub use crate::devices::virtio::balloon::BalloonConfig;
use crate::devices::virtio::balloon::BalloonError;
pub use crate::devices::virtio::block::config::{
    BlockConfigError, BlockDeviceConfig, BlockDeviceUpdate, CacheType, IoEngine,
};
pub use crate::devices::virtio::rng::EntropyConfig;
pub use crate::devices::virtio::vsock::config::{
    VsockConfigError, VsockDeviceConfig, VsockPolicy, VsockUpdate,
};

use crate::arch::x86_64::cpu_template::{CpuTemplate, StaticCpuTemplate};
use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::devices::virtio::net::config::{InterfaceList, NetConfigError, NetworkInterfaceConfig};
use crate::mmds::{MmdsConfig, MmdsConfigError};
use crate::sandbox::PathRule;

mod cpu_template;
mod full;
use cpu_template::{cpu_config_section, kept_template};
pub use full::FullVmConfig;

/// Smallest guest RAM accepted, in MiB.
pub const MIN_MEM_MIB: usize = 16;
/// Firecracker's default machine: 1 vCPU, 128 MiB.
pub const DEFAULT_MEM_MIB: usize = 128;

/// Errors of configuration parsing and validation.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("Cannot read the config file {path}: {source}")]
    Read {
        /// Path given.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// JSON syntax error, unknown field or wrong type (serde's message has line and column).
    #[error("Invalid config file: {0}")]
    Json(#[from] serde_json::Error),
    /// A Firecracker section Palisade does not implement: its name and why.
    #[error("The config section '{0}' is not supported by Palisade: {1}")]
    Unsupported(&'static str, &'static str),
    /// The `serial` section or `PUT /serial` body is refused.
    #[error(transparent)]
    Serial(#[from] SerialConfigError),
    /// A balloon the device cannot serve.
    #[error("Invalid balloon: {0}")]
    Balloon(#[source] BalloonError),
    /// A value out of range.
    #[error("Invalid machine-config: {0}")]
    Machine(#[from] MachineConfigError),
    /// A second root drive.
    #[error("Invalid drive: A root block device already exists!")]
    SecondRootDrive,
    /// More drives than the VMM supports.
    #[error("Invalid drive: at most {MAX_DRIVES} drives are supported")]
    TooManyDrives,
    /// A drive is refused on its own.
    #[error("Invalid drive: {0}")]
    Block(#[from] BlockConfigError),
    /// The vsock device is refused.
    #[error("Invalid vsock")]
    Vsock(#[from] VsockConfigError),
    /// A network interface is refused.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// The `mmds-config` section is refused (Firecracker's message).
    #[error("Configuring MMDS failed: {0}")]
    Mmds(#[from] MmdsConfigError),
    /// The `cpu-config` section (a template or the path of one) is refused.
    #[error("Invalid cpu-config: {0}")]
    CpuConfig(String),
    /// `boot-source.kernel_image_path` cannot be opened (Firecracker's message).
    #[error("The kernel file cannot be opened: {0}")]
    KernelFile(std::io::Error),
    /// `boot-source.initrd_path` cannot be opened (Firecracker's message).
    #[error("The initrd file cannot be opened due to invalid path or invalid permissions. {0}")]
    InitrdFile(std::io::Error),
    /// `boot-source.boot_args` is not a valid command line (Firecracker's message).
    #[error("The kernel command line is invalid: {0}")]
    KernelCmdline(linux_loader::cmdline::Error),
}

/// Why a machine config does not fit the VMM or the host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineConfigError {
    /// vCPUs out of range.
    #[error("vcpu_count must be between 1 and {MAX_CPUS}, not {0}")]
    VcpuCount(u8),
    /// SMT with an odd number of vCPUs.
    #[error("with smt, vcpu_count must be 1 or even, not {0}")]
    OddSmt(u8),
    /// Too little memory.
    #[error("mem_size_mib must be at least {MIN_MEM_MIB}, not {0}")]
    TooLittleMemory(usize),
    /// More memory than the host has.
    #[error("mem_size_mib {mem} is more than the host's memory ({host} MiB)")]
    MoreThanHost {
        /// Asked for, MiB.
        mem: usize,
        /// The host's, MiB.
        host: usize,
    },
    /// 2M huge pages with an odd memory size.
    #[error("with 2M huge pages, mem_size_mib must be a multiple of 2, not {0}")]
    OddHugePages(usize),
}

/// Most drives a VM may have.
pub const MAX_DRIVES: usize = 8;

/// `boot-source`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// ELF vmlinux or bzImage.
    pub kernel_image_path: String,
    /// Optional initrd.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line; Firecracker's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// The files of a checked boot source, open for reading until the VM is built.
#[derive(Debug)]
pub struct BootFiles {
    /// `kernel_image_path`.
    pub kernel: File,
    /// `initrd_path`.
    pub initrd: Option<File>,
}

/// `machine-config.huge_pages` as Firecracker names it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum HugePages {
    /// Normal 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (MADV_HUGEPAGE).
    Transparent,
    /// 2 MiB huge pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `machine-config`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest RAM in MiB.
    pub mem_size_mib: usize,
    /// Two threads per core.
    #[serde(default)]
    pub smt: bool,
    /// The CPU template: a static one named here (Firecracker's deprecated field: C3, T2,
    /// T2S, T2CL, T2A; "None" clears it) or a custom one from `PUT /cpu-config`. Shown only
    /// when static, as Firecracker shows it.
    #[serde(
        default,
        deserialize_with = "cpu_template::static_template",
        serialize_with = "cpu_template::static_template_name",
        skip_serializing_if = "cpu_template::no_static_template"
    )]
    pub cpu_template: Option<CpuTemplate>,
    /// Track the pages written since the last snapshot (KVM's dirty log plus the VMM's own
    /// writes), so that Diff snapshots can be taken. Not saved in snapshots: a load says it
    /// again (`track_dirty_pages` of `PUT /snapshot/load`).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages: "None", "Transparent" or "2M" (from the host's hugetlb pool).
    #[serde(default)]
    pub huge_pages: HugePages,
    /// Palisade extension: lock guest RAM in host memory as the guest touches it, so tenant
    /// memory is never swapped to disk. Costs: the locked pages count against RLIMIT_MEMLOCK
    /// and can never be reclaimed while the VM runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mem_lock: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: HugePages::None,
            mem_lock: false,
        }
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    pub vcpu_count: Option<u8>,
    /// New memory size.
    pub mem_size_mib: Option<usize>,
    /// New SMT setting.
    pub smt: Option<bool>,
    /// New dirty page tracking setting.
    pub track_dirty_pages: Option<bool>,
    /// New static CPU template ("None" clears the template, static or custom).
    pub cpu_template: Option<StaticCpuTemplate>,
    /// New huge pages setting.
    pub huge_pages: Option<HugePages>,
    /// New memory locking setting.
    pub mem_lock: Option<bool>,
}

impl MachineConfigUpdate {
    /// True when no field is given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The configuration `base` with this update applied.
    pub fn apply(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            cpu_template: kept_template(
                self.cpu_template.map(CpuTemplate::Static),
                &base.cpu_template,
            ),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
            mem_lock: self.mem_lock.unwrap_or(base.mem_lock),
        }
    }
}

impl MachineConfig {
    /// This configuration as `PUT /machine-config` sets it over `base` (Firecracker): every
    /// field from the body, but a body without `cpu_template` keeps `base`'s template.
    pub fn replacing(mut self, base: &MachineConfig) -> MachineConfig {
        self.cpu_template = kept_template(self.cpu_template.take(), &base.cpu_template);
        self
    }

    /// Checks the values against the VMM's and the host's limits (`host_mem_mib`).
    pub fn validate(&self, host_mem_mib: usize) -> Result<(), ConfigError> {
        use MachineConfigError as E;
        if self.vcpu_count == 0 || self.vcpu_count > MAX_CPUS {
            return Err(E::VcpuCount(self.vcpu_count).into());
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 == 1 {
            return Err(E::OddSmt(self.vcpu_count).into());
        }
        if self.mem_size_mib < MIN_MEM_MIB {
            return Err(E::TooLittleMemory(self.mem_size_mib).into());
        }
        if self.mem_size_mib > host_mem_mib {
            return Err(E::MoreThanHost {
                mem: self.mem_size_mib,
                host: host_mem_mib,
            }
            .into());
        }
        if self.huge_pages == HugePages::Hugetlbfs2M && !self.mem_size_mib.is_multiple_of(2) {
            return Err(E::OddHugePages(self.mem_size_mib).into());
        }
        Ok(())
    }
}

/// The whole file. Sections of Firecracker's format that Palisade does not implement yet are
/// parsed only so that their presence is refused by name.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd, command line.
    #[serde(rename = "boot-source")]
    pub boot_source: BootSourceConfig,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// virtio-blk devices, as written.
    #[serde(default)]
    drives: Vec<BlockDeviceConfig>,
    /// The same, checked and ordered by `from_json`.
    #[serde(skip)]
    drive_list: DriveList,
    /// virtio-net devices, as written.
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<NetworkInterfaceConfig>,
    /// The same, checked by `from_json`.
    #[serde(skip)]
    interface_list: InterfaceList,
    /// Firecracker's `logger` section, applied at start.
    pub logger: Option<crate::logger::LoggerConfig>,
    /// Firecracker's `metrics` section, applied at start.
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// The virtio-rng device.
    pub entropy: Option<EntropyConfig>,
    /// The virtio-vsock device (with Palisade's optional `policy`).
    pub vsock: Option<VsockDeviceConfig>,
    /// The console's output file or FIFO and budget (`PUT /serial`'s body; Firecracker takes
    /// it only through the API).
    pub serial: Option<SerialConfig>,
    /// The virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
    /// Firecracker's virtio-pmem devices (refused unless empty).
    #[serde(default)]
    pmem: Vec<serde_json::Value>,
    /// Firecracker's virtio-mem hotplug (refused unless null).
    #[serde(rename = "memory-hotplug")]
    memory_hotplug: Option<serde_json::Value>,
    /// The MMDS configuration (checked against `network-interfaces` by `from_json`).
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfig>,
    /// Firecracker's custom CPU template: inline, or the path of a JSON file.
    #[serde(rename = "cpu-config")]
    cpu_config: Option<serde_json::Value>,
}

impl VmConfig {
    /// Parses a config from JSON text and refuses sections not supported yet.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let mut config: VmConfig = serde_json::from_str(text)?;
        // Firecracker applies the machine config, then `cpu-config` over its template.
        config.machine_config = config
            .machine_config
            .clone()
            .replacing(&MachineConfig::default());
        if let Some(section) = config.cpu_config.take().filter(|v| !v.is_null()) {
            let template = cpu_config_section(section)?;
            config.machine_config.cpu_template = Some(CpuTemplate::Custom(Box::new(template)));
        }
        let unsupported = [
            (
                "pmem",
                !config.pmem.is_empty(),
                "there is no virtio-pmem device",
            ),
            (
                "memory-hotplug",
                config.memory_hotplug.is_some(),
                "there is no virtio-mem device",
            ),
        ];
        if let Some((name, _, why)) = unsupported.iter().find(|(_, present, _)| *present) {
            return Err(ConfigError::Unsupported(name, why));
        }
        for drive in &config.drives {
            config.drive_list.insert(drive.clone())?;
        }
        for iface in &config.network_interfaces {
            config.interface_list.insert(iface.clone())?;
        }
        if let Some(vsock) = &config.vsock {
            vsock.validate()?;
        }
        if let Some(serial) = &config.serial {
            serial.validate()?;
        }
        // As `PUT /balloon` checks it: the target fits in guest memory.
        if let Some(balloon) = &config.balloon {
            balloon
                .check_fits(config.machine_config.mem_size_mib)
                .map_err(ConfigError::Balloon)?;
        }
        if let Some(mmds) = config.mmds_config.take() {
            config.mmds_config = Some(validate_mmds(mmds, &config.interface_list)?);
        }
        Ok(config)
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::from_json(&text)
    }
}

/// The drives of a VM, in attachment order: the root device first (it becomes /dev/vda).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveList(Vec<BlockDeviceConfig>);

impl DriveList {
    /// Adds a drive, or replaces the one with the same id (Firecracker's `PUT` semantics).
    pub fn insert(&mut self, drive: BlockDeviceConfig) -> Result<(), ConfigError> {
        drive.validate()?;
        let existing = self.0.iter().position(|d| d.drive_id == drive.drive_id);
        let other_root = self
            .0
            .iter()
            .any(|d| d.is_root_device && d.drive_id != drive.drive_id);
        if drive.is_root_device && other_root {
            return Err(ConfigError::SecondRootDrive);
        }
        if existing.is_none() && self.0.len() >= MAX_DRIVES {
            return Err(ConfigError::TooManyDrives);
        }
        if let Some(i) = existing {
            self.0.remove(i);
        }
        if drive.is_root_device {
            self.0.insert(0, drive);
        } else {
            self.0.push(drive);
        }
        Ok(())
    }

    /// The drives, root first.
    pub fn iter(&self) -> impl Iterator<Item = &BlockDeviceConfig> {
        self.0.iter()
    }

    /// The drive with this id, to update it in place after boot.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut BlockDeviceConfig> {
        self.0.iter_mut().find(|d| d.drive_id == id)
    }
}

/// What the VM will be built from: filled by the config file or by the API before boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmResources {
    /// Kernel, initrd, command line; required to start.
    pub boot_source: Option<BootSourceConfig>,
    /// vCPUs and memory.
    pub machine_config: MachineConfig,
    /// virtio-blk devices.
    pub drives: DriveList,
    /// The virtio-rng device.
    pub entropy: Option<EntropyConfig>,
    /// virtio-net devices.
    pub network_interfaces: InterfaceList,
    /// The virtio-vsock device (at most one).
    pub vsock: Option<VsockDeviceConfig>,
    /// The MMDS configuration, checked against the interfaces.
    pub mmds_config: Option<MmdsConfig>,
    /// Where the console goes (stdout when `None`).
    pub serial: Option<SerialConfig>,
    /// The virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
}

impl From<VmConfig> for VmResources {
    fn from(c: VmConfig) -> Self {
        Self {
            boot_source: Some(c.boot_source),
            machine_config: c.machine_config,
            drives: c.drive_list,
            entropy: c.entropy,
            network_interfaces: c.interface_list,
            vsock: c.vsock,
            mmds_config: c.mmds_config,
            serial: c.serial,
            balloon: c.balloon,
        }
    }
}

impl BootSourceConfig {
    /// Checks the boot source as Firecracker does when it is PUT: the kernel and the initrd
    /// open for reading and the command line is valid. The files stay open: the VM is built
    /// from them, not from the paths again.
    pub fn open(&self) -> Result<BootFiles, ConfigError> {
        let kernel = File::open(&self.kernel_image_path).map_err(ConfigError::KernelFile)?;
        let initrd = self
            .initrd_path
            .as_ref()
            .map(|initrd| File::open(initrd).map_err(ConfigError::InitrdFile))
            .transpose()?;
        if let Some(args) = &self.boot_args {
            linux_loader::cmdline::Cmdline::try_from(args, CMDLINE_MAX_SIZE)
                .map_err(ConfigError::KernelCmdline)?;
        }
        Ok(BootFiles { kernel, initrd })
    }

    /// The files the VMM reads to boot, for its Landlock layer.
    pub fn landlock_rules(&self) -> Vec<PathRule> {
        std::iter::once(&self.kernel_image_path)
            .chain(self.initrd_path.as_ref())
            .map(PathRule::read)
            .collect()
    }
}

impl VmResources {
    /// Every file the VM needs once it starts, for the VMM's Landlock layer.
    pub fn landlock_rules(&self) -> Vec<PathRule> {
        let drives = self.drives.iter().map(|d| {
            if d.is_read_only {
                PathRule::read(&d.path_on_host)
            } else {
                PathRule::read_write(&d.path_on_host)
            }
        });
        let flow_logs = self
            .network_interfaces
            .iter()
            .flat_map(NetworkInterfaceConfig::landlock_rules);
        self.boot_source
            .iter()
            .flat_map(BootSourceConfig::landlock_rules)
            .chain(drives)
            .chain(flow_logs)
            .collect()
    }

    /// Firecracker's full VM configuration document (`GET /vm/config`).
    pub fn to_full_config(&self) -> FullVmConfig {
        FullVmConfig {
            balloon: self.balloon.clone(),
            boot_source: self.boot_source.clone(),
            drives: self.drives.0.clone(),
            entropy: self.entropy.clone(),
            machine_config: self.machine_config.clone(),
            mmds_config: self.mmds_config.clone(),
            network_interfaces: self.network_interfaces.as_slice().to_vec(),
            vsock: self.vsock.clone(),
        }
    }
}

/// `mmds` checked against the configured `interfaces` (Firecracker's checks), with its
/// address filled in.
pub fn validate_mmds(
    mmds: MmdsConfig,
    interfaces: &InterfaceList,
) -> Result<MmdsConfig, MmdsConfigError> {
    mmds.validated(|id| interfaces.iter().any(|iface| iface.iface_id == id))
}

/// Total RAM of the host in MiB, from sysinfo(2).
pub fn host_memory_mib() -> usize {
    // SAFETY: sysinfo only writes into the zeroed struct we pass.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return usize::MAX;
    }
    let bytes = (info.totalram as u128) * u128::from(info.mem_unit.max(1));
    usize::try_from(bytes >> 20).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"boot-source":{"kernel_image_path":"/k"}}"#;

    #[test]
    fn minimal_config_gets_firecracker_defaults() {
        let c = VmConfig::from_json(MINIMAL).unwrap();
        assert_eq!(c.machine_config.vcpu_count, 1);
        assert_eq!(c.machine_config.mem_size_mib, 128);
        assert_eq!(c.boot_source.boot_args, None);
    }

    #[test]
    fn firecracker_example_config_parses() {
        let text = r#"{
          "boot-source": {"kernel_image_path": "vmlinux.bin", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "initrd_path": null},
          "drives": [],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false, "huge_pages": "None"},
          "network-interfaces": []
        }"#;
        let c = VmConfig::from_json(text).unwrap();
        assert_eq!(c.machine_config.vcpu_count, 2);
        c.machine_config.validate(4096).unwrap();
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = VmConfig::from_json("{\n  \"boot-source\": {,}\n}").unwrap_err();
        assert!(err.to_string().contains("line 2 column"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = VmConfig::from_json(r#"{"boot-source":{"kernel_image_path":"/k","kernel":1}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `kernel`"), "{err}");
        assert!(
            VmConfig::from_json(r#"{"boot-source":{"kernel_image_path":"/k"},"x":1}"#).is_err()
        );
    }

    fn drive(id: &str, path: &std::path::Path, root: bool) -> BlockDeviceConfig {
        BlockDeviceConfig {
            drive_id: id.into(),
            path_on_host: path.to_str().unwrap().into(),
            is_root_device: root,
            is_read_only: false,
            partuuid: None,
            cache_type: CacheType::Unsafe,
            rate_limiter: None,
            io_engine: IoEngine::Sync,
            socket: None,
        }
    }

    #[test]
    fn a_vsock_section_parses_round_trips_through_the_full_config_and_bad_ones_are_refused() {
        let text = r#"{"boot-source":{"kernel_image_path":"/k"},
            "vsock":{"vsock_id":"vsock0","guest_cid":3,"uds_path":"/v.sock",
                     "policy":{"guest_initiated":[],"host_initiated":["52","1000-1001"]}}}"#;
        let resources = VmResources::from(VmConfig::from_json(text).unwrap());
        let full = serde_json::to_value(resources.to_full_config()).unwrap();
        assert_eq!(full["vsock"]["uds_path"], "/v.sock");
        assert_eq!(
            full["vsock"]["policy"]["guest_initiated"],
            serde_json::json!([])
        );
        let again = VmConfig::from_json(&full.to_string()).unwrap();
        assert_eq!(VmResources::from(again), resources);
        let none = serde_json::to_value(
            VmResources::from(VmConfig::from_json(MINIMAL).unwrap()).to_full_config(),
        )
        .unwrap();
        assert!(none["vsock"].is_null());
        let err = VmConfig::from_json(
            r#"{"boot-source":{"kernel_image_path":"/k"},"vsock":{"guest_cid":1,"uds_path":"/v"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            crate::error_chain(&err),
            "Invalid vsock: Invalid guest_cid 1: must be from 3 to 4294967294"
        );
    }

    #[test]
    fn firecracker_drives_and_entropy_parse() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"{{"boot-source":{{"kernel_image_path":"/k"}},
                "drives":[{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,
                            "is_read_only":true,"cache_type":"Writeback","io_engine":"Sync",
                            "rate_limiter":{{"ops":{{"size":10,"refill_time":1000}}}}}}],
                "entropy":{{"rate_limiter":{{"bandwidth":{{"size":1000,"one_time_burst":10,"refill_time":100}}}}}}}}"#,
            file.path().display()
        );
        let resources = VmResources::from(VmConfig::from_json(&text).unwrap());
        let d = resources.drives.iter().next().unwrap();
        assert!(d.is_root_device && d.is_read_only);
        assert_eq!(d.cache_type, CacheType::Writeback);
        assert_eq!(d.rate_limiter.unwrap().ops.unwrap().size, 10);
        let entropy = resources.entropy.as_ref().unwrap();
        assert_eq!(
            entropy
                .rate_limiter
                .unwrap()
                .bandwidth
                .unwrap()
                .one_time_burst,
            Some(10)
        );
        let full = serde_json::to_value(resources.to_full_config()).unwrap();
        assert_eq!(full["drives"][0]["drive_id"], "rootfs");
        assert_eq!(full["entropy"]["rate_limiter"]["bandwidth"]["size"], 1000);
    }

    #[test]
    fn drives_are_checked_ordered_root_first_and_limited_to_8() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut drives = DriveList::default();
        drives.insert(drive("data", file.path(), false)).unwrap();
        drives.insert(drive("rootfs", file.path(), true)).unwrap();
        let ids: Vec<_> = drives.iter().map(|d| d.drive_id.as_str()).collect();
        assert_eq!(ids, ["rootfs", "data"]);
        let err = drives
            .insert(drive("root2", file.path(), true))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("A root block device already exists!"),
            "{err}"
        );
        // Replacing the root device by itself is fine.
        drives.insert(drive("rootfs", file.path(), true)).unwrap();
        for i in 2..8 {
            drives
                .insert(drive(&format!("d{i}"), file.path(), false))
                .unwrap();
        }
        let err = drives.insert(drive("d8", file.path(), false)).unwrap_err();
        assert!(err.to_string().contains("at most 8 drives"), "{err}");
        let err = drives
            .insert(drive("x", std::path::Path::new("/nonexistent/disk"), false))
            .unwrap_err();
        assert!(
            err.to_string().contains("cannot open /nonexistent/disk"),
            "{err}"
        );
        let err = drives
            .insert(drive("bad-id", file.path(), false))
            .unwrap_err();
        assert!(err.to_string().contains("invalid drive_id"), "{err}");
    }

    #[test]
    fn network_interfaces_parse_and_incomplete_ones_are_refused() {
        let text = r#"{"boot-source":{"kernel_image_path":"/k"},"network-interfaces":[{}]}"#;
        assert!(VmConfig::from_json(text)
            .unwrap_err()
            .to_string()
            .contains("missing field `iface_id`"));
        let text = r#"{"boot-source":{"kernel_image_path":"/k"},"network-interfaces":[
            {"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01",
             "firewall":{"allowed_ips":["10.0.0.2/32"],"flow_log":"/tmp/f.jsonl"}}]}"#;
        let resources = VmResources::from(VmConfig::from_json(text).unwrap());
        assert_eq!(resources.network_interfaces.iter().count(), 1);
        assert!(resources
            .landlock_rules()
            .iter()
            .any(|r| r.write && r.path == std::path::Path::new("/tmp/f.jsonl")));
        assert_eq!(
            serde_json::to_value(resources.to_full_config()).unwrap()["network-interfaces"][0]
                ["iface_id"],
            "eth0"
        );
        let text = r#"{"boot-source":{"kernel_image_path":"/k"},"drives":[{"drive_id":"rootfs"}]}"#;
        let err = VmConfig::from_json(text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid drive: drive rootfs: path_on_host is required"
        );
    }

    #[test]
    fn boot_source_files_and_command_line_are_checked_with_firecrackers_messages() {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let boot = |initrd: Option<&str>, args: Option<String>| BootSourceConfig {
            kernel_image_path: kernel.path().to_str().unwrap().into(),
            initrd_path: initrd.map(Into::into),
            boot_args: args,
        };
        boot(None, None).open().unwrap();
        boot(kernel.path().to_str(), Some("console=ttyS0".into()))
            .open()
            .unwrap();
        let missing = BootSourceConfig {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            ..boot(None, None)
        };
        assert_eq!(
            missing.open().unwrap_err().to_string(),
            "The kernel file cannot be opened: No such file or directory (os error 2)"
        );
        assert_eq!(
            boot(Some("/nonexistent/initrd"), None)
                .open()
                .unwrap_err()
                .to_string(),
            "The initrd file cannot be opened due to invalid path or invalid permissions. \
             No such file or directory (os error 2)"
        );
        let err = boot(None, Some("x".repeat(CMDLINE_MAX_SIZE + 1)))
            .open()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("The kernel command line is invalid: "),
            "{err}"
        );
    }

    #[test]
    fn machine_limits_are_enforced() {
        let m = |vcpu_count, mem_size_mib| MachineConfig {
            vcpu_count,
            mem_size_mib,
            ..Default::default()
        };
        assert!(m(0, 128).validate(1024).is_err());
        assert!(m(33, 128).validate(1024).is_err());
        assert!(m(32, 128).validate(1024).is_ok());
        assert!(m(1, 8).validate(1024).is_err());
        assert!(m(1, 2048).validate(1024).is_err());
        let smt = MachineConfig {
            smt: true,
            vcpu_count: 3,
            ..Default::default()
        };
        assert!(smt.validate(1024).is_err());
    }

    #[test]
    fn logger_and_metrics_sections_parse_like_firecrackers() {
        let text = r#"{"boot-source":{"kernel_image_path":"/k"},
                       "logger":{"log_path":"/tmp/l","level":"Debug","show_level":true},
                       "metrics":{"metrics_path":"/tmp/m"}}"#;
        let c = VmConfig::from_json(text).unwrap();
        assert_eq!(c.logger.unwrap().show_level, Some(true));
        assert_eq!(c.metrics.unwrap().metrics_path.to_str(), Some("/tmp/m"));
        let bad = r#"{"boot-source":{"kernel_image_path":"/k"},"logger":{"colour":true}}"#;
        assert!(VmConfig::from_json(bad).is_err());
    }

    #[test]
    fn machine_config_patch_changes_only_given_fields() {
        let update: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count": 4}"#).unwrap();
        let m = update.apply(&MachineConfig::default());
        assert_eq!((m.vcpu_count, m.mem_size_mib), (4, DEFAULT_MEM_MIB));
        assert!(MachineConfigUpdate::default().is_empty());
    }

    #[test]
    fn machine_config_serialises_like_firecracker() {
        let v = serde_json::to_value(MachineConfig::default()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None"})
        );
    }

    #[test]
    fn an_mmds_config_section_is_checked_against_the_interfaces() {
        let with = |mmds: &str| {
            VmConfig::from_json(&format!(
                r#"{{"boot-source":{{"kernel_image_path":"/k"}},
                    "network-interfaces":[{{"iface_id":"eth0","host_dev_name":"tap0"}}],
                    "mmds-config":{mmds}}}"#
            ))
        };
        let c = with(r#"{"network_interfaces":["eth0"],"version":"V1"}"#).unwrap();
        let resources = VmResources::from(c);
        let full = serde_json::to_value(resources.to_full_config()).unwrap();
        assert_eq!(
            full["mmds-config"],
            serde_json::json!({"version": "V1", "network_interfaces": ["eth0"],
                               "ipv4_address": "169.254.169.254", "imds_compat": false,
                               "hop_limit": 1,
                               "rate_limiter": {"ops": {"size": 100, "refill_time": 2000}}})
        );
        let err = with(r#"{"network_interfaces":["eth9"]}"#).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Mmds(MmdsConfigError::InvalidNetworkInterfaceId)
        ));
        assert!(err.to_string().starts_with("Configuring MMDS failed: "));
        assert!(with(r#"{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}"#).is_err());
    }

    /// Firecracker v1.17's `GET /vm/config` answer for the same configuration (boot source,
    /// a root drive, entropy, vsock, 2 vCPUs and 256 MiB, one interface, a logger), byte
    /// for byte.
    const FIRECRACKER_FULL_CONFIG: &str = r#"{"balloon":null,"drives":[{"drive_id":"r","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"PATH","rate_limiter":null,"io_engine":"Sync","socket":null}],"boot-source":{"kernel_image_path":"/tmp/fcq/k","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":null,"mtu":null,"rx_rate_limiter":null,"tx_rate_limiter":null}],"vsock":{"guest_cid":3,"uds_path":"/tmp/fcq/v.sock"},"entropy":{"rate_limiter":null},"pmem":[],"memory-hotplug":null}"#;

    /// Firecracker's answer with nothing configured.
    const FIRECRACKER_EMPTY_CONFIG: &str = r#"{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null,"pmem":[],"memory-hotplug":null}"#;

    #[test]
    fn the_full_config_is_firecrackers_document_byte_for_byte_and_reads_back() {
        let empty = serde_json::to_string(&VmResources::default().to_full_config()).unwrap();
        assert_eq!(empty, FIRECRACKER_EMPTY_CONFIG);
        let disk = tempfile::NamedTempFile::new().unwrap();
        let path = disk.path().to_str().unwrap();
        let text = format!(
            r#"{{"boot-source":{{"kernel_image_path":"/tmp/fcq/k"}},
                "drives":[{{"drive_id":"r","path_on_host":"{path}","is_root_device":true}}],
                "entropy":{{}},"vsock":{{"guest_cid":3,"uds_path":"/tmp/fcq/v.sock"}},
                "machine-config":{{"vcpu_count":2,"mem_size_mib":256}},
                "network-interfaces":[{{"iface_id":"eth0","host_dev_name":"tap0"}}],
                "logger":{{"log_path":"/tmp/fcq/log"}}}}"#
        );
        let resources = VmResources::from(VmConfig::from_json(&text).unwrap());
        let full = serde_json::to_string(&resources.to_full_config()).unwrap();
        assert_eq!(full, FIRECRACKER_FULL_CONFIG.replace("PATH", path));
        // The answer is a config file again, and gives the same VM.
        let again = VmResources::from(VmConfig::from_json(&full).unwrap());
        assert_eq!(again, resources);
    }

    /// Firecracker v1.17's answer with rate limiters, a partuuid, a MAC and an MTU.
    const FIRECRACKER_LIMITED_CONFIG: &str = r#"{"balloon":null,"drives":[{"drive_id":"r","partuuid":"abc","is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"PATH","rate_limiter":{"bandwidth":null,"ops":{"size":10,"one_time_burst":5,"refill_time":100}},"io_engine":"Sync","socket":null}],"boot-source":{"kernel_image_path":"/k","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01","mtu":1500,"rx_rate_limiter":{"bandwidth":{"size":1000,"one_time_burst":null,"refill_time":100},"ops":null},"tx_rate_limiter":null}],"vsock":null,"entropy":null,"pmem":[],"memory-hotplug":null}"#;

    #[test]
    fn rate_limiters_show_both_buckets_and_every_field_as_firecracker_does() {
        let disk = tempfile::NamedTempFile::new().unwrap();
        let path = disk.path().to_str().unwrap();
        let text = format!(
            r#"{{"boot-source":{{"kernel_image_path":"/k"}},
                "drives":[{{"drive_id":"r","path_on_host":"{path}","is_root_device":true,"partuuid":"abc",
                           "rate_limiter":{{"ops":{{"size":10,"one_time_burst":5,"refill_time":100}}}}}}],
                "network-interfaces":[{{"iface_id":"eth0","host_dev_name":"tap0","mtu":1500,
                    "guest_mac":"06:00:00:00:00:01",
                    "rx_rate_limiter":{{"bandwidth":{{"size":1000,"refill_time":100}}}}}}]}}"#
        );
        let resources = VmResources::from(VmConfig::from_json(&text).unwrap());
        let full = serde_json::to_string(&resources.to_full_config()).unwrap();
        assert_eq!(full, FIRECRACKER_LIMITED_CONFIG.replace("PATH", path));
        let again = VmResources::from(VmConfig::from_json(&full).unwrap());
        assert_eq!(again, resources);
    }

    #[test]
    fn firecracker_sections_palisade_does_not_build_are_refused_by_name_with_why() {
        let with = |section: &str| {
            VmConfig::from_json(&format!(
                r#"{{"boot-source":{{"kernel_image_path":"/k"}},{section}}}"#
            ))
        };
        for (section, name, why) in [
            (
                r#""pmem":[{"id":"p","path_on_host":"/p"}]"#,
                "pmem",
                "virtio-pmem",
            ),
            (
                r#""memory-hotplug":{"total_size_mib":1024}"#,
                "memory-hotplug",
                "virtio-mem",
            ),
        ] {
            let err = with(section).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "The config section '{name}' is not supported by Palisade: "
                )) && err.contains(why),
                "{err}"
            );
        }
        // Unset, as GET /vm/config shows them, they are accepted.
        with(r#""balloon":null,"cpu-config":null,"pmem":[],"memory-hotplug":null,"logger":null,"metrics":null"#)
            .unwrap();
    }

    #[test]
    fn vhost_user_drives_are_refused_by_name_and_mtu_is_checked_as_firecracker_does() {
        let err = VmConfig::from_json(
            r#"{"boot-source":{"kernel_image_path":"/k"},"drives":[{"drive_id":"v","is_root_device":false,"socket":"/vu.sock"}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid drive: drive v: vhost-user drives ('socket') are not supported by Palisade: its block devices are backed by a file (path_on_host)"
        );
        let with_mtu = |mtu: &str| {
            VmConfig::from_json(&format!(
                r#"{{"boot-source":{{"kernel_image_path":"/k"}},"network-interfaces":[{{"iface_id":"eth0","host_dev_name":"tap0","mtu":{mtu}}}]}}"#
            ))
        };
        assert_eq!(
            with_mtu("67").unwrap_err().to_string(),
            "Could not create the network device: MTU 67 is out of range [68, 65535]"
        );
        assert!(with_mtu("70000")
            .unwrap_err()
            .to_string()
            .contains("expected u16"));
        let resources = VmResources::from(with_mtu("68").unwrap());
        let full = serde_json::to_value(resources.to_full_config()).unwrap();
        assert_eq!(full["network-interfaces"][0]["mtu"], 68);
        with_mtu("65535").unwrap();
    }
}
