//! The virtio-vsock packet header (virtio 1.2 5.10.6, `struct virtio_vsock_hdr`): 44 bytes,
//! little-endian, in front of every packet on the RX and TX queues. [`check_tx`] judges a
//! header the guest wrote; nothing in it is trusted before that.

use super::config::HOST_CID;

/// Size of the header.
pub const HDR_LEN: usize = 44;
/// The largest payload of one packet either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_LEN: u32 = 64 * 1024;
/// `type`: stream sockets, the only type this device serves.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// The packet operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Connect.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection refused or torn down.
    Rst = 3,
    /// One or both directions closed (`flags`).
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// Here is my credit.
    CreditUpdate = 6,
    /// Tell me your credit.
    CreditRequest = 7,
}

impl Op {
    /// The op for a wire value.
    pub fn from_wire(op: u16) -> Option<Self> {
        Some(match op {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// Why a guest packet is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadPacket {
    /// Fewer than 44 readable bytes.
    #[error("Packet shorter than its 44-byte header")]
    Short,
    /// `src_cid` is not the guest's.
    #[error("Source CID {0} is not the guest's")]
    SrcCid(u64),
    /// `dst_cid` is not the host's.
    #[error("Destination CID {0} is not the host (2)")]
    DstCid(u64),
    /// Not a stream packet.
    #[error("Socket type {0} is not STREAM")]
    Type(u16),
    /// Unknown operation.
    #[error("Unknown op {0}")]
    Op(u16),
    /// Payload length over the limit, past the chain, or on an op without payload.
    #[error("Payload length {0} is invalid")]
    Len(u32),
}

impl BadPacket {
    /// Whether the sender deserves an RST: not when the header cannot be read, does not come
    /// from the guest's own address, or is not addressed to the host (an RST would claim to
    /// come from a CID that is not ours).
    pub fn deserves_rst(self) -> bool {
        !matches!(self, Self::Short | Self::SrcCid(_) | Self::DstCid(_))
    }
}

/// The header, field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Op-specific flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Decodes the wire form (no checks).
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// The wire form.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A host-to-guest header: from the host's `local_port` to the guest's `peer_port`.
    pub fn to_guest(guest_cid: u64, local_port: u32, peer_port: u32, op: Op) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: op as u16,
            ..Self::default()
        }
    }

    /// The RST that answers this guest header (addresses swapped).
    pub fn rst_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Self::default()
        }
    }
}

/// Checks a header the guest wrote on the TX queue, with `readable` bytes in its chain
/// (header included), for a guest of CID `guest_cid`.
pub fn check_tx(bytes: &[u8], readable: u32, guest_cid: u64) -> Result<(Header, Op), BadPacket> {
    let raw: &[u8; HDR_LEN] = bytes
        .get(..HDR_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(BadPacket::Short)?;
    let room = readable
        .checked_sub(HDR_LEN as u32)
        .ok_or(BadPacket::Short)?;
    let hdr = Header::from_bytes(raw);
    if hdr.src_cid != guest_cid {
        return Err(BadPacket::SrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return Err(BadPacket::DstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(BadPacket::Type(hdr.type_));
    }
    let op = Op::from_wire(hdr.op).ok_or(BadPacket::Op(hdr.op))?;
    if hdr.len > MAX_PKT_LEN || hdr.len > room || (hdr.len != 0 && op != Op::Rw) {
        return Err(BadPacket::Len(hdr.len));
    }
    Ok((hdr, op))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn a_header_round_trips_through_its_wire_form() {
        let h = rw(10);
        let b = h.to_bytes();
        assert_eq!(&b[24..28], &10u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(check_tx(&b, 54, 3), Ok((h, Op::Rw)));
    }

    #[test]
    fn every_field_from_the_guest_is_checked() {
        let check = |h: Header, readable| check_tx(&h.to_bytes(), readable, 3);
        assert_eq!(check_tx(&[0; 43], 43, 3), Err(BadPacket::Short));
        assert_eq!(check(rw(0), 43), Err(BadPacket::Short));
        assert_eq!(
            check(
                Header {
                    src_cid: 4,
                    ..rw(0)
                },
                44
            ),
            Err(BadPacket::SrcCid(4))
        );
        assert_eq!(
            check(
                Header {
                    dst_cid: 3,
                    ..rw(0)
                },
                44
            ),
            Err(BadPacket::DstCid(3))
        );
        assert_eq!(
            check(Header { type_: 2, ..rw(0) }, 44),
            Err(BadPacket::Type(2))
        );
        assert_eq!(check(Header { op: 0, ..rw(0) }, 44), Err(BadPacket::Op(0)));
        assert_eq!(check(Header { op: 8, ..rw(0) }, 44), Err(BadPacket::Op(8)));
        assert_eq!(check(rw(11), 54), Err(BadPacket::Len(11)));
        assert_eq!(
            check(rw(MAX_PKT_LEN + 1), u32::MAX),
            Err(BadPacket::Len(MAX_PKT_LEN + 1))
        );
        let request_with_data = Header {
            op: Op::Request as u16,
            ..rw(1)
        };
        assert_eq!(check(request_with_data, 45), Err(BadPacket::Len(1)));
        assert!(!BadPacket::Short.deserves_rst() && BadPacket::Op(9).deserves_rst());
        assert!(!BadPacket::DstCid(4).deserves_rst() && !BadPacket::SrcCid(2).deserves_rst());
    }

    #[test]
    fn an_rst_reply_swaps_the_addresses() {
        let r = rw(0).rst_reply();
        assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (52, 1000));
        assert_eq!(r.op, Op::Rst as u16);
    }
}
