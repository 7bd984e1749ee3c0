//! Fuzz target: `natrium_config::parse_str` on arbitrary UTF-8 must return, never panic or
//! overflow the stack.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `include` reads files relative to the current directory; keep the fuzzer away from
    // procfs, where some regular-looking files (e.g. /proc/kmsg) block on read.
    if text.contains("proc") {
        return;
    }
    if let Err(e) = natrium_config::parse_str(text) {
        let _ = e.to_string();
    }
});
