//! The firewall of Palisade's virtio-net device: anti-spoofing, stateful security-group rules,
//! a bounded connection tracker and VPC-style flow logs, applied to every Ethernet frame between
//! the guest and the tap.
//!
//! The net device owns one [`Firewall`] per interface and calls, on the VMM thread:
//! - [`Firewall::egress`] for each frame the guest sends (TX) and [`Firewall::ingress`] for
//!   each frame about to be delivered to the guest (RX); the `_headers` variants take a
//!   contiguous prefix of a scattered frame plus the frame's full length;
//! - [`Firewall::expire_and_log`] from a timer every [`MAINTENANCE_PERIOD`];
//! - [`Firewall::update`] on `PATCH /network-interfaces/{id}` and [`Firewall::status`] on
//!   `GET /network-interfaces/{id}/firewall`.
//!
//! Nothing on the packet path allocates: rules are compiled when the configuration is set,
//! the connection table and the flow-log ring are sized when the firewall is created.
//! See README.md for the walk through a frame's checks.

mod antispoof;
mod config;
mod conntrack;
mod counters;
mod engine;
mod flow_log;
mod flow_table;
mod frame;
mod link_control;
mod net_types;
mod prefix_index;
mod rules;
mod snapshot;
mod status;

pub use config::{
    Action, ConfigError, FirewallConfig, Proto, RuleConfig, DEFAULT_CONNTRACK_MAX,
    DEFAULT_FLOW_LOG_INTERVAL_SECS,
};
pub use counters::{Counters, DropReason};
pub use engine::{Firewall, FirewallError, Verdict, MAINTENANCE_PERIOD};
pub use flow_log::FlowLogError;
pub use net_types::{parse_mac, Cidr, Direction, MacAddr, NetTypeError, PortRange};
pub use snapshot::{FirewallState, FirewallStateError, SavedCounters, SavedFlow, MAX_SAVED_COUNT};
pub use status::{
    ConntrackStatus, CounterStatus, DirectionCounters, FirewallStatus, FlowLogStatus, RuleHits,
};
