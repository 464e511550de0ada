//! A second index for long candidate lists (many rules sharing a port range): rules grouped by
//! prefix length, and within a length by network, sorted for binary search. A lookup masks the
//! address once per distinct prefix length, finds its network, and walks only the rules of
//! that network, so 10,000 host rules on one port cost a few binary searches, not a scan.

/// What the index needs to know of a compiled rule.
pub(crate) trait PrefixRule {
    fn network(&self) -> u128;
    fn mask(&self) -> u128;
    fn covers_key(&self, key: u16) -> bool;
}

/// Lists shorter than this are scanned; longer ones get a `PrefixIndex`.
pub(crate) const INDEXED_LIST_LEN: usize = 16;

/// The members (rule numbers, ascending) of one list, grouped by mask, then by network.
#[derive(Debug, Default)]
pub(crate) struct PrefixIndex {
    groups: Vec<PrefixGroup>,
}

#[derive(Debug)]
struct PrefixGroup {
    mask: u128,
    networks: Vec<u128>,
    offsets: Vec<u32>,
    members: Vec<u32>,
}

impl PrefixIndex {
    /// Indexes `list` (rule numbers in ascending order) of `rules`.
    pub fn build<R: PrefixRule>(list: &[u32], rules: &[R]) -> PrefixIndex {
        let mut by_mask: Vec<(u128, u128, u32)> = list
            .iter()
            .map(|number| {
                let rule = &rules[*number as usize];
                (rule.mask(), rule.network(), *number)
            })
            .collect();
        // Sorting by (mask, network, number) keeps each network's members in rule order.
        by_mask.sort_unstable();
        let mut groups: Vec<PrefixGroup> = Vec::new();
        for (mask, network, number) in by_mask {
            let group = match groups.last_mut() {
                Some(group) if group.mask == mask => group,
                _ => {
                    groups.push(PrefixGroup {
                        mask,
                        networks: Vec::new(),
                        offsets: vec![0],
                        members: Vec::new(),
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            if group.networks.last() != Some(&network) {
                if !group.networks.is_empty() {
                    group.offsets.push(group.members.len() as u32);
                }
                group.networks.push(network);
            }
            group.members.push(number);
        }
        for group in &mut groups {
            group.offsets.push(group.members.len() as u32);
        }
        PrefixIndex { groups }
    }

    /// The lowest rule number below `limit` whose prefix holds `addr` and whose range `key`.
    pub fn first_match<R: PrefixRule>(
        &self,
        rules: &[R],
        addr: u128,
        key: u16,
        limit: u32,
    ) -> Option<u32> {
        let mut best = limit;
        for group in &self.groups {
            let Ok(found) = group.networks.binary_search(&(addr & group.mask)) else {
                continue;
            };
            let members =
                &group.members[group.offsets[found] as usize..group.offsets[found + 1] as usize];
            for number in members.iter().take_while(|number| **number < best) {
                if rules[*number as usize].covers_key(key) {
                    best = *number;
                    break;
                }
            }
        }
        (best < limit).then_some(best)
    }
}

/// The first match in a list: through its index when it has one, else by a scan.
pub(crate) fn first_match_in<R: PrefixRule>(
    list: &[u32],
    index: Option<&PrefixIndex>,
    rules: &[R],
    (addr, key): (u128, u16),
    limit: u32,
) -> Option<u32> {
    if let Some(index) = index {
        return index.first_match(rules, addr, key, limit);
    }
    list.iter()
        .copied()
        .take_while(|number| *number < limit)
        .find(|number| {
            let rule = &rules[*number as usize];
            addr & rule.mask() == rule.network() && rule.covers_key(key)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rule(u128, u128, u16);

    impl PrefixRule for Rule {
        fn network(&self) -> u128 {
            self.0
        }
        fn mask(&self) -> u128 {
            self.1
        }
        fn covers_key(&self, key: u16) -> bool {
            self.2 == key
        }
    }

    #[test]
    fn lowest_numbered_match_wins_across_prefix_lengths() {
        let host = u128::from(u32::MAX);
        let slash24 = u128::from(u32::MAX << 8);
        let rules = [
            Rule(0x0a00_0005, host, 80),
            Rule(0x0a00_0000, slash24, 443),
            Rule(0x0a00_0007, host, 443),
            Rule(0, 0, 443),
            Rule(0x0a00_0007, host, 22),
        ];
        let list: Vec<u32> = (0..rules.len() as u32).collect();
        let index = PrefixIndex::build(&list, &rules);
        assert_eq!(
            index.first_match(&rules, 0x0a00_0007, 443, u32::MAX),
            Some(1)
        );
        assert_eq!(
            index.first_match(&rules, 0x0b00_0007, 443, u32::MAX),
            Some(3)
        );
        assert_eq!(
            index.first_match(&rules, 0x0a00_0007, 22, u32::MAX),
            Some(4)
        );
        assert_eq!(index.first_match(&rules, 0x0a00_0007, 22, 4), None);
        assert_eq!(
            index.first_match(&rules, 0x0a00_0005, 80, u32::MAX),
            Some(0)
        );
        for (addr, key) in [(0x0a00_0007, 443), (0x0b00_0007, 22), (0x0a00_0005, 80)] {
            assert_eq!(
                first_match_in(&list, None, &rules, (addr, key), u32::MAX),
                index.first_match(&rules, addr, key, u32::MAX)
            );
        }
    }
}
