//! The MMDS data store: any sequence of PUTs and PATCHes of arbitrary bytes (JSON or not)
//! against a small limit never panics, never lets the store exceed its limit or nesting
//! bound, and leaves the store unchanged whenever it refuses one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::mmds::store::{depth, json_len};
use palisade::mmds::{MmdsStore, MAX_DEPTH};

/// Small enough that merges often cross it.
const LIMIT: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut store = MmdsStore::new(LIMIT);
    // Requests are separated by 0xff (never in UTF-8 JSON); the first byte of each picks the
    // method.
    for request in data.split(|b| *b == 0xff) {
        let Some((method, body)) = request.split_first() else {
            continue;
        };
        let before = store.clone();
        let result = if method % 2 == 0 {
            store.put_json(body)
        } else {
            store.patch_json(body)
        };
        if result.is_err() {
            assert_eq!(store, before, "a refused request changed the store");
        }
        assert!(store.size() <= LIMIT, "store of {} bytes", store.size());
        assert_eq!(store.size(), json_len(&store.value()));
        assert!(depth(&store.value()) <= MAX_DEPTH);
        if result.is_ok() && method % 2 == 0 {
            let put: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(store.value(), put);
        }
    }
});
