//! The MMDS data store: one JSON value, replaced by PUT, merged by PATCH (RFC 7396 JSON
//! merge patch, as Firecracker applies it), read by GET. Its size is measured as Firecracker
//! measures it, the length of its compact JSON serialisation, and never exceeds the limit: a
//! PUT or PATCH that would exceed it changes nothing. Nesting is bounded too ([`MAX_DEPTH`]),
//! so no value the API or a guest hands in can overflow the stack when it is merged,
//! serialised or dropped.
//!
//! The value lives behind an `Arc<RwLock<..>>` ([`MmdsStore::shared`]): the guest-facing
//! responders of the network interfaces read the very value the API writes, so a PUT or
//! PATCH after boot is what the next guest GET sees. Only the store writes it.

use std::io::Write;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Map, Value};

/// Firecracker's default limit: its default API payload limit, 51200 bytes.
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;

/// Deepest nesting of arrays and objects the store holds. serde_json refuses deeper text
/// already (its recursion limit is 128), so Firecracker's clients never sent more.
pub const MAX_DEPTH: usize = 128;

/// Why the store refused a PUT or PATCH. The store is unchanged after each of them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The result would be over the limit (Firecracker's message, for PUT and PATCH).
    #[error("The MMDS patch request doesn't fit.")]
    LimitExceeded,
    /// PATCH before any PUT (Firecracker's message).
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// A value nested deeper than [`MAX_DEPTH`].
    #[error("The MMDS value is nested deeper than {MAX_DEPTH} levels.")]
    TooDeep,
    /// The bytes are not one JSON value.
    #[error("The MMDS value is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// The data store. Never written to disk by the VMM.
#[derive(Debug)]
pub struct MmdsStore {
    data: Arc<RwLock<Value>>,
    initialized: bool,
    limit: usize,
}

/// A clone is an independent store holding a copy of the value (not shared with readers).
impl Clone for MmdsStore {
    fn clone(&self) -> Self {
        Self {
            data: Arc::new(RwLock::new(self.value())),
            initialized: self.initialized,
            limit: self.limit,
        }
    }
}

impl PartialEq for MmdsStore {
    fn eq(&self, other: &Self) -> bool {
        self.initialized == other.initialized
            && self.limit == other.limit
            && *self.read() == *other.read()
    }
}

impl Default for MmdsStore {
    fn default() -> Self {
        Self::new(DEFAULT_SIZE_LIMIT)
    }
}

impl MmdsStore {
    /// An empty store (`null`, not initialized) holding at most `limit` bytes of JSON.
    pub fn new(limit: usize) -> Self {
        Self {
            data: Arc::new(RwLock::new(Value::Null)),
            initialized: false,
            limit,
        }
    }

    /// The size limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a PUT has filled the store (PATCH needs one first).
    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    /// A copy of the stored value (`null` before the first PUT).
    pub fn value(&self) -> Value {
        self.read().clone()
    }

    /// The value the guest-facing responders read: the store's own, not a copy.
    pub fn shared(&self) -> Arc<RwLock<Value>> {
        Arc::clone(&self.data)
    }

    /// The stored value's size as the limit measures it.
    pub fn size(&self) -> usize {
        json_len(&self.read())
    }

    /// A reader panicking cannot leave the value half written (writes are whole
    /// assignments), so a poisoned lock is still read.
    fn read(&self) -> RwLockReadGuard<'_, Value> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Value> {
        self.data.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the whole store with `data`, if it fits.
    pub fn put(&mut self, data: Value) -> Result<(), StoreError> {
        if depth(&data) > MAX_DEPTH {
            return Err(StoreError::TooDeep);
        }
        if json_len(&data) > self.limit {
            return Err(StoreError::LimitExceeded);
        }
        *self.write() = data;
        self.initialized = true;
        Ok(())
    }

    /// Merges `patch` into the store (RFC 7396), if the result fits.
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !self.initialized {
            return Err(StoreError::NotInitialized);
        }
        if depth(patch) > MAX_DEPTH {
            return Err(StoreError::TooDeep);
        }
        let mut merged = self.value();
        merge_patch(&mut merged, patch);
        if json_len(&merged) > self.limit {
            return Err(StoreError::LimitExceeded);
        }
        *self.write() = merged;
        Ok(())
    }

    /// [`MmdsStore::put`] of JSON text (`--metadata`, fuzzing).
    pub fn put_json(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.put(parse(bytes)?)
    }

    /// [`MmdsStore::patch`] of JSON text.
    pub fn patch_json(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.patch(&parse(bytes)?)
    }
}

/// One JSON value from `bytes`; serde_json's recursion limit bounds the parser's stack.
fn parse(bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(StoreError::Json)
}

/// RFC 7396: an object patch merges key by key (`null` removes the key), anything else
/// replaces the target. Recursion is bounded by the patch's depth, checked by the caller.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in patch {
            if value.is_null() {
                doc.remove(key);
            } else {
                merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Nesting depth of `value` (a scalar is 0, `[]` is 1), measured without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                deepest = deepest.max(d);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(d);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Counts bytes without keeping them.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Length of the compact JSON serialisation of `value` (Firecracker's `to_vec(..).len()`),
/// counted without building it. A value of string keys always serialises; were it ever to
/// fail, the size is taken as unbounded so the limit refuses it.
pub fn json_len(value: &Value) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn filled(data: Value) -> MmdsStore {
        let mut store = MmdsStore::default();
        store.put(data).unwrap();
        store
    }

    fn patched(target: Value, patch: Value) -> Value {
        let mut store = filled(target);
        store.patch(&patch).unwrap();
        store.value()
    }

    #[test]
    fn a_shared_reader_sees_every_put_and_patch() {
        let mut store = MmdsStore::default();
        let reader = store.shared();
        store.put(json!({"a": 1})).unwrap();
        assert_eq!(*reader.read().unwrap(), json!({"a": 1}));
        store.patch(&json!({"b": 2})).unwrap();
        assert_eq!(*reader.read().unwrap(), json!({"a": 1, "b": 2}));
        // A refused patch leaves what the reader sees alone.
        let mut small = MmdsStore::new(8);
        let reader = small.shared();
        small.put(json!({"a": 1})).unwrap();
        assert!(small.patch(&json!({"b": "0123456789"})).is_err());
        assert_eq!(*reader.read().unwrap(), json!({"a": 1}));
    }

    #[test]
    fn a_new_store_is_null_and_refuses_a_patch_before_a_put() {
        let mut store = MmdsStore::default();
        assert_eq!(store.value(), Value::Null);
        assert!(!store.is_initialized());
        assert!(matches!(
            store.patch(&json!({"a": 1})),
            Err(StoreError::NotInitialized)
        ));
        assert_eq!(store.limit(), 51_200);
    }

    #[test]
    fn put_replaces_the_whole_store() {
        let mut store = filled(json!({"a": 1, "b": {"c": 2}}));
        store.put(json!({"x": "y"})).unwrap();
        assert_eq!(store.value(), json!({"x": "y"}));
    }

    /// The examples of RFC 7396 appendix A.
    #[test]
    fn patch_follows_the_rfc_7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            assert_eq!(
                patched(target.clone(), patch.clone()),
                want,
                "{target} + {patch}"
            );
        }
    }

    #[test]
    fn a_scalar_patch_replaces_the_store_as_firecracker_does() {
        assert_eq!(patched(json!({"a": 1}), json!("x")), json!("x"));
        // A null patch is not an object: it replaces the store (Firecracker's json_patch).
        assert_eq!(patched(json!({"a": 1}), Value::Null), Value::Null);
    }

    #[test]
    fn the_limit_is_the_compact_json_length_and_is_inclusive() {
        let data = json!({"k": "vvvv"});
        let len = serde_json::to_vec(&data).unwrap().len();
        assert_eq!(json_len(&data), len);
        let mut store = MmdsStore::new(len);
        store.put(data.clone()).unwrap();
        assert_eq!(store.size(), len);
        let mut small = MmdsStore::new(len - 1);
        assert!(matches!(small.put(data), Err(StoreError::LimitExceeded)));
        assert!(!small.is_initialized());
    }

    #[test]
    fn a_patch_over_the_limit_changes_nothing() {
        let mut store = MmdsStore::new(20);
        store.put(json!({"a": "b"})).unwrap();
        let err = store
            .patch(&json!({"c": "a long value over twenty"}))
            .unwrap_err();
        assert!(matches!(err, StoreError::LimitExceeded));
        assert_eq!(err.to_string(), "The MMDS patch request doesn't fit.");
        assert_eq!(store.value(), json!({"a": "b"}));
        // A patch that shrinks the store fits even when the patch text is long.
        store.patch(&json!({"a": null})).unwrap();
        assert_eq!(store.value(), json!({}));
    }

    #[test]
    fn deeply_nested_text_is_refused_without_overflowing_the_stack() {
        for open in ["[", "{\"a\":"] {
            let text = open.repeat(1_000_000);
            let mut store = MmdsStore::default();
            assert!(matches!(
                store.put_json(text.as_bytes()),
                Err(StoreError::Json(_))
            ));
            store.put_json(b"{}").unwrap();
            assert!(matches!(
                store.patch_json(text.as_bytes()),
                Err(StoreError::Json(_))
            ));
        }
    }

    #[test]
    fn a_value_deeper_than_the_limit_is_refused() {
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            deep = json!({ "a": deep });
        }
        assert_eq!(depth(&deep), MAX_DEPTH + 1);
        let mut store = MmdsStore::new(usize::MAX);
        assert!(matches!(store.put(deep.clone()), Err(StoreError::TooDeep)));
        store.put(json!({})).unwrap();
        assert!(matches!(store.patch(&deep), Err(StoreError::TooDeep)));
        let Value::Object(inner) = deep else {
            panic!("an object")
        };
        store.put(inner["a"].clone()).unwrap();
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": {}}]})), 4);
    }
}
