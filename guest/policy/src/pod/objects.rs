//! The objects the managers add to a pod, serialised straight into the patch.
//!
//! Fields are declared in alphabetical order, the order a JSON map prints its keys in, so a patch
//! reads the same as when these objects were built as JSON trees.

use std::borrow::Cow;

use serde::Serialize;

use crate::settings::Resources;

pub type Text<'s> = Cow<'s, str>;

/// An entry of a container's `env`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvVar<'s> {
    pub name: Text<'s>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Text<'s>>,
    #[serde(rename = "valueFrom", skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom<'s>>,
}

impl<'s> EnvVar<'s> {
    pub fn plain(name: impl Into<Text<'s>>, value: impl Into<Text<'s>>) -> Self {
        Self {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    /// A variable set to the empty string, written as Flyte (Go's `omitempty`) writes it: a name
    /// without a value.
    pub fn empty(name: impl Into<Text<'s>>) -> Self {
        Self {
            name: name.into(),
            value: None,
            value_from: None,
        }
    }

    /// `valueFrom.secretKeyRef` to an optional key of a Secret in the pod's namespace.
    pub fn secret_key(name: impl Into<Text<'s>>, secret: &'s str, key: &'s str) -> Self {
        Self::from_secret(name.into(), secret, key, Some(true))
    }

    /// `valueFrom.secretKeyRef` to a key that must exist: the pod does not start without it.
    pub fn required_secret_key(name: impl Into<Text<'s>>, secret: &'s str, key: &'s str) -> Self {
        Self::from_secret(name.into(), secret, key, None)
    }

    fn from_secret(name: Text<'s>, secret: &'s str, key: &'s str, optional: Option<bool>) -> Self {
        Self {
            name,
            value: None,
            value_from: Some(ValueFrom {
                secret_key_ref: SecretKeyRef {
                    key,
                    name: secret,
                    optional,
                },
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueFrom<'s> {
    #[serde(rename = "secretKeyRef")]
    pub secret_key_ref: SecretKeyRef<'s>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretKeyRef<'s> {
    pub key: &'s str,
    pub name: &'s str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// An entry of a container's `volumeMounts`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeMount<'s> {
    #[serde(rename = "mountPath")]
    pub mount_path: Text<'s>,
    pub name: Text<'s>,
    #[serde(rename = "readOnly", skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// An entry of `spec.imagePullSecrets`; an empty name is left out, as Kubernetes' Go types
/// write it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalRef<'s> {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: &'s str,
}

/// An entry of `spec.volumes`: a Secret's keys, or a memory-backed scratch directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Volume<'s> {
    #[serde(rename = "emptyDir", skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDir>,
    pub name: Text<'s>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected: Option<ProjectedVolume<'s>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume<'s>>,
}

/// Several Secrets' keys in one directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectedVolume<'s> {
    pub sources: Vec<Projection<'s>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Projection<'s> {
    pub secret: ProjectedSecret<'s>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectedSecret<'s> {
    pub items: Vec<KeyToPath<'s>>,
    pub name: &'s str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmptyDir {
    pub medium: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretVolume<'s> {
    pub items: Vec<KeyToPath<'s>>,
    pub optional: bool,
    #[serde(rename = "secretName")]
    pub secret_name: &'s str,
}

/// One key of a Secret projected into a file of a secret volume.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyToPath<'s> {
    pub key: &'s str,
    pub path: Text<'s>,
}

/// A secret puller, appended to `spec.initContainers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Container<'s> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub env: Vec<EnvVar<'s>>,
    pub image: &'s str,
    pub name: String,
    pub resources: &'s Resources,
    #[serde(rename = "volumeMounts")]
    pub volume_mounts: Vec<VolumeMount<'s>>,
}
