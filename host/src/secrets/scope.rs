//! Flyte 2's names for a secret. The scope, its cascade and the ids are the policy library's
//! (the guest walks the cascade); the K8s backend's Secret names are the host's alone.

pub use secrets_policy::scope::{Scope, id_hash, mirror_name, parse_secret_id};

/// The Secret that holds `id` in the K8s backend: the md5 of the id, in hex (Secret names
/// cannot hold the id's underscores, nor its length).
pub fn k8s_secret_name(id: &str) -> String {
    use md5::Digest as _;
    md5::Md5::digest(id.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k8s_names_are_the_md5_of_the_id() {
        // md5("") and md5("abc") are the RFC 1321 test vectors.
        assert_eq!(k8s_secret_name(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(k8s_secret_name("abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
