//! The parts of a Pod the managers read, borrowed from the pod's JSON text.
//!
//! serde skips every other field without building it, and strings without escapes are slices of
//! the input, so reading a pod allocates little more than one vector per list the managers
//! consult. The view also decides, in the same pass, whether the spec is worth reading at all:
//! a pod without the opt-in label or without secret requests never has its spec parsed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use crate::annotations::{ANNOTATION_PREFIX, POD_LABEL, POD_LABEL_VALUE};

/// A JSON string, borrowed from the pod's text unless it has escapes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Str<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl Str<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Str<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Str<'_> {
    fn from(text: &str) -> Self {
        Self(Cow::Owned(text.to_owned()))
    }
}

/// `metadata.labels` or `metadata.annotations`.
pub type StrMap<'a> = BTreeMap<Str<'a>, Str<'a>>;

/// What the policy reads of a Pod.
#[derive(Debug, Default)]
pub struct PodView<'a> {
    /// Whether the pod has a `metadata` object.
    pub has_metadata: bool,
    pub labels: Option<StrMap<'a>>,
    pub annotations: Option<StrMap<'a>>,
    /// `metadata.namespace`, when the pod names one.
    pub namespace: Option<Str<'a>>,
    /// `None` when the pod has no spec, or when it was not read because nothing will be injected.
    pub spec: Option<Spec<'a>>,
}

impl PodView<'_> {
    /// Whether the pod carries the opt-in label.
    pub fn opted_in(&self) -> bool {
        self.labels
            .as_ref()
            .and_then(|labels| labels.get(POD_LABEL))
            .is_some_and(|value| value.as_str() == POD_LABEL_VALUE)
    }

    /// Whether the pod is opted in and asks for at least one secret: only then is the spec read.
    fn wants_secrets(&self) -> bool {
        self.opted_in()
            && self.annotations.as_ref().is_some_and(|annotations| {
                annotations
                    .keys()
                    .any(|key| key.as_str().starts_with(ANNOTATION_PREFIX))
            })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Spec<'a> {
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<Volume<'a>>>,
    #[serde(borrow, default)]
    pub image_pull_secrets: Option<Vec<LocalRef<'a>>>,
}

/// A `LocalObjectReference`: `{name}`.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct LocalRef<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub env: Option<Vec<Env<'a>>>,
    #[serde(borrow, default)]
    pub volume_mounts: Option<Vec<Mount<'a>>>,
    #[serde(borrow, default)]
    pub command: Option<Vec<Str<'a>>>,
}

impl Container<'_> {
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(Str::as_str)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Env<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub value: Option<Str<'a>>,
    /// A variable with `valueFrom` is not a plain value; only a Secret it refers to is read.
    #[serde(borrow, default)]
    pub value_from: Option<ValueFrom<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct ValueFrom<'a> {
    #[serde(borrow, default)]
    pub secret_key_ref: Option<SecretKeyRef<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct SecretKeyRef<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
}

impl Env<'_> {
    /// The Secret a `valueFrom.secretKeyRef` variable reads.
    pub fn secret_ref(&self) -> Option<&str> {
        let reference = self.value_from.as_ref()?.secret_key_ref.as_ref()?;
        reference.name.as_ref().map(Str::as_str)
    }
}

impl Env<'_> {
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(Str::as_str)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Mount<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub mount_path: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct Volume<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub secret: Option<SecretSource<'a>>,
    #[serde(borrow, default)]
    pub projected: Option<Projected<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct Projected<'a> {
    #[serde(borrow, default)]
    pub sources: Option<Vec<Projection<'a>>>,
}

/// One source of a projected volume; only Secret sources are read.
#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct Projection<'a> {
    #[serde(borrow, default)]
    pub secret: Option<SecretKeyRef<'a>>,
}

impl Volume<'_> {
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(Str::as_str)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(remote = "Self")]
pub struct SecretSource<'a> {
    #[serde(borrow, default)]
    pub secret_name: Option<Str<'a>>,
    /// `None`: the volume projects every key of the Secret.
    #[serde(borrow, default)]
    pub items: Option<Vec<KeyToPath<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
pub struct KeyToPath<'a> {
    #[serde(borrow, default)]
    pub key: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(remote = "Self")]
struct Metadata<'a> {
    #[serde(borrow, default)]
    namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    labels: Option<StrMap<'a>>,
    #[serde(borrow, default)]
    annotations: Option<StrMap<'a>>,
}

/// Implements `Deserialize` for structs derived with `#[serde(remote = "Self")]`, taking JSON objects
/// only: serde's derived visitors would also read a struct from an array of its field values.
macro_rules! objects_only {
    ($($ty:ident),*) => {$(
        impl<'de: 'a, 'a> Deserialize<'de> for $ty<'a> {
            fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Object<'a>(std::marker::PhantomData<&'a ()>);
                impl<'de: 'a, 'a> Visitor<'de> for Object<'a> {
                    type Value = $ty<'a>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        $ty::deserialize(de::value::MapAccessDeserializer::new(map))
                    }
                }
                deserializer.deserialize_map(Object(std::marker::PhantomData))
            }
        }
    )*};
}

objects_only!(
    Spec,
    Container,
    Env,
    ValueFrom,
    SecretKeyRef,
    Mount,
    Volume,
    Projected,
    Projection,
    SecretSource,
    KeyToPath,
    LocalRef,
    Metadata
);

impl<'de: 'a, 'a> Deserialize<'de> for PodView<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PodVisitor(std::marker::PhantomData))
    }
}

struct PodVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for PodVisitor<'a> {
    type Value = PodView<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Pod object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pod = PodView::default();
        // The API server writes metadata before spec, so the spec of a pod that asks for nothing
        // is skipped unparsed. A spec that comes first is read in case it is needed.
        let mut metadata_seen = false;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match key.as_str() {
                "metadata" => {
                    let metadata: Option<Metadata<'de>> = map.next_value()?;
                    metadata_seen = true;
                    if let Some(metadata) = metadata {
                        pod.has_metadata = true;
                        pod.labels = metadata.labels;
                        pod.annotations = metadata.annotations;
                        pod.namespace = metadata.namespace;
                    }
                    if !pod.wants_secrets() {
                        pod.spec = None;
                    }
                }
                "spec" if metadata_seen && !pod.wants_secrets() => {
                    map.next_value::<IgnoredAny>()?;
                }
                "spec" => pod.spec = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(pod)
    }
}

/// Reads the view of the pod in `json`; on a pod of the wrong shape, names the first field at
/// fault (`malformed pod: spec.containers is not a list`).
pub fn parse(json: &str) -> Result<PodView<'_>, String> {
    serde_json::from_str(json).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            let shape = shape_error(json).unwrap_or_else(|| err.to_string());
            format!("malformed pod: {shape}")
        }
        _ => format!("the pod is not valid JSON: {err}"),
    })
}

/// The first field of `json` whose type is not the one a Pod has there, in the words a person
/// would use (`spec.containers is not a list`). The slow path: only for pods the view refused.
fn shape_error(json: &str) -> Option<String> {
    use serde_json::Value;
    let pod: Value = serde_json::from_str(json).ok()?;
    let object = |value: &Value| value.is_object() || value.is_null();
    let list = |value: &Value| value.is_array() || value.is_null();
    let Some(pod) = pod.as_object() else {
        return Some("the object is not a JSON object".to_owned());
    };
    let metadata = pod.get("metadata").unwrap_or(&Value::Null);
    if !object(metadata) {
        return Some("metadata is not an object".to_owned());
    }
    for field in ["labels", "annotations"] {
        let map = &metadata[field];
        if !object(map) {
            return Some(format!("metadata.{field} is not an object"));
        }
        for (key, value) in map.as_object().into_iter().flatten() {
            if !value.is_string() {
                return Some(format!("metadata.{field}.{key} is not a string"));
            }
        }
    }
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    if !object(spec) {
        return Some("spec is not an object".to_owned());
    }
    for field in [
        "initContainers",
        "containers",
        "volumes",
        "imagePullSecrets",
    ] {
        let entries = &spec[field];
        if !list(entries) {
            return Some(format!("spec.{field} is not a list"));
        }
        for (index, entry) in entries.as_array().into_iter().flatten().enumerate() {
            let at = format!("spec.{field}[{index}]");
            if !entry.is_object() {
                return Some(format!("{at} is not an object"));
            }
            if let Some(problem) = entry_shape_error(entry, field) {
                return Some(format!("{at}.{problem}"));
            }
        }
    }
    None
}

/// What is wrong inside one container or volume, relative to it (`env[0].name is not a string`).
fn entry_shape_error(entry: &serde_json::Value, field: &str) -> Option<String> {
    use serde_json::Value;
    let string = |value: &Value| value.is_string() || value.is_null();
    let strings = |entries: &Value, keys: &[&str], at: &str| -> Option<String> {
        if !(entries.is_array() || entries.is_null()) {
            return Some(format!("{at} is not a list"));
        }
        for (index, item) in entries.as_array().into_iter().flatten().enumerate() {
            if !(item.is_object() || item.is_null()) {
                return Some(format!("{at}[{index}] is not an object"));
            }
            for key in keys {
                if !string(&item[*key]) {
                    return Some(format!("{at}[{index}].{key} is not a string"));
                }
            }
        }
        None
    };
    if !string(&entry["name"]) {
        return Some("name is not a string".to_owned());
    }
    if field == "imagePullSecrets" {
        return None;
    }
    if field == "volumes" {
        let secret = &entry["secret"];
        if !(secret.is_object() || secret.is_null()) {
            return Some("secret is not an object".to_owned());
        }
        if !string(&secret["secretName"]) {
            return Some("secret.secretName is not a string".to_owned());
        }
        return strings(&secret["items"], &["key"], "secret.items");
    }
    strings(&entry["env"], &["name", "value"], "env")
        .or_else(|| {
            strings(
                &entry["volumeMounts"],
                &["name", "mountPath"],
                "volumeMounts",
            )
        })
        .or_else(|| {
            let command = &entry["command"];
            if !(command.is_array() || command.is_null()) {
                return Some("command is not a list".to_owned());
            }
            let bad = command.as_array()?.iter().position(|c| !c.is_string())?;
            Some(format!("command[{bad}] is not a string"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let pod = parse(
            r#"{"metadata":{"labels":{"inject-flyte-secrets":"true"},"annotations":{"flyte.secrets/s0":"x","a":"\"q\""}},
               "spec":{"containers":[{"name":"c","image":"i","env":[{"name":"A","value":"1"}]}]}}"#,
        )
        .unwrap();
        assert!(pod.opted_in());
        let annotations = pod.annotations.as_ref().unwrap();
        let plain = annotations.get("flyte.secrets/s0").unwrap();
        assert!(matches!(plain.0, Cow::Borrowed(_)));
        let escaped = annotations.get("a").unwrap();
        assert_eq!(escaped.as_str(), "\"q\"");
        let containers = pod.spec.unwrap().containers.unwrap();
        assert_eq!(containers[0].name(), Some("c"));
        assert!(matches!(
            containers[0].name.as_ref().unwrap().0,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn the_spec_of_a_pod_that_asks_for_nothing_is_not_read() {
        // A spec the view could not read at all: skipped, so no error.
        let unlabelled = r#"{"metadata":{"labels":{"app":"x"}},"spec":{"containers":7}}"#;
        assert!(parse(unlabelled).unwrap().spec.is_none());
        let labelled_no_requests =
            r#"{"metadata":{"labels":{"inject-flyte-secrets":"true"}},"spec":{"containers":7}}"#;
        assert!(parse(labelled_no_requests).unwrap().spec.is_none());
        // Spec first: read, in case the metadata that follows asks for secrets.
        let spec_first = r#"{"spec":{"containers":[{"name":"c"}]},"metadata":{}}"#;
        assert!(parse(spec_first).unwrap().spec.is_none());
    }

    #[test]
    fn shape_errors_name_the_field() {
        let labelled = r#""metadata":{"labels":{"inject-flyte-secrets":"true"},"annotations":{"flyte.secrets/s0":"x"}}"#;
        for (spec, expected) in [
            (
                r#"{"containers":{"name":"c"}}"#,
                "spec.containers is not a list",
            ),
            (
                r#"{"containers":[3]}"#,
                "spec.containers[0] is not an object",
            ),
            (r#"[]"#, "spec is not an object"),
            (
                r#"{"containers":[{"name":"c","env":3}]}"#,
                "spec.containers[0].env is not a list",
            ),
            (
                r#"{"volumes":[{"name":"v","secret":{"items":[{"key":1}]}}]}"#,
                "spec.volumes[0].secret.items[0].key is not a string",
            ),
        ] {
            let pod = format!(r#"{{{labelled},"spec":{spec}}}"#);
            assert_eq!(
                parse(&pod).unwrap_err(),
                format!("malformed pod: {expected}"),
                "{pod}"
            );
        }
        assert_eq!(
            parse(r#"{"metadata":{"annotations":{"flyte.secrets/s0":1}}}"#).unwrap_err(),
            "malformed pod: metadata.annotations.flyte.secrets/s0 is not a string"
        );
        assert!(parse("[1]").unwrap_err().contains("not a JSON object"));
        assert!(
            parse("{")
                .unwrap_err()
                .starts_with("the pod is not valid JSON")
        );
    }
}
