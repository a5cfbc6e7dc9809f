//! The Kubernetes name rules a patch must satisfy, so that a bad secret request is refused here with
//! a message naming it, instead of by the API server with a message naming a field path.

/// A DNS-1123 subdomain (Secret names): lowercase alphanumerics, `-` and `.`, at most 253 bytes,
/// starting and ending with an alphanumeric.
pub fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{name:?} is not a valid Secret name: it must be 1 to 253 characters"
        ));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    let ok = bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1]);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid Secret name: it must be a DNS-1123 subdomain \
             (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ))
    }
}

/// A key of a Secret's data: alphanumerics, `-`, `_` and `.`, at most 253 bytes, not `.` or `..`.
pub fn check_secret_key(key: &str) -> Result<(), String> {
    let valid_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if key.is_empty() || key.len() > 253 || !valid_chars || key == "." || key == ".." {
        return Err(format!(
            "{key:?} is not a valid Secret key: it must be 1 to 253 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// An environment variable name every Kubernetes version accepts: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn check_env_var_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let rest_ok = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let first_ok = bytes
        .first()
        .is_some_and(|&b| b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid environment variable name: it must match [-._a-zA-Z][-._a-zA-Z0-9]*"
        ))
    }
}

/// A DNS-1123 label (volume names): lowercase alphanumerics and `-`, at most 63 bytes.
pub fn check_dns1123_label(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1]);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {name:?} is not a DNS-1123 label of at most 63 characters"
        ))
    }
}

/// A short, stable identifier for `parts` (FNV-1a, 64 bits, hex): the same on every platform and
/// build, which std's hasher does not promise. Used where Flyte used random names, so that a
/// reinvocation produces the same pod.
pub fn stable_id(parts: &[&str]) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for part in parts {
        // A separator byte no part can contain keeps ("ab","c") apart from ("a","bc").
        for byte in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for good in ["a", "db-creds", "a.b-c.1", &"a".repeat(253)] {
            assert!(check_dns1123_subdomain(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "MyGroup",
            "-a",
            "a-",
            "a_b",
            "arn:aws:x",
            &"a".repeat(254),
        ] {
            assert!(check_dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_keys() {
        for good in ["password", "tls.crt", "A_b-1", ".hidden"] {
            assert!(check_secret_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"k".repeat(254)] {
            assert!(check_secret_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_var_names() {
        for good in ["_FSEC_G_K", "AWS_ACCESS_KEY_ID", "a.b-c", "-x"] {
            assert!(check_env_var_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1ABC", "A=B", "A B", "ÄB"] {
            assert!(check_env_var_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_names() {
        assert!(check_dns1123_label("m4ze5vkql3").is_ok());
        assert!(check_dns1123_label(&"a".repeat(64)).is_err());
        assert!(check_dns1123_label("A").is_err());
    }

    #[test]
    fn stable_ids() {
        assert_eq!(stable_id(&["a", "b"]), stable_id(&["a", "b"]));
        assert_ne!(stable_id(&["ab", "c"]), stable_id(&["a", "bc"]));
        assert_eq!(stable_id(&[]).len(), 16);
    }
}
