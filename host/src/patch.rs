//! The policy's JSON Patch, checked before it is sent: the policy is not trusted to write one.
//!
//! The check reads the operations without building their values (a patch is as large as what it
//! adds), borrowing every string from the patch text, and holds the patch to what
//! `json_patch::Patch` would accept: a known `op`, a valid JSON Pointer for `path` (and `from`),
//! and the fields each op needs.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// Whether a field was there, whatever its value (`"value": null` is a value).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Self(true))
    }
}

#[derive(Deserialize)]
struct Operation<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Present,
}

/// How many operations `patch` has, or why it is not a JSON Patch.
pub fn check(patch: &str) -> Result<usize, String> {
    let operations: Vec<Operation<'_>> =
        serde_json::from_str(patch).map_err(|err| err.to_string())?;
    for (index, operation) in operations.iter().enumerate() {
        check_operation(operation).map_err(|reason| format!("operation {index}: {reason}"))?;
    }
    Ok(operations.len())
}

fn check_operation(operation: &Operation<'_>) -> Result<(), String> {
    let pointer = |field: &str, text: &str| {
        json_patch::jsonptr::Pointer::parse(text)
            .map(drop)
            .map_err(|err| format!("{field} {text:?}: {err}"))
    };
    pointer("path", &operation.path)?;
    let (needs_value, needs_from) = match operation.op.as_ref() {
        "add" | "replace" | "test" => (true, false),
        "remove" => (false, false),
        "move" | "copy" => (false, true),
        other => return Err(format!("unknown op {other:?}")),
    };
    if needs_value && !operation.value.0 {
        return Err(format!("{} without a value", operation.op));
    }
    match (&operation.from, needs_from) {
        (Some(from), true) => pointer("from", from),
        (None, true) => Err(format!("{} without from", operation.op)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_what_json_patch_accepts() {
        let patches = [
            r#"[]"#,
            r#"[{"op":"add","path":"/spec/volumes","value":[]},{"op":"add","path":"/a~1b","value":null}]"#,
            r#"[{"op":"remove","path":"/x"},{"op":"move","from":"/a","path":"/b"},{"op":"test","path":"","value":1}]"#,
        ];
        for patch in patches {
            let ours = check(patch).unwrap();
            let theirs: json_patch::Patch = serde_json::from_str(patch).unwrap();
            assert_eq!(ours, theirs.0.len(), "{patch}");
        }
    }

    #[test]
    fn refuses_what_json_patch_refuses() {
        let patches = [
            r#"{"not": "a patch"}"#,
            r#"[{"op":"add","path":"/x"}]"#,
            r#"[{"op":"frobnicate","path":"/x","value":1}]"#,
            r#"[{"op":"add","path":"x","value":1}]"#,
            r#"[{"op":"add","path":"/~2","value":1}]"#,
            r#"[{"op":"copy","path":"/x"}]"#,
            r#"[{"op":"move","path":"/x","from":"y"}]"#,
            r#"[{"path":"/x","value":1}]"#,
            r#"[3]"#,
            r#"[{"op":"add","path":"/x","value":1}"#,
        ];
        for patch in patches {
            assert!(check(patch).is_err(), "{patch}");
            assert!(
                serde_json::from_str::<json_patch::Patch>(patch).is_err(),
                "{patch}"
            );
        }
    }
}
