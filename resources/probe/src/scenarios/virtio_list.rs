//! `virtio`: every device on the command line answers as virtio-mmio version 2; lists them in
//! order with their type, the drive id for block devices, the MTU a network device offers
//! (VIRTIO_NET_F_MTU and its config space field), address and IRQ:
//! `probe: virtio ok count=N blk:ID@0xADDR:IRQ ... rng@0xADDR:IRQ net:mtu=N@0xADDR:IRQ`

use crate::serial::{put_bytes, put_dec, put_hex, put_str, ResultLine};
use crate::virtio::blk::Blk;
use crate::virtio::{self, dma, DEVICE_ID_BLOCK, DEVICE_ID_NET, DEVICE_ID_RNG};

/// VIRTIO_NET_F_MTU.
const NET_F_MTU: u64 = 1 << 3;
use crate::zero_page::BootInfo;

pub const NAME: &str = "virtio";

pub fn run(boot: &BootInfo) {
    if !dma::available(boot) {
        return ResultLine::fail(NAME.as_bytes()).text("no-ram-for-dma").end();
    }
    // Check first, print after: a failure prints one fail line only.
    let mut count = 0u64;
    for dev in virtio::devices(boot) {
        if !dev.is_modern() {
            return ResultLine::fail(NAME.as_bytes()).hex("not_virtio_at", dev.base).end();
        }
        count += 1;
    }
    let line = ResultLine::ok(NAME.as_bytes()).dec("count", count);
    for dev in virtio::devices(boot) {
        put_str(" ");
        match dev.device_id() {
            DEVICE_ID_BLOCK => {
                put_str("blk:");
                match Blk::open(dev).map_err(|e| e.as_str()).and_then(|mut b| b.id().map_err(|e| e.as_str())) {
                    Ok(id) => put_bytes(id),
                    Err(e) => put_str(e),
                }
            }
            DEVICE_ID_RNG => put_str("rng"),
            DEVICE_ID_NET => {
                put_str("net");
                if dev.device_features() & NET_F_MTU != 0 {
                    // Config bytes 8..12: max_virtqueue_pairs (u16), then mtu (u16).
                    put_str(":mtu=");
                    put_dec(dev.config_u64(8) >> 16 & 0xffff);
                }
            }
            other => {
                put_str("type");
                put_dec(u64::from(other));
            }
        }
        put_str("@");
        put_hex(dev.base);
        put_str(":");
        put_dec(u64::from(dev.irq));
    }
    line.end();
}
