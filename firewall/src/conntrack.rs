//! Connection tracking: a bounded table of flows keyed by the 5-tuple (ICMP echo by its
//! identifier), with enough TCP state to expire closed connections quickly and idle timeouts
//! for everything else. When the table is full, a new flow may only take the place of an
//! expired one (a short, bounded scan); otherwise it is refused and established flows carry on.

use crate::flow_table::{FlowKey, FlowTable, HashSeed};
use crate::frame::{PROTO_ICMP, PROTO_ICMPV6, TCP_FIN, TCP_RST};
use crate::net_types::Direction;

const SECOND_MS: u64 = 1_000;
/// A TCP flow whose opening has not been answered.
const TCP_OPENING_TIMEOUT_MS: u64 = 30 * SECOND_MS;
/// An answered TCP connection (as Linux and security groups: five days).
const TCP_ESTABLISHED_TIMEOUT_MS: u64 = 5 * 24 * 3_600 * SECOND_MS;
/// After one side's FIN.
const TCP_CLOSING_TIMEOUT_MS: u64 = 120 * SECOND_MS;
/// After both FINs or a RST: gone quickly.
const TCP_CLOSED_TIMEOUT_MS: u64 = 10 * SECOND_MS;
/// A UDP (or other protocol) flow or ICMP echo that was never answered.
const UNREPLIED_TIMEOUT_MS: u64 = 30 * SECOND_MS;
/// An answered UDP or other-protocol flow.
const REPLIED_TIMEOUT_MS: u64 = 180 * SECOND_MS;
/// An answered ICMP echo.
const ICMP_REPLIED_TIMEOUT_MS: u64 = 30 * SECOND_MS;
/// The longest timeout of any state: no live flow has been idle longer.
pub(crate) const LONGEST_TIMEOUT_MS: u64 = TCP_ESTABLISHED_TIMEOUT_MS;
/// How many entries a full table looks at for an expired one to replace.
const EVICTION_SCAN: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlowState {
    TcpOpening,
    TcpEstablished,
    TcpClosing,
    TcpClosed,
    Unreplied,
    Replied,
}

/// One tracked flow; `packets` and `bytes` count both directions since the last flow-log
/// record, whose window opened at `window_start_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flow {
    pub origin: Direction,
    pub state: FlowState,
    pub fin_from_origin: bool,
    pub fin_from_reply: bool,
    pub last_seen_ms: u64,
    pub window_start_ms: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl Flow {
    fn new(origin: Direction, tcp: bool) -> Flow {
        Flow {
            origin,
            state: if tcp {
                FlowState::TcpOpening
            } else {
                FlowState::Unreplied
            },
            fin_from_origin: false,
            fin_from_reply: false,
            last_seen_ms: 0,
            window_start_ms: 0,
            packets: 0,
            bytes: 0,
        }
    }

    pub fn timeout_ms(&self, protocol: u8) -> u64 {
        match self.state {
            FlowState::TcpOpening => TCP_OPENING_TIMEOUT_MS,
            FlowState::TcpEstablished => TCP_ESTABLISHED_TIMEOUT_MS,
            FlowState::TcpClosing => TCP_CLOSING_TIMEOUT_MS,
            FlowState::TcpClosed => TCP_CLOSED_TIMEOUT_MS,
            FlowState::Unreplied => UNREPLIED_TIMEOUT_MS,
            FlowState::Replied if matches!(protocol, PROTO_ICMP | PROTO_ICMPV6) => {
                ICMP_REPLIED_TIMEOUT_MS
            }
            FlowState::Replied => REPLIED_TIMEOUT_MS,
        }
    }

    /// Whether the flow has been idle past its state's timeout at `now_ms`.
    pub fn is_expired(&self, protocol: u8, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) >= self.timeout_ms(protocol)
    }

    /// Counts a packet and advances the state. `tcp_flags` is `None` for other protocols.
    pub fn observe(
        &mut self,
        direction: Direction,
        tcp_flags: Option<u8>,
        bytes: usize,
        now_ms: u64,
    ) {
        if self.packets == 0 {
            self.window_start_ms = now_ms;
        }
        self.packets += 1;
        self.bytes += bytes as u64;
        self.last_seen_ms = now_ms;
        let from_origin = direction == self.origin;
        let Some(flags) = tcp_flags else {
            if !from_origin && self.state == FlowState::Unreplied {
                self.state = FlowState::Replied;
            }
            return;
        };
        if flags & TCP_RST != 0 {
            self.state = FlowState::TcpClosed;
            return;
        }
        if flags & TCP_FIN != 0 {
            if from_origin {
                self.fin_from_origin = true;
            } else {
                self.fin_from_reply = true;
            }
        }
        self.state = match self.state {
            _ if self.fin_from_origin && self.fin_from_reply => FlowState::TcpClosed,
            FlowState::TcpClosed => FlowState::TcpClosed,
            _ if self.fin_from_origin || self.fin_from_reply => FlowState::TcpClosing,
            FlowState::TcpOpening if !from_origin => FlowState::TcpEstablished,
            state => state,
        };
    }

    /// Takes the counts of the current flow-log window (None when nothing was counted).
    pub fn take_window(&mut self) -> Option<(u64, u64, u64)> {
        if self.packets == 0 {
            return None;
        }
        let window = (self.packets, self.bytes, self.window_start_ms);
        self.packets = 0;
        self.bytes = 0;
        Some(window)
    }
}

/// The connection table.
#[derive(Debug)]
pub(crate) struct Conntrack {
    table: FlowTable<Flow>,
    eviction_cursor: usize,
}

impl Conntrack {
    pub fn new(capacity: usize, seed: HashSeed) -> Conntrack {
        Conntrack {
            table: FlowTable::with_capacity(capacity, seed),
            eviction_cursor: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub fn find(&self, key: &FlowKey) -> Option<usize> {
        self.table.find(key)
    }

    pub fn flow(&self, entry: usize) -> &Flow {
        self.table.value(entry)
    }

    pub fn flow_mut(&mut self, entry: usize) -> &mut Flow {
        self.table.value_mut(entry)
    }

    /// Adds a flow restored from a snapshot; Err when the key is tracked already or the table
    /// is full.
    pub fn insert_restored(&mut self, key: FlowKey, flow: Flow) -> Result<(), ()> {
        if self.table.find(&key).is_some() {
            return Err(());
        }
        self.table.insert(key, flow).map(|_| ()).map_err(|_| ())
    }

    /// Visits every flow.
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, &Flow)) {
        for entry in 0..self.table.len() {
            visit(self.table.key(entry), self.table.value(entry));
        }
    }

    pub fn remove(&mut self, entry: usize) -> (FlowKey, Flow) {
        self.table.remove(entry)
    }

    /// Starts tracking a flow with its first packet. When the table is full, an expired flow
    /// found by a bounded scan is handed to `evicted` and replaced; otherwise `Err`.
    pub fn insert(
        &mut self,
        key: FlowKey,
        origin: Direction,
        first_packet: (Option<u8>, usize),
        now_ms: u64,
        evicted: impl FnOnce(FlowKey, Flow),
    ) -> Result<(), ()> {
        if self.table.is_full() && !self.evict_one_expired(now_ms, evicted) {
            return Err(());
        }
        let (tcp_flags, bytes) = first_packet;
        let mut flow = Flow::new(origin, tcp_flags.is_some());
        flow.observe(origin, tcp_flags, bytes, now_ms);
        self.table.insert(key, flow).map(|_| ()).map_err(|_| ())
    }

    fn evict_one_expired(&mut self, now_ms: u64, evicted: impl FnOnce(FlowKey, Flow)) -> bool {
        let len = self.table.len();
        for _ in 0..EVICTION_SCAN.min(len) {
            self.eviction_cursor = (self.eviction_cursor + 1) % len;
            let entry = self.eviction_cursor;
            let protocol = self.table.key(entry).protocol;
            if self.table.value(entry).is_expired(protocol, now_ms) {
                let (key, flow) = self.table.remove(entry);
                evicted(key, flow);
                return true;
            }
        }
        false
    }

    /// Visits every flow; those for which `keep` returns false are removed.
    pub fn retain(&mut self, keep: impl FnMut(&FlowKey, &mut Flow) -> bool) -> usize {
        self.table.retain(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{TCP_ACK, TCP_SYN};

    const TCP: u8 = 6;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            guest: 1,
            remote: 2,
            guest_port: port,
            remote_port: 80,
            protocol: TCP,
            v6: false,
        }
    }

    #[test]
    fn tcp_handshake_and_close_walk_the_states() {
        let mut flow = Flow::new(Direction::Egress, true);
        flow.observe(Direction::Egress, Some(TCP_SYN), 60, 0);
        assert_eq!(flow.state, FlowState::TcpOpening);
        flow.observe(Direction::Ingress, Some(TCP_SYN | TCP_ACK), 60, 1);
        assert_eq!(flow.state, FlowState::TcpEstablished);
        flow.observe(Direction::Egress, Some(TCP_FIN | TCP_ACK), 60, 2);
        assert_eq!(flow.state, FlowState::TcpClosing);
        flow.observe(Direction::Ingress, Some(TCP_FIN | TCP_ACK), 60, 3);
        assert_eq!(flow.state, FlowState::TcpClosed);
        assert!(!flow.is_expired(TCP, 3 + TCP_CLOSED_TIMEOUT_MS - 1));
        assert!(flow.is_expired(TCP, 3 + TCP_CLOSED_TIMEOUT_MS));
        assert_eq!(flow.take_window(), Some((4, 240, 0)));
        assert_eq!(flow.take_window(), None);
    }

    #[test]
    fn rst_closes_at_once_and_udp_reply_extends_the_timeout() {
        let mut flow = Flow::new(Direction::Ingress, true);
        flow.observe(Direction::Ingress, Some(TCP_SYN), 60, 0);
        flow.observe(Direction::Egress, Some(TCP_RST), 60, 0);
        assert_eq!(flow.state, FlowState::TcpClosed);
        let mut udp = Flow::new(Direction::Egress, false);
        udp.observe(Direction::Egress, None, 100, 0);
        assert!(udp.is_expired(17, UNREPLIED_TIMEOUT_MS));
        udp.observe(Direction::Ingress, None, 100, 0);
        assert_eq!(udp.state, FlowState::Replied);
        assert!(!udp.is_expired(17, UNREPLIED_TIMEOUT_MS));
        assert!(udp.is_expired(17, REPLIED_TIMEOUT_MS));
    }

    #[test]
    fn full_table_refuses_new_flows_unless_one_has_expired() {
        let mut conntrack = Conntrack::new(4, HashSeed::random());
        for port in 0..4 {
            conntrack
                .insert(
                    key(port),
                    Direction::Egress,
                    (Some(TCP_SYN), 60),
                    0,
                    |_, _| {},
                )
                .unwrap();
        }
        let refused =
            conntrack.insert(key(9), Direction::Egress, (Some(TCP_SYN), 60), 1, |_, _| {
                panic!("nothing has expired")
            });
        assert_eq!(refused, Err(()));
        let mut evicted = None;
        conntrack
            .insert(
                key(9),
                Direction::Egress,
                (Some(TCP_SYN), 60),
                TCP_OPENING_TIMEOUT_MS,
                |k, _| evicted = Some(k),
            )
            .unwrap();
        assert!(evicted.is_some());
        assert_eq!(conntrack.len(), 4);
        assert!(conntrack.find(&key(9)).is_some());
    }
}
