//! Rules compiled for the packet path. Per direction, the rules are split into buckets by
//! address family and protocol class (TCP, UDP, ICMP of the family, other); each rule keeps its
//! position in the configured list, so first-match-wins holds across buckets. Inside a bucket,
//! rules are indexed by their key range (destination port, or ICMP type): the key space is cut
//! into elementary intervals at every range boundary, each interval lists the narrow rules that
//! cover it, and rules that cover every key (or more than `WIDE_RULE_INTERVALS` intervals) sit
//! in one `wide` list. A lookup binary-searches the interval and merges its list with the wide
//! list in rule order, testing each candidate's prefix with a mask; the first hit decides.
//! Memory stays linear: a narrow rule appears in at most `WIDE_RULE_INTERVALS` lists.
//! Lists longer than `INDEXED_LIST_LEN` (many rules on one port) also get a `PrefixIndex`, so
//! the candidates are found by prefix and network rather than scanned.

use crate::config::{Action, FirewallConfig, Proto, RuleConfig};
use crate::frame::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use crate::net_types::{Addr, Direction};
use crate::prefix_index::{first_match_in, PrefixIndex, PrefixRule, INDEXED_LIST_LEN};

/// A narrow rule spanning more intervals than this goes to the wide list instead.
const WIDE_RULE_INTERVALS: usize = 16;

/// What a new flow is matched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RuleQuery {
    /// The address outside the guest: the source of ingress, the destination of egress.
    pub remote: Addr,
    pub protocol: u8,
    /// Destination port for TCP and UDP, type for ICMP(v6), 0 otherwise.
    pub key: u16,
}

/// The decision for a new flow: the matching rule's position, or the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RuleMatch {
    pub allow: bool,
    pub rule: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CompiledRule {
    network: u128,
    mask: u128,
    first_key: u16,
    last_key: u16,
    allow: bool,
    position: u32,
}

impl CompiledRule {
    fn covers_every_key(&self) -> bool {
        self.first_key == 0 && self.last_key == u16::MAX
    }
}

impl PrefixRule for CompiledRule {
    fn network(&self) -> u128 {
        self.network
    }

    fn mask(&self) -> u128 {
        self.mask
    }

    fn covers_key(&self, key: u16) -> bool {
        self.first_key <= key && key <= self.last_key
    }
}

fn prefix_index_for(list: &[u32], rules: &[CompiledRule]) -> Option<Box<PrefixIndex>> {
    (list.len() > INDEXED_LIST_LEN).then(|| Box::new(PrefixIndex::build(list, rules)))
}

/// The rules of one family and protocol class, indexed by key range.
#[derive(Debug, Default)]
struct KeyIndex {
    rules: Vec<CompiledRule>,
    interval_starts: Vec<u16>,
    interval_offsets: Vec<u32>,
    interval_rules: Vec<u32>,
    interval_prefix_indexes: Vec<Option<Box<PrefixIndex>>>,
    wide_rules: Vec<u32>,
    wide_prefix_index: Option<Box<PrefixIndex>>,
    /// The rules that cover every key, for packets without one (non-first fragments).
    keyless_rules: Vec<u32>,
    keyless_prefix_index: Option<Box<PrefixIndex>>,
}

impl KeyIndex {
    fn build(rules: Vec<CompiledRule>) -> KeyIndex {
        let mut starts = vec![0u16];
        for rule in rules.iter().filter(|rule| !rule.covers_every_key()) {
            starts.push(rule.first_key);
            if let Some(next) = rule.last_key.checked_add(1) {
                starts.push(next);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let interval_of = |key: u16| starts.partition_point(|start| *start <= key) - 1;
        let mut spans = Vec::with_capacity(rules.len());
        let mut wide_rules = Vec::new();
        let mut counts = vec![0u32; starts.len()];
        for (index, rule) in rules.iter().enumerate() {
            let (first, last) = (interval_of(rule.first_key), interval_of(rule.last_key));
            if rule.covers_every_key() || last - first >= WIDE_RULE_INTERVALS {
                wide_rules.push(index as u32);
                continue;
            }
            counts[first..=last]
                .iter_mut()
                .for_each(|count| *count += 1);
            spans.push((index as u32, first, last));
        }
        let mut offsets = Vec::with_capacity(starts.len() + 1);
        let mut total = 0u32;
        offsets.push(0);
        for count in &counts {
            total += count;
            offsets.push(total);
        }
        let mut fill: Vec<u32> = offsets[..starts.len()].to_vec();
        let mut interval_rules = vec![0u32; total as usize];
        for (index, first, last) in spans {
            for slot in &mut fill[first..=last] {
                interval_rules[*slot as usize] = index;
                *slot += 1;
            }
        }
        let interval_prefix_indexes = offsets
            .windows(2)
            .map(|range| {
                prefix_index_for(
                    &interval_rules[range[0] as usize..range[1] as usize],
                    &rules,
                )
            })
            .collect();
        let wide_prefix_index = prefix_index_for(&wide_rules, &rules);
        let keyless_rules: Vec<u32> = (0..rules.len() as u32)
            .filter(|index| rules[*index as usize].covers_every_key())
            .collect();
        let keyless_prefix_index = prefix_index_for(&keyless_rules, &rules);
        KeyIndex {
            keyless_rules,
            keyless_prefix_index,
            rules,
            interval_starts: starts,
            interval_offsets: offsets,
            interval_rules,
            interval_prefix_indexes,
            wide_rules,
            wide_prefix_index,
        }
    }

    /// The first rule, in configured order, matching `remote` and `key`: the earlier of the
    /// first match in the key's interval and the first in the wide list.
    fn first_match(&self, remote: Addr, key: u16) -> Option<&CompiledRule> {
        let interval = self.interval_starts.partition_point(|start| *start <= key) - 1;
        let begin = self.interval_offsets[interval] as usize;
        let end = self.interval_offsets[interval + 1] as usize;
        let narrow = first_match_in(
            &self.interval_rules[begin..end],
            self.interval_prefix_indexes[interval].as_deref(),
            &self.rules,
            (remote.bits, key),
            u32::MAX,
        );
        let wide = first_match_in(
            &self.wide_rules,
            self.wide_prefix_index.as_deref(),
            &self.rules,
            (remote.bits, key),
            narrow.unwrap_or(u32::MAX),
        );
        wide.or(narrow).map(|number| &self.rules[number as usize])
    }

    /// The first rule, in configured order, matching `remote` among the rules that cover
    /// every key.
    fn first_keyless_match(&self, remote: Addr) -> Option<&CompiledRule> {
        first_match_in(
            &self.keyless_rules,
            self.keyless_prefix_index.as_deref(),
            &self.rules,
            (remote.bits, 0),
            u32::MAX,
        )
        .map(|number| &self.rules[number as usize])
    }
}

const CLASS_TCP: usize = 0;
const CLASS_UDP: usize = 1;
const CLASS_ICMP: usize = 2;
const CLASS_OTHER: usize = 3;
const CLASSES: usize = 4;

fn bucket(v6: bool, class: usize) -> usize {
    usize::from(v6) * CLASSES + class
}

fn packet_class(v6: bool, protocol: u8) -> usize {
    match protocol {
        PROTO_TCP => CLASS_TCP,
        PROTO_UDP => CLASS_UDP,
        PROTO_ICMP if !v6 => CLASS_ICMP,
        PROTO_ICMPV6 if v6 => CLASS_ICMP,
        _ => CLASS_OTHER,
    }
}

/// The rules and default of one direction.
#[derive(Debug)]
struct DirectionRules {
    buckets: [KeyIndex; 2 * CLASSES],
    default_allow: bool,
}

impl DirectionRules {
    fn compile(rules: &[RuleConfig], default: Action) -> DirectionRules {
        let mut per_bucket: [Vec<CompiledRule>; 2 * CLASSES] = Default::default();
        for (position, rule) in rules.iter().enumerate() {
            let (first_key, last_key) = match (rule.ports, rule.icmp_type) {
                (Some(ports), _) => (ports.first, ports.last),
                (None, Some(icmp_type)) => (u16::from(icmp_type), u16::from(icmp_type)),
                (None, None) => (0, u16::MAX),
            };
            let classes: &[usize] = match rule.proto {
                Proto::Tcp => &[CLASS_TCP],
                Proto::Udp => &[CLASS_UDP],
                Proto::Icmp | Proto::Icmpv6 => &[CLASS_ICMP],
                Proto::Any => &[CLASS_TCP, CLASS_UDP, CLASS_ICMP, CLASS_OTHER],
            };
            for v6 in [false, true] {
                let family_fits = match (rule.cidr, rule.proto) {
                    (Some(cidr), _) => cidr.is_v6() == v6,
                    (None, Proto::Icmp) => !v6,
                    (None, Proto::Icmpv6) => v6,
                    (None, _) => true,
                };
                if !family_fits {
                    continue;
                }
                let (network, mask) = rule.cidr.map_or((0, 0), |c| (c.network_bits(), c.mask()));
                let compiled = CompiledRule {
                    network,
                    mask,
                    first_key,
                    last_key,
                    allow: rule.action == Action::Allow,
                    position: position as u32,
                };
                for class in classes {
                    per_bucket[bucket(v6, *class)].push(compiled);
                }
            }
        }
        DirectionRules {
            buckets: per_bucket.map(KeyIndex::build),
            default_allow: default == Action::Allow,
        }
    }

    fn bucket(&self, query: &RuleQuery) -> &KeyIndex {
        &self.buckets[bucket(
            query.remote.v6,
            packet_class(query.remote.v6, query.protocol),
        )]
    }

    fn evaluate(&self, query: &RuleQuery) -> RuleMatch {
        self.decision(self.bucket(query).first_match(query.remote, query.key))
    }

    fn evaluate_without_key(&self, query: &RuleQuery) -> RuleMatch {
        self.decision(self.bucket(query).first_keyless_match(query.remote))
    }

    fn decision(&self, rule: Option<&CompiledRule>) -> RuleMatch {
        match rule {
            Some(rule) => RuleMatch {
                allow: rule.allow,
                rule: Some(rule.position as usize),
            },
            None => RuleMatch {
                allow: self.default_allow,
                rule: None,
            },
        }
    }
}

/// Both directions' compiled rules; built off the packet path, replaced whole on update.
#[derive(Debug)]
pub(crate) struct CompiledRules {
    ingress: DirectionRules,
    egress: DirectionRules,
}

impl CompiledRules {
    pub fn compile(config: &FirewallConfig) -> CompiledRules {
        CompiledRules {
            ingress: DirectionRules::compile(&config.ingress, config.default_ingress),
            egress: DirectionRules::compile(&config.egress, config.default_egress),
        }
    }

    pub fn evaluate(&self, direction: Direction, query: &RuleQuery) -> RuleMatch {
        self.direction(direction).evaluate(query)
    }

    /// The decision for a packet without a key (a non-first fragment): only the rules that
    /// name no ports or ICMP type can match it; `query.key` is ignored.
    pub fn evaluate_without_key(&self, direction: Direction, query: &RuleQuery) -> RuleMatch {
        self.direction(direction).evaluate_without_key(query)
    }

    fn direction(&self, direction: Direction) -> &DirectionRules {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
