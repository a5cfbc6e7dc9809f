//! How a pod carries its secret requests: Flyte's opt-in label and `flyte.secrets/s<N>` annotations.
//!
//! Each annotation value is a `core.Secret` in protobuf text format, base32-encoded with the
//! lowercase alphabet `a-z1-6` and no padding (Flyte's `encoding.Base32Encoder`). This module is
//! both directions, so an engine written in Rust can mark its pods exactly as Flyte does.

use std::fmt;
use std::sync::OnceLock;

use data_encoding::{Encoding, Specification};
use serde_json::{Map, Value};

use crate::prototext::{self, TextError};
use crate::secret::Secret;

/// The opt-in label the webhook's `objectSelector` matches.
pub const POD_LABEL: &str = "inject-flyte-secrets";
pub const POD_LABEL_VALUE: &str = "true";
/// Every annotation whose key starts with this is a secret request.
pub const ANNOTATION_PREFIX: &str = "flyte.secrets/s";
/// Flyte refuses to marshal a descriptor longer than this.
pub const MAX_ENCODED_LEN: usize = 256 * 1024;

/// A secret request and the annotation it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub annotation: String,
    pub secret: Secret,
}

/// An annotation that does not hold a readable secret descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub annotation: String,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error unmarshaling secret [{}]: {}",
            self.annotation, self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

fn base32() -> &'static Encoding {
    static ENCODING: OnceLock<Encoding> = OnceLock::new();
    ENCODING.get_or_init(|| {
        let mut spec = Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz123456");
        // Go's decoder ignores the unused low bits of the last symbol; so do we.
        spec.check_trailing_bits = false;
        spec.encoding()
            .expect("the base32 alphabet is a valid specification")
    })
}

/// Base32 with Flyte's lowercase alphabet and no padding; also names K8s secret volumes.
pub fn base32_encode(bytes: &[u8]) -> String {
    base32().encode(bytes)
}

/// Decodes one annotation value into a secret. Go's decoder also ignores a trailing `=`.
pub fn decode_value(value: &str) -> Result<Secret, String> {
    if value.len() > MAX_ENCODED_LEN {
        return Err(format!(
            "secret descriptor cannot exceed [{MAX_ENCODED_LEN}] bytes"
        ));
    }
    let trimmed = value.trim_end_matches('=');
    let bytes = base32()
        .decode(trimmed.as_bytes())
        .map_err(|err| format!("illegal base32 data: {err}"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| "decoded descriptor is not UTF-8 text".to_owned())?;
    prototext::parse(&text).map_err(|TextError { offset, reason }| {
        format!("invalid secret descriptor: {reason} at byte {offset}")
    })
}

/// Encodes one secret as an annotation value, exactly as Flyte's marshaler does.
pub fn encode_value(secret: &Secret) -> Result<String, String> {
    let encoded = base32_encode(prototext::print(secret).as_bytes());
    if encoded.len() > MAX_ENCODED_LEN {
        return Err(format!(
            "secret descriptor cannot exceed [{MAX_ENCODED_LEN}] bytes"
        ));
    }
    Ok(encoded)
}

/// The order requests are processed in: `s0, s1, … s10` by number, then any other suffix by name.
fn sort_key(annotation: &str) -> (u8, u64, &str) {
    let suffix = &annotation[ANNOTATION_PREFIX.len()..];
    match suffix.parse::<u64>() {
        Ok(n) if !suffix.starts_with('+') => (0, n, suffix),
        _ => (1, 0, suffix),
    }
}

/// Reads every secret request among a pod's annotations (key, value), in annotation index order.
pub fn decode_requests<'a>(
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Request>, DecodeError> {
    let mut requests: Vec<(&str, &str)> = annotations
        .into_iter()
        .filter(|(key, _)| key.starts_with(ANNOTATION_PREFIX))
        .collect();
    requests.sort_by(|(a, _), (b, _)| sort_key(a).cmp(&sort_key(b)));
    requests
        .into_iter()
        .map(|(key, value)| {
            let secret = decode_value(value).map_err(|reason| DecodeError {
                annotation: key.to_owned(),
                reason,
            })?;
            Ok(Request {
                annotation: key.to_owned(),
                secret,
            })
        })
        .collect()
}

/// The annotations (`flyte.secrets/s0`, `s1`, …) and label Flyte puts on a pod for `secrets`.
pub fn encode_requests(secrets: &[Secret]) -> Result<Vec<(String, String)>, String> {
    secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| Ok((format!("{ANNOTATION_PREFIX}{index}"), encode_value(secret)?)))
        .collect()
}

/// Marks `object` as Flyte does: the opt-in label and one annotation per secret, replacing any
/// secret annotations it had. A Pod is marked itself; a Deployment, StatefulSet, DaemonSet,
/// ReplicaSet or Job in its pod template; a CronJob in its job template's pod template.
pub fn annotate_object(object: &mut Value, secrets: &[Secret]) -> Result<(), String> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let pointer = match kind.as_str() {
        "Pod" => "/metadata",
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            "/spec/template/metadata"
        }
        "CronJob" => "/spec/jobTemplate/spec/template/metadata",
        "" => return Err("the object has no kind".to_owned()),
        other => {
            return Err(format!(
                "cannot annotate a {other}: not a Pod or a pod template owner"
            ));
        }
    };
    let encoded = encode_requests(secrets)?;
    let metadata = ensure_object(object, pointer)?;
    ensure_field(metadata, "labels")?.insert(POD_LABEL.to_owned(), Value::from(POD_LABEL_VALUE));
    let annotations = ensure_field(metadata, "annotations")?;
    annotations.retain(|key, _| !key.starts_with(ANNOTATION_PREFIX));
    for (key, value) in encoded {
        annotations.insert(key, Value::String(value));
    }
    Ok(())
}

fn ensure_object<'a>(
    root: &'a mut Value,
    pointer: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let mut current = root;
    for token in pointer.split('/').skip(1) {
        let map = current
            .as_object_mut()
            .ok_or_else(|| format!("{pointer}: {token}'s parent is not an object"))?;
        current = map
            .entry(token)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    current
        .as_object_mut()
        .ok_or_else(|| format!("{pointer} is not an object"))
}

fn ensure_field<'a>(
    map: &'a mut Map<String, Value>,
    field: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    map.entry(field)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| format!("metadata.{field} is not an object"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::MountRequirement;
    use serde_json::json;

    #[test]
    fn flyte_marshaler_test_vectors() {
        let key_only = Secret {
            key: "my_key".into(),
            ..Secret::default()
        };
        let odd_group = Secret {
            group: ";':/\\".into(),
            ..Secret::default()
        };
        assert_eq!(encode_value(&key_only).unwrap(), "nnsxsoraejwxsx2lmv3secq");
        assert_eq!(
            encode_value(&odd_group).unwrap(),
            "m4zg54lqhiqceozhhixvyxbcbi"
        );
        assert_eq!(decode_value("nnsxsoraejwxsx2lmv3secq").unwrap(), key_only);
        assert_eq!(
            decode_value("m4zg54lqhiqceozhhixvyxbcbi=").unwrap(),
            odd_group
        );
    }

    #[test]
    fn volume_names_match_flyte() {
        assert_eq!(base32_encode(b"grOUP_"), "m4ze5vkql3");
    }

    #[test]
    fn decodes_in_numeric_index_order() {
        let secret = |key: &str| Secret {
            group: "g".into(),
            key: key.into(),
            mount_requirement: MountRequirement::EnvVar,
            ..Secret::default()
        };
        let mut annotations = Vec::new();
        for (index, key) in [(10, "ten"), (2, "two"), (0, "zero")] {
            annotations.push((
                format!("flyte.secrets/s{index}"),
                encode_value(&secret(key)).unwrap(),
            ));
        }
        annotations.push((
            "flyte.secrets/sx".into(),
            encode_value(&secret("x")).unwrap(),
        ));
        annotations.push(("other/annotation".into(), "ignored".into()));
        let order: Vec<String> = decode_requests(pairs(&annotations))
            .unwrap()
            .into_iter()
            .map(|request| request.secret.key)
            .collect();
        assert_eq!(order, ["zero", "two", "ten", "x"]);
    }

    #[test]
    fn names_the_bad_annotation() {
        let annotations = [
            ("flyte.secrets/s0", "nnsxsoraejwxsx2lmv3secq"),
            ("flyte.secrets/s1", "NOT-BASE32!"),
        ];
        let err = decode_requests(annotations).unwrap_err();
        assert_eq!(err.annotation, "flyte.secrets/s1");
        assert!(
            err.to_string()
                .starts_with("error unmarshaling secret [flyte.secrets/s1]: illegal base32")
        );

        let not_proto = base32_encode(b"key \"x\"");
        let err = decode_requests([("flyte.secrets/s0", not_proto.as_str())]).unwrap_err();
        assert!(
            err.reason
                .contains("invalid secret descriptor: expected ':'"),
            "{err}"
        );
    }

    fn pairs(owned: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
        owned.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    #[test]
    fn refuses_oversized_descriptors() {
        let huge = "a".repeat(MAX_ENCODED_LEN + 8);
        assert!(decode_value(&huge).unwrap_err().contains("cannot exceed"));
    }

    #[test]
    fn annotate_marks_pods_and_templates_and_round_trips() {
        let secrets = vec![
            Secret {
                group: "db".into(),
                key: "pass".into(),
                ..Secret::default()
            },
            Secret {
                group: "g".into(),
                key: "k".into(),
                mount_requirement: MountRequirement::File,
                ..Secret::default()
            },
        ];
        let mut pod = json!({"kind": "Pod", "metadata": {"annotations": {"flyte.secrets/s7": "old", "keep": "me"}}});
        annotate_object(&mut pod, &secrets).unwrap();
        assert_eq!(pod["metadata"]["labels"][POD_LABEL], POD_LABEL_VALUE);
        assert_eq!(pod["metadata"]["annotations"]["keep"], "me");
        let annotations = pod["metadata"]["annotations"].as_object().unwrap();
        let annotations = annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()));
        let decoded: Vec<Secret> = decode_requests(annotations)
            .unwrap()
            .into_iter()
            .map(|r| r.secret)
            .collect();
        assert_eq!(decoded, secrets);

        let mut cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}});
        annotate_object(&mut cron, &secrets).unwrap();
        assert!(
            cron.pointer("/spec/jobTemplate/spec/template/metadata/annotations/flyte.secrets~1s1")
                .is_some()
        );
        assert!(annotate_object(&mut json!({"kind": "Service"}), &secrets).is_err());
        assert!(annotate_object(&mut json!({"kind": "Pod", "metadata": []}), &secrets).is_err());
    }
}
