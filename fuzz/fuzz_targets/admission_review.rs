//! The host's AdmissionReview handling on arbitrary request bodies: see `secrets_webhook_fuzz::admission_review` for what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| secrets_webhook_fuzz::admission_review(data));
