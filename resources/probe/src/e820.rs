//! The BIOS e820 memory map as the VMM passes it in the zero page.

pub const E820_RAM: u32 = 1;
pub const MAX_ENTRIES: usize = 128;

#[derive(Clone, Copy, Default)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

pub struct E820Map {
    entries: [E820Entry; MAX_ENTRIES],
    len: usize,
}

impl E820Map {
    pub const fn new() -> Self {
        Self { entries: [E820Entry { addr: 0, size: 0, kind: 0 }; MAX_ENTRIES], len: 0 }
    }

    /// Appends an entry; entries past MAX_ENTRIES are dropped.
    pub fn push(&mut self, entry: E820Entry) {
        if self.len < MAX_ENTRIES {
            self.entries[self.len] = entry;
            self.len += 1;
        }
    }

    pub fn entries(&self) -> &[E820Entry] {
        &self.entries[..self.len]
    }

    pub fn usable(&self) -> impl Iterator<Item = &E820Entry> {
        self.entries().iter().filter(|e| e.kind == E820_RAM && e.size > 0)
    }

    pub fn usable_bytes(&self) -> u64 {
        self.usable().map(|e| e.size).sum()
    }

    /// Whether [start, end) lies inside one usable entry.
    pub fn is_usable(&self, start: u64, end: u64) -> bool {
        self.usable().any(|e| e.addr <= start && end <= e.end())
    }
}
