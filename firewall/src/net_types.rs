//! Small value types shared by the configuration and the packet path: addresses as integers,
//! CIDR prefixes, port ranges, MAC addresses and the direction of a frame.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet MAC address.
pub type MacAddr = [u8; 6];

/// Errors of parsing a CIDR, a port range or a MAC address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetTypeError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("Invalid CIDR \"{0}\": not an IPv4 or IPv6 address")]
    CidrAddress(String),
    /// The prefix length is not a number or too long for the family.
    #[error("Invalid CIDR \"{0}\": the prefix length must be 0-32 for IPv4 and 0-128 for IPv6")]
    CidrPrefix(String),
    /// Bits beyond the prefix are set.
    #[error("Invalid CIDR \"{given}\": host bits are set; did you mean \"{network}\"?")]
    CidrHostBits { given: String, network: String },
    /// Not "N" or "N-M" with 0 <= N <= M <= 65535.
    #[error("Invalid ports \"{0}\": expected \"N\" or \"N-M\" with 0 <= N <= M <= 65535")]
    Ports(String),
    /// Not six hexadecimal bytes separated by colons.
    #[error("Invalid MAC address \"{0}\": expected six hex bytes like \"06:00:ac:10:00:02\"")]
    Mac(String),
}

/// Whether a frame leaves the guest (egress, TX) or is delivered to it (ingress, RX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To the guest.
    Ingress,
    /// From the guest.
    Egress,
}

impl Direction {
    /// 0 for ingress, 1 for egress: an index into per-direction arrays.
    pub fn index(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
}

/// An IP address as an integer: IPv4 in the low 32 bits. Compared with masks, never as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Addr {
    pub bits: u128,
    pub v6: bool,
}

impl Addr {
    pub fn v4(bytes: [u8; 4]) -> Addr {
        Addr {
            bits: u128::from(u32::from_be_bytes(bytes)),
            v6: false,
        }
    }

    pub fn v6(bytes: [u8; 16]) -> Addr {
        Addr {
            bits: u128::from_be_bytes(bytes),
            v6: true,
        }
    }

    pub fn to_ip(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.bits as u32))
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr::v4(v4.octets()),
            IpAddr::V6(v6) => Addr::v6(v6.octets()),
        }
    }
}

/// An IPv4 or IPv6 prefix such as "10.0.0.0/8" or "fd00::/64"; a bare address is a host prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: Addr,
    mask: u128,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `addr` is of this prefix's family and inside it.
    pub(crate) fn contains(&self, addr: Addr) -> bool {
        addr.v6 == self.network.v6 && addr.bits & self.mask == self.network.bits
    }

    pub(crate) fn network_bits(&self) -> u128 {
        self.network.bits
    }

    pub(crate) fn mask(&self) -> u128 {
        self.mask
    }

    /// Every address of one family: "0.0.0.0/0" or "::/0".
    pub fn any(v6: bool) -> Cidr {
        Cidr {
            network: Addr { bits: 0, v6 },
            mask: 0,
            prefix_len: 0,
        }
    }

    /// Whether this is an IPv6 prefix.
    pub fn is_v6(&self) -> bool {
        self.network.v6
    }

    fn mask_for(prefix_len: u8, v6: bool) -> u128 {
        let width: u32 = if v6 { 128 } else { 32 };
        let prefix_len = u32::from(prefix_len);
        if prefix_len == 0 {
            0
        } else if v6 {
            u128::MAX << (width - prefix_len)
        } else {
            u128::from(u32::MAX << (width - prefix_len))
        }
    }
}

impl FromStr for Cidr {
    type Err = NetTypeError;

    fn from_str(text: &str) -> Result<Cidr, NetTypeError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let ip =
            IpAddr::from_str(addr_text).map_err(|_| NetTypeError::CidrAddress(text.to_string()))?;
        let max_len: u8 = if ip.is_ipv6() { 128 } else { 32 };
        let prefix_len = match prefix_text {
            None => max_len,
            Some(digits) => digits
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max_len && !digits.starts_with('+'))
                .ok_or_else(|| NetTypeError::CidrPrefix(text.to_string()))?,
        };
        let addr = Addr::from(ip);
        let mask = Cidr::mask_for(prefix_len, addr.v6);
        let network = Addr {
            bits: addr.bits & mask,
            v6: addr.v6,
        };
        let cidr = Cidr {
            network,
            mask,
            prefix_len,
        };
        if network.bits != addr.bits {
            return Err(NetTypeError::CidrHostBits {
                given: text.to_string(),
                network: cidr.to_string(),
            });
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network.to_ip(), self.prefix_len)
    }
}

impl TryFrom<String> for Cidr {
    type Error = NetTypeError;

    fn try_from(text: String) -> Result<Cidr, NetTypeError> {
        Cidr::from_str(&text)
    }
}

impl From<Cidr> for String {
    fn from(cidr: Cidr) -> String {
        cidr.to_string()
    }
}

/// An inclusive port range, written "22" or "8000-8080".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for a single port).
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = NetTypeError;

    fn from_str(text: &str) -> Result<PortRange, NetTypeError> {
        let bad = || NetTypeError::Ports(text.to_string());
        let parse_port = |digits: &str| {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            digits.parse::<u16>().map_err(|_| bad())
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (parse_port(first)?, parse_port(last)?),
            None => {
                let port = parse_port(text)?;
                (port, port)
            }
        };
        if first > last {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl TryFrom<String> for PortRange {
    type Error = NetTypeError;

    fn try_from(text: String) -> Result<PortRange, NetTypeError> {
        PortRange::from_str(&text)
    }
}

impl From<PortRange> for String {
    fn from(ports: PortRange) -> String {
        ports.to_string()
    }
}

/// Parses "06:00:ac:10:00:02" (Firecracker's `guest_mac` format).
pub fn parse_mac(text: &str) -> Result<MacAddr, NetTypeError> {
    let bad = || NetTypeError::Mac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains_by_prefix_and_family() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(Addr::v4([10, 1, 200, 3])));
        assert!(!net.contains(Addr::v4([10, 2, 0, 1])));
        assert!(!net.contains(Addr::v6([0; 16])));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Addr::v4([255, 255, 255, 255])));
        let host: Cidr = "fd00::2".parse().unwrap();
        assert_eq!(host.to_string(), "fd00::2/128");
        let mut bytes = [0u8; 16];
        bytes[0] = 0xfd;
        bytes[15] = 2;
        assert!(host.contains(Addr::v6(bytes)));
    }

    #[test]
    fn cidr_errors_name_the_problem() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(NetTypeError::CidrPrefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(NetTypeError::CidrAddress(_))
        ));
        let err = "10.0.0.1/24".parse::<Cidr>().unwrap_err();
        assert!(
            err.to_string().contains("did you mean \"10.0.0.0/24\""),
            "{err}"
        );
    }

    #[test]
    fn port_ranges_parse_and_print() {
        assert_eq!(
            "22".parse::<PortRange>().unwrap(),
            PortRange {
                first: 22,
                last: 22
            }
        );
        let range: PortRange = "8000-8080".parse().unwrap();
        assert_eq!((range.first, range.last), (8000, 8080));
        assert_eq!(range.to_string(), "8000-8080");
        for bad in ["", "-1", "80-", "90-80", "65536", "+5", "1 - 2", "a"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_parses_firecracker_format() {
        assert_eq!(
            parse_mac("06:00:AC:10:00:02").unwrap(),
            [6, 0, 0xac, 0x10, 0, 2]
        );
        assert!(parse_mac("06:00:ac:10:00").is_err());
        assert!(parse_mac("06:00:ac:10:00:02:03").is_err());
        assert!(parse_mac("6:00:ac:10:00:02").is_err());
    }
}
