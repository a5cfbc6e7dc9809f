//! The annotation decoder on arbitrary bytes: see `secrets_webhook_fuzz::decode_annotation` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| secrets_webhook_fuzz::decode_annotation(data));
