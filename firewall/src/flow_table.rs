//! A fixed-capacity hash table keyed by a flow's 5-tuple, allocated whole when created and never
//! grown: the connection tracker and the reject aggregator of the flow log use it.
//!
//! Layout: entries are stored densely (`Vec` with its capacity reserved at creation, never
//! pushed past it); an open-addressing index of `u64` slots (at least twice the capacity, a
//! power of two, so the load stays at or under one half) holds `hash << 32 | entry + 1`, 0 for
//! an empty slot. Collisions probe linearly; removal shifts the following slots back (no
//! tombstones) and moves the last entry into the hole. The hash is a keyed folded multiply with
//! a random seed drawn when the firewall is created, so a guest cannot aim its flows at one
//! chain. (Drawn once: a later table reuses it, so no `getrandom` happens after seccomp.)

use std::hash::{BuildHasher, RandomState};

/// A flow as seen from the guest: its address and port, the remote's, and the protocol. ICMP
/// echo flows put the echo identifier in `guest_port` and 0 in `remote_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub guest: u128,
    pub remote: u128,
    pub guest_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub v6: bool,
}

const MIN_SLOTS: usize = 16;

/// The key of the tables' hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashSeed([u64; 2]);

impl HashSeed {
    /// A fresh random seed (from the standard library's per-thread random keys).
    pub fn random() -> HashSeed {
        let random = RandomState::new();
        HashSeed([
            random.hash_one(0x5eed_u64) | 1,
            random.hash_one(0xf10e_u64) | 1,
        ])
    }

    /// Another seed derived from this one, for a second table.
    pub fn derive(self, salt: u64) -> HashSeed {
        let [a, b] = self.0;
        HashSeed([
            folded_multiply(a ^ salt, b) | 1,
            folded_multiply(b ^ salt, a) | 1,
        ])
    }
}

#[derive(Debug)]
pub(crate) struct FlowTable<V> {
    slots: Box<[u64]>,
    slot_mask: usize,
    entries: Vec<(FlowKey, V)>,
    capacity: usize,
    seed: [u64; 2],
}

fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl<V> FlowTable<V> {
    /// A table for at most `capacity` flows; every allocation happens here.
    pub fn with_capacity(capacity: usize, seed: HashSeed) -> FlowTable<V> {
        let slots = (capacity * 2).next_power_of_two().max(MIN_SLOTS);
        FlowTable {
            slots: vec![0u64; slots].into_boxed_slice(),
            slot_mask: slots - 1,
            entries: Vec::with_capacity(capacity),
            capacity,
            seed: seed.0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    fn hash(&self, key: &FlowKey) -> u32 {
        let ports = u64::from(key.guest_port)
            | u64::from(key.remote_port) << 16
            | u64::from(key.protocol) << 32
            | u64::from(key.v6) << 40;
        let [s0, s1] = self.seed;
        let mut h = folded_multiply(key.guest as u64 ^ s0, (key.guest >> 64) as u64 ^ s1);
        h = folded_multiply(h ^ key.remote as u64, (key.remote >> 64) as u64 ^ s0);
        h = folded_multiply(h ^ ports, s1);
        (h >> 32) as u32
    }

    fn home(&self, hash: u32) -> usize {
        hash as usize & self.slot_mask
    }

    /// The entry index of `key`, if present.
    pub fn find(&self, key: &FlowKey) -> Option<usize> {
        let hash = self.hash(key);
        let mut slot = self.home(hash);
        loop {
            let value = self.slots[slot];
            if value == 0 {
                return None;
            }
            let entry = (value as u32 - 1) as usize;
            if (value >> 32) as u32 == hash && self.entries[entry].0 == *key {
                return Some(entry);
            }
            slot = (slot + 1) & self.slot_mask;
        }
    }

    pub fn key(&self, entry: usize) -> &FlowKey {
        &self.entries[entry].0
    }

    pub fn value(&self, entry: usize) -> &V {
        &self.entries[entry].1
    }

    pub fn value_mut(&mut self, entry: usize) -> &mut V {
        &mut self.entries[entry].1
    }

    /// Adds a key that is not present; gives the value back when the table is full.
    pub fn insert(&mut self, key: FlowKey, value: V) -> Result<usize, V> {
        if self.is_full() {
            return Err(value);
        }
        let hash = self.hash(&key);
        let mut slot = self.home(hash);
        while self.slots[slot] != 0 {
            slot = (slot + 1) & self.slot_mask;
        }
        let entry = self.entries.len();
        self.entries.push((key, value));
        self.slots[slot] = u64::from(hash) << 32 | (entry as u64 + 1);
        Ok(entry)
    }

    fn slot_of(&self, entry: usize) -> usize {
        let mut slot = self.home(self.hash(&self.entries[entry].0));
        while (self.slots[slot] as u32 - 1) as usize != entry {
            slot = (slot + 1) & self.slot_mask;
        }
        slot
    }

    /// Removes the entry at `entry`; the last entry takes its index.
    pub fn remove(&mut self, entry: usize) -> (FlowKey, V) {
        let mut hole = self.slot_of(entry);
        let mut next = hole;
        loop {
            next = (next + 1) & self.slot_mask;
            let value = self.slots[next];
            if value == 0 {
                break;
            }
            let home = self.home((value >> 32) as u32);
            let distance_from_home = next.wrapping_sub(home) & self.slot_mask;
            let distance_from_hole = next.wrapping_sub(hole) & self.slot_mask;
            if distance_from_home >= distance_from_hole {
                self.slots[hole] = value;
                hole = next;
            }
        }
        self.slots[hole] = 0;
        let last = self.entries.len() - 1;
        if entry != last {
            let moved = self.slot_of(last);
            self.slots[moved] = self.slots[moved] & !u64::from(u32::MAX) | (entry as u64 + 1);
        }
        self.entries.swap_remove(entry)
    }

    /// Calls `keep` on every entry and removes those for which it returns false (after `keep`
    /// has had its last look at them); returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&FlowKey, &mut V) -> bool) -> usize {
        let mut entry = 0;
        let mut removed = 0;
        while entry < self.entries.len() {
            let (key, value) = &mut self.entries[entry];
            if keep(key, value) {
                entry += 1;
            } else {
                self.remove(entry);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> FlowKey {
        FlowKey {
            guest: 1,
            remote: u128::from(n),
            guest_port: n as u16,
            remote_port: 80,
            protocol: 6,
            v6: false,
        }
    }

    #[test]
    fn capacity_is_fixed_and_never_grows() {
        let mut table = FlowTable::with_capacity(100, HashSeed::random());
        let reserved = table.entries.capacity();
        for n in 0..100 {
            table.insert(key(n), n).unwrap();
        }
        assert!(table.is_full());
        assert_eq!(table.insert(key(1000), 1000), Err(1000));
        assert_eq!(table.entries.capacity(), reserved);
        assert_eq!(table.slots.len(), 256);
    }

    #[test]
    fn find_insert_remove_keep_every_other_key_reachable() {
        let mut table = FlowTable::with_capacity(64, HashSeed::random());
        for n in 0..64 {
            table.insert(key(n), n).unwrap();
        }
        // Remove in a scattered order and check everything left is still found.
        let mut present: Vec<u32> = (0..64).collect();
        let mut step = 0usize;
        while !present.is_empty() {
            step = (step + 37) % present.len();
            let gone = present.swap_remove(step);
            let entry = table.find(&key(gone)).unwrap();
            assert_eq!(table.remove(entry), (key(gone), gone));
            assert_eq!(table.find(&key(gone)), None);
            for n in &present {
                let entry = table.find(&key(*n)).expect("still present");
                assert_eq!(*table.value(entry), *n);
            }
        }
        assert_eq!(table.len(), 0);
        assert!(table.slots.iter().all(|slot| *slot == 0));
    }

    #[test]
    fn retain_removes_and_reports() {
        let mut table = FlowTable::with_capacity(10, HashSeed::random());
        for n in 0..10 {
            table.insert(key(n), n).unwrap();
        }
        let mut removed = Vec::new();
        let count = table.retain(|_, value| {
            let keep = *value % 2 == 0;
            if !keep {
                removed.push(*value);
            }
            keep
        });
        assert_eq!(count, 5);
        removed.sort_unstable();
        assert_eq!(removed, vec![1, 3, 5, 7, 9]);
        assert_eq!(table.len(), 5);
        for n in (0..10).step_by(2) {
            assert!(table.find(&key(n)).is_some());
        }
    }
}
