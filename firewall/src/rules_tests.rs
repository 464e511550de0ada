use super::*;
use crate::net_types::{Cidr, PortRange};

fn rule(action: Action, proto: Proto, cidr: Option<&str>, ports: Option<&str>) -> RuleConfig {
    RuleConfig {
        action,
        proto,
        cidr: cidr.map(|text| text.parse().unwrap()),
        ports: ports.map(|text| text.parse().unwrap()),
        icmp_type: None,
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr {
    Addr::v4([a, b, c, d])
}

fn query(remote: Addr, protocol: u8, key: u16) -> RuleQuery {
    RuleQuery {
        remote,
        protocol,
        key,
    }
}

fn ingress_only(rules: Vec<RuleConfig>) -> CompiledRules {
    CompiledRules::compile(&FirewallConfig {
        ingress: rules,
        ..FirewallConfig::default()
    })
}

#[test]
fn first_matching_rule_wins_across_port_and_wide_rules() {
    let rules = ingress_only(vec![
        rule(Action::Deny, Proto::Tcp, Some("10.0.0.0/8"), Some("22")),
        rule(Action::Allow, Proto::Any, Some("10.1.0.0/16"), None),
        rule(Action::Allow, Proto::Tcp, None, Some("20-30")),
    ]);
    let evaluate = |q| rules.evaluate(Direction::Ingress, &q);
    assert_eq!(
        evaluate(query(v4(10, 1, 2, 3), PROTO_TCP, 22)),
        RuleMatch {
            allow: false,
            rule: Some(0)
        }
    );
    assert_eq!(
        evaluate(query(v4(10, 1, 2, 3), PROTO_TCP, 23)),
        RuleMatch {
            allow: true,
            rule: Some(1)
        }
    );
    assert_eq!(
        evaluate(query(v4(11, 0, 0, 1), PROTO_TCP, 22)),
        RuleMatch {
            allow: true,
            rule: Some(2)
        }
    );
    assert_eq!(
        evaluate(query(v4(11, 0, 0, 1), PROTO_TCP, 31)),
        RuleMatch {
            allow: false,
            rule: None
        }
    );
    assert_eq!(
        evaluate(query(v4(10, 1, 0, 1), 47, 0)),
        RuleMatch {
            allow: true,
            rule: Some(1)
        }
    );
    assert_eq!(
        evaluate(query(v4(11, 0, 0, 1), PROTO_UDP, 25)),
        RuleMatch {
            allow: false,
            rule: None
        }
    );
}

#[test]
fn families_and_icmp_types_select_their_buckets() {
    let mut ping = rule(Action::Allow, Proto::Icmp, None, None);
    ping.icmp_type = Some(8);
    let mut ping6 = rule(Action::Allow, Proto::Icmpv6, None, None);
    ping6.icmp_type = Some(128);
    let rules = ingress_only(vec![
        ping,
        ping6,
        rule(Action::Allow, Proto::Udp, Some("fd00::/8"), None),
    ]);
    let evaluate = |q| rules.evaluate(Direction::Ingress, &q).rule;
    let fd = Addr::v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(evaluate(query(v4(1, 2, 3, 4), PROTO_ICMP, 8)), Some(0));
    assert_eq!(evaluate(query(v4(1, 2, 3, 4), PROTO_ICMP, 0)), None);
    assert_eq!(evaluate(query(fd, PROTO_ICMPV6, 128)), Some(1));
    assert_eq!(
        evaluate(query(fd, PROTO_ICMP, 8)),
        None,
        "ICMPv4 inside IPv6 is another protocol"
    );
    assert_eq!(evaluate(query(fd, PROTO_UDP, 53)), Some(2));
    assert_eq!(evaluate(query(v4(1, 2, 3, 4), PROTO_UDP, 53)), None);
}

#[test]
fn defaults_apply_per_direction() {
    let rules = CompiledRules::compile(&FirewallConfig::default());
    let q = query(v4(1, 1, 1, 1), PROTO_TCP, 80);
    assert!(!rules.evaluate(Direction::Ingress, &q).allow);
    assert!(rules.evaluate(Direction::Egress, &q).allow);
}

/// A small deterministic generator, enough to draw rule sets.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

fn reference_match(rules: &[RuleConfig], default: Action, q: &RuleQuery) -> RuleMatch {
    for (position, rule) in rules.iter().enumerate() {
        let proto_fits = match rule.proto {
            Proto::Tcp => q.protocol == PROTO_TCP,
            Proto::Udp => q.protocol == PROTO_UDP,
            Proto::Icmp => q.protocol == PROTO_ICMP && !q.remote.v6,
            Proto::Icmpv6 => q.protocol == PROTO_ICMPV6 && q.remote.v6,
            Proto::Any => true,
        };
        let cidr_fits = rule.cidr.is_none_or(|cidr| cidr.contains(q.remote));
        let key_fits = match (rule.ports, rule.icmp_type) {
            (Some(ports), _) => ports.first <= q.key && q.key <= ports.last,
            (None, Some(icmp_type)) => q.key == u16::from(icmp_type),
            (None, None) => true,
        };
        if proto_fits && cidr_fits && key_fits {
            return RuleMatch {
                allow: rule.action == Action::Allow,
                rule: Some(position),
            };
        }
    }
    RuleMatch {
        allow: default == Action::Allow,
        rule: None,
    }
}

#[test]
fn index_agrees_with_a_linear_scan_on_random_rule_sets() {
    let mut random = Lcg(7);
    let mut prefix_indexed = 0;
    for _ in 0..40 {
        let count = 1 + random.next(300) as usize;
        let mut rules = Vec::with_capacity(count);
        for _ in 0..count {
            let proto = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Any][random.next(4) as usize];
            let cidr = match random.next(3) {
                0 => None,
                _ => {
                    let prefix_len = random.next(33) as u32;
                    let bits = ((random.next(4) << 30) | (random.next(4) << 20)) as u32;
                    let mask = if prefix_len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - prefix_len)
                    };
                    let network = std::net::Ipv4Addr::from(bits & mask);
                    Some(format!("{network}/{prefix_len}").parse::<Cidr>().unwrap())
                }
            };
            let mut generated = RuleConfig {
                action: if random.next(2) == 0 {
                    Action::Allow
                } else {
                    Action::Deny
                },
                proto,
                cidr,
                ports: None,
                icmp_type: None,
            };
            if matches!(proto, Proto::Tcp | Proto::Udp) && random.next(4) != 0 {
                let first = random.next(200) as u16;
                let span = if random.next(8) == 0 { 60_000 } else { 20 };
                let last = first + random.next(span) as u16;
                generated.ports = Some(PortRange { first, last });
            }
            if proto == Proto::Icmp && random.next(2) == 0 {
                generated.icmp_type = Some(random.next(16) as u8);
            }
            rules.push(generated);
        }
        let compiled = ingress_only(rules.clone());
        prefix_indexed += compiled
            .ingress
            .buckets
            .iter()
            .filter(|bucket| {
                bucket.wide_prefix_index.is_some()
                    || bucket.interval_prefix_indexes.iter().any(Option::is_some)
            })
            .count();
        for _ in 0..2_000 {
            let bits =
                ((random.next(4) << 30) | (random.next(4) << 20) | random.next(1 << 20)) as u32;
            let protocol = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47][random.next(4) as usize];
            let key = if protocol == 47 {
                0
            } else {
                random.next(250) as u16
            };
            let q = query(
                Addr {
                    bits: u128::from(bits),
                    v6: false,
                },
                protocol,
                key,
            );
            assert_eq!(
                compiled.evaluate(Direction::Ingress, &q),
                reference_match(&rules, Action::Deny, &q),
                "{q:?}"
            );
        }
    }
    assert!(prefix_indexed > 0, "the prefix index was exercised");
}
