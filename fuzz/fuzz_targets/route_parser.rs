//! Fuzzes the route-protocol parser (what a peer server sends): any bytes give ops, a request
//! for more, or an error (never a panic), consumed lengths stay in bounds, and parsing a prefix
//! never contradicts the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natrium_protocol::route::{parse_route_op, queue_names, RouteOp};
use natrium_protocol::Parsed;

fuzz_target!(|data: &[u8]| {
    let max_payload = 4096;
    let mut rest = data;
    while let Ok(Parsed::Op { op, len }) = parse_route_op(rest, max_payload) {
        assert!(len > 0 && len <= rest.len());
        if let RouteOp::Msg { queues, payload, .. } = op {
            assert!(payload.len() <= max_payload);
            for q in queue_names(queues) {
                assert!(!q.is_empty());
            }
        }
        rest = &rest[len..];
    }
    if !data.is_empty() {
        let cut = data.len() / 2;
        if let Ok(Parsed::Op { len, .. }) = parse_route_op(&data[..cut], max_payload) {
            match parse_route_op(data, max_payload) {
                Ok(Parsed::Op { len: whole, .. }) => assert_eq!(len, whole),
                other => panic!("prefix parsed but whole gave {other:?}"),
            }
        }
    }
});
