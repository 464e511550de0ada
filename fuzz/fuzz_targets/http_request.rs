//! The API's HTTP request parser, then the router: bytes from a client never panic either,
//! parsing is deterministic, and framing is prefix-consistent (a complete request is complete
//! only once its last byte is there, and no prefix of it is an error), which is what lets the
//! server parse a connection's buffer again after every read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::api::http::{parse, Parsed, MAX_HEAD_SIZE};
use palisade::api::router::route;
use palisade::api::DEFAULT_MAX_PAYLOAD;

fuzz_target!(|data: &[u8]| {
    for max_payload in [DEFAULT_MAX_PAYLOAD, 64] {
        let first = parse(data, max_payload, false);
        assert_eq!(
            first,
            parse(data, max_payload, false),
            "parse is not deterministic"
        );
        // Once 100 Continue is sent, the same bytes wait for the body instead.
        let after_continue = parse(data, max_payload, true);
        assert_ne!(after_continue, Ok(Parsed::ExpectContinue));
        if let Ok(Parsed::Complete(request, used)) = &first {
            assert!(*used > 0 && *used <= data.len());
            assert!(*used <= MAX_HEAD_SIZE + max_payload);
            assert!(request.path.starts_with('/'), "{request:?}");
            assert_eq!(
                parse(&data[..*used], max_payload, false),
                first,
                "a request depends on bytes after it"
            );
            for cut in [*used - 1, *used / 2] {
                let prefix = parse(&data[..cut], max_payload, false);
                assert!(
                    matches!(prefix, Ok(Parsed::Partial | Parsed::ExpectContinue)),
                    "prefix {cut} of a complete request gave {prefix:?}"
                );
            }
            let routed = route(request);
            assert_eq!(routed, route(request), "routing is not deterministic");
        }
    }
});
