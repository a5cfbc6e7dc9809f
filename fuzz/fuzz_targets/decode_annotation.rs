//! The annotation decoder: base32 → UTF-8 → protobuf text → `Secret`, on arbitrary bytes.
//! Besides not panicking: whatever decodes re-encodes to a value that decodes to the same secret,
//! and whatever parses as text prints to text that parses to the same secret.
#![no_main]

use libfuzzer_sys::fuzz_target;
use secrets_policy::Secret;
use secrets_policy::annotations::{decode_value, encode_value};
use secrets_policy::prototext;

/// A secret encodes to a value that decodes to it, unless the value would pass the size limit
/// (the printed text escapes each non-ASCII byte as four, so a descriptor that decodes may not
/// encode).
fn check_encodes(secret: &Secret) {
    match encode_value(secret) {
        Ok(encoded) => assert_eq!(decode_value(&encoded).as_ref(), Ok(secret), "{encoded}"),
        Err(err) => assert!(err.contains("cannot exceed"), "{err}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same bytes as an annotation value (mostly base32) and as descriptor text.
    if let Ok(secret) = decode_value(text) {
        check_encodes(&secret);
    }
    if let Ok(secret) = prototext::parse(text) {
        let printed = prototext::print(&secret);
        assert_eq!(
            prototext::parse(&printed).as_ref(),
            Ok(&secret),
            "{printed:?}"
        );
        check_encodes(&secret);
    }
});
