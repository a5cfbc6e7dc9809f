//! A JSON Patch written as text while the pod is edited: one operation per edit, no tree built
//! and nothing serialised twice. Mostly `add`; Flyte 2's Embedded manager also replaces and
//! moves env vars.

use serde::Serialize;

/// `[{"op":"add","path":…,"value":…},…]`, as serde_json prints a `json_patch::Patch`.
#[derive(Debug)]
pub struct Patch {
    json: Vec<u8>,
    ops: usize,
    /// Where each path is formatted before it is escaped into `json`; reused.
    path: String,
}

impl Default for Patch {
    fn default() -> Self {
        // A typical pod's patch is a few kilobytes: grow once or twice, not a dozen times.
        let mut json = Vec::with_capacity(4096);
        json.push(b'[');
        Self {
            json,
            ops: 0,
            path: String::with_capacity(128),
        }
    }
}

impl Patch {
    /// Appends `add` of `value` at `path`, an RFC 6901 JSON Pointer.
    pub fn add(&mut self, path: std::fmt::Arguments<'_>, value: &impl Serialize) {
        self.op("add", path, Some(value));
    }

    /// Appends `replace` of the value at `path` with `value`.
    pub fn replace(&mut self, path: std::fmt::Arguments<'_>, value: &impl Serialize) {
        self.op("replace", path, Some(value));
    }

    /// Appends `remove` of the value at `path`.
    pub fn remove(&mut self, path: std::fmt::Arguments<'_>) {
        self.op::<()>("remove", path, None);
    }

    fn op<T: Serialize>(&mut self, op: &str, path: std::fmt::Arguments<'_>, value: Option<&T>) {
        use std::fmt::Write as _;
        if self.ops > 0 {
            self.json.push(b',');
        }
        self.json.extend_from_slice(br#"{"op":""#);
        self.json.extend_from_slice(op.as_bytes());
        self.json.extend_from_slice(br#"","path":"#);
        self.path.clear();
        // Writing into a String cannot fail.
        let _ = self.path.write_fmt(path);
        write(&mut self.json, &self.path);
        if let Some(value) = value {
            self.json.extend_from_slice(br#","value":"#);
            write(&mut self.json, value);
        }
        self.json.push(b'}');
        self.ops += 1;
    }

    /// How many operations the patch has.
    pub fn len(&self) -> usize {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The patch as JSON text.
    pub fn finish(mut self) -> String {
        self.json.push(b']');
        // Only serde_json wrote here, and it writes UTF-8.
        String::from_utf8(self.json).unwrap_or_default()
    }
}

/// Writing our own objects (string keys, no floats) into a vector cannot fail.
fn write(out: &mut Vec<u8>, value: &impl Serialize) {
    let written = serde_json::to_writer(out, value);
    debug_assert!(written.is_ok(), "{written:?}");
}

/// Escapes one JSON Pointer reference token (RFC 6901).
pub fn token(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_json_patch_does() {
        let mut patch = Patch::default();
        assert_eq!(Patch::default().finish(), "[]");
        patch.add(
            format_args!("/metadata/annotations/{}", token("a/b~c\"")),
            &"v\"",
        );
        patch.add(format_args!("/spec/volumes"), &Vec::<u8>::new());
        patch.replace(format_args!("/spec/volumes"), &Vec::<u8>::new());
        patch.remove(format_args!("/spec/volumes"));
        let ours = patch.finish();
        let theirs: json_patch::Patch = serde_json::from_str(&ours).unwrap();
        assert_eq!(serde_json::to_string(&theirs).unwrap(), ours);
        assert_eq!(
            ours,
            r#"[{"op":"add","path":"/metadata/annotations/a~1b~0c\"","value":"v\""},{"op":"add","path":"/spec/volumes","value":[]},{"op":"replace","path":"/spec/volumes","value":[]},{"op":"remove","path":"/spec/volumes"}]"#
        );
    }
}
