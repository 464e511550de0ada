//! `GET /vm/config`: the whole configuration in Firecracker's shape. Every section Firecracker
//! emits is present, in its order, with `null` (or `[]`) where unset; Palisade's own fields
//! (`policy`, `firewall`, `mem_lock`) appear only when set, so a Firecracker configuration
//! reads back exactly as Firecracker answers it.

use serde::Serialize;

use super::{
    BalloonConfig, BlockDeviceConfig, BootSourceConfig, EntropyConfig, MachineConfig,
    VsockDeviceConfig,
};
use crate::devices::virtio::net::config::NetworkInterfaceConfig;
use crate::mmds::MmdsConfig;
use crate::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// The document `GET /vm/config` answers (owned, so the controller can hand it out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullVmConfig {
    /// `balloon`.
    pub balloon: Option<BalloonConfig>,
    /// `boot-source` (Firecracker shows an empty kernel path when unset).
    pub boot_source: Option<BootSourceConfig>,
    /// `drives`, root first.
    pub drives: Vec<BlockDeviceConfig>,
    /// `entropy`.
    pub entropy: Option<EntropyConfig>,
    /// `machine-config`.
    pub machine_config: MachineConfig,
    /// `mmds-config`, the address filled in.
    pub mmds_config: Option<MmdsConfig>,
    /// `network-interfaces`.
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// `vsock`.
    pub vsock: Option<VsockDeviceConfig>,
}

/// Firecracker's key order; `cpu-config`, `pmem` and `memory-hotplug` are devices Palisade
/// does not build, `logger` and `metrics` Firecracker itself always shows as null.
#[derive(Serialize)]
struct Document<'a> {
    balloon: &'a Option<BalloonConfig>,
    drives: Vec<Drive<'a>>,
    #[serde(rename = "boot-source")]
    boot_source: BootSource<'a>,
    #[serde(rename = "cpu-config")]
    cpu_config: Option<()>,
    logger: Option<()>,
    #[serde(rename = "machine-config")]
    machine_config: &'a MachineConfig,
    metrics: Option<()>,
    #[serde(rename = "mmds-config")]
    mmds_config: &'a Option<MmdsConfig>,
    #[serde(rename = "network-interfaces")]
    network_interfaces: Vec<Interface<'a>>,
    vsock: &'a Option<VsockDeviceConfig>,
    entropy: Option<Entropy>,
    pmem: [(); 0],
    #[serde(rename = "memory-hotplug")]
    memory_hotplug: Option<()>,
}

#[derive(Serialize)]
struct BootSource<'a> {
    kernel_image_path: &'a str,
    initrd_path: Option<&'a str>,
    boot_args: Option<&'a str>,
}

#[derive(Serialize)]
struct Drive<'a> {
    drive_id: &'a str,
    partuuid: &'a Option<String>,
    is_root_device: bool,
    cache_type: super::CacheType,
    is_read_only: bool,
    path_on_host: &'a str,
    rate_limiter: Option<Limiter>,
    io_engine: super::IoEngine,
    socket: &'a Option<String>,
}

#[derive(Serialize)]
struct Interface<'a> {
    iface_id: &'a str,
    host_dev_name: &'a str,
    guest_mac: &'a Option<String>,
    mtu: Option<u16>,
    rx_rate_limiter: Option<Limiter>,
    tx_rate_limiter: Option<Limiter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firewall: &'a Option<palisade_firewall::FirewallConfig>,
}

#[derive(Serialize)]
struct Entropy {
    rate_limiter: Option<Limiter>,
}

/// A rate limiter as Firecracker shows it: both buckets, `null` where unset.
#[derive(Serialize)]
struct Limiter {
    bandwidth: Option<Bucket>,
    ops: Option<Bucket>,
}

/// A token bucket as Firecracker shows it: `one_time_burst` always present.
#[derive(Serialize)]
struct Bucket {
    size: u64,
    one_time_burst: Option<u64>,
    refill_time: u64,
}

fn limiter(config: &Option<RateLimiterConfig>) -> Option<Limiter> {
    let bucket = |b: &Option<TokenBucketConfig>| {
        b.map(|b| Bucket {
            size: b.size,
            one_time_burst: b.one_time_burst,
            refill_time: b.refill_time,
        })
    };
    config.as_ref().map(|c| Limiter {
        bandwidth: bucket(&c.bandwidth),
        ops: bucket(&c.ops),
    })
}

impl Serialize for FullVmConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let boot_source = match &self.boot_source {
            Some(b) => BootSource {
                kernel_image_path: &b.kernel_image_path,
                initrd_path: b.initrd_path.as_deref(),
                boot_args: b.boot_args.as_deref(),
            },
            None => BootSource {
                kernel_image_path: "",
                initrd_path: None,
                boot_args: None,
            },
        };
        let drives = self
            .drives
            .iter()
            .map(|d| Drive {
                drive_id: &d.drive_id,
                partuuid: &d.partuuid,
                is_root_device: d.is_root_device,
                cache_type: d.cache_type,
                is_read_only: d.is_read_only,
                path_on_host: &d.path_on_host,
                rate_limiter: limiter(&d.rate_limiter),
                io_engine: d.io_engine,
                socket: &d.socket,
            })
            .collect();
        let network_interfaces = self
            .network_interfaces
            .iter()
            .map(|i| Interface {
                iface_id: &i.iface_id,
                host_dev_name: &i.host_dev_name,
                guest_mac: &i.guest_mac,
                mtu: i.mtu,
                rx_rate_limiter: limiter(&i.rx_rate_limiter),
                tx_rate_limiter: limiter(&i.tx_rate_limiter),
                firewall: &i.firewall,
            })
            .collect();
        Document {
            balloon: &self.balloon,
            drives,
            boot_source,
            cpu_config: None,
            logger: None,
            machine_config: &self.machine_config,
            metrics: None,
            mmds_config: &self.mmds_config,
            network_interfaces,
            vsock: &self.vsock,
            entropy: self.entropy.as_ref().map(|e| Entropy {
                rate_limiter: limiter(&e.rate_limiter),
            }),
            pmem: [],
            memory_hotplug: None,
        }
        .serialize(serializer)
    }
}
