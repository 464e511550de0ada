//! The cap on connections served at once: a counter and a guard that gives its slot back
//! when dropped (also when the serving thread could not start).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// At most `max` slots held at once.
#[derive(Clone)]
pub struct Slots {
    active: Arc<AtomicUsize>,
    max: usize,
}

/// One held slot; dropping it frees it.
pub struct Slot(Arc<AtomicUsize>);

impl Slots {
    pub fn new(max: usize) -> Self {
        Slots {
            active: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or None when `max` are held.
    pub fn try_acquire(&self) -> Option<Slot> {
        let max = self.max;
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_after_the_cap_is_refused_until_one_is_freed() {
        let slots = Slots::new(2);
        let a = slots.try_acquire();
        let b = slots.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert!(slots.try_acquire().is_some());
    }
}
