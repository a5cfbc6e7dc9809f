//! The whole policy on arbitrary pods: see `secrets_webhook_fuzz::mutate` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| secrets_webhook_fuzz::mutate(data));
