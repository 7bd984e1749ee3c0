//! Fuzzes the client-op parser: any bytes give ops, a request for more, or an error (never a
//! panic), consumed lengths stay in bounds, and parsing a prefix never contradicts the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natrium_protocol::{parse_op, Limits, Parsed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_control_line: 256,
        max_payload: 4096,
    };
    let mut rest = data;
    while let Ok(Parsed::Op { len, .. }) = parse_op(rest, &limits) {
        assert!(len > 0 && len <= rest.len());
        rest = &rest[len..];
    }
    // A prefix of the input must not yield an op the whole input would not.
    if !data.is_empty() {
        let cut = data.len() / 2;
        if let Ok(Parsed::Op { len, .. }) = parse_op(&data[..cut], &limits) {
            match parse_op(data, &limits) {
                Ok(Parsed::Op { len: whole, .. }) => assert_eq!(len, whole),
                other => panic!("prefix parsed but whole gave {other:?}"),
            }
        }
    }
});
