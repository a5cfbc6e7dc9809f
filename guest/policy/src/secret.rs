//! One secret request: the fields of flyteidl's `core.Secret` that Flyte encodes into a pod annotation.

use std::fmt;

/// How the task wants to read the secret (`core.Secret.MountType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum MountRequirement {
    /// Whatever the secret manager does best (`ANY = 0`).
    #[default]
    Any,
    /// An environment variable (`ENV_VAR = 1`).
    EnvVar,
    /// A file under `/etc/flyte/secrets` (`FILE = 2`).
    File,
}

impl MountRequirement {
    /// The proto enum value name, as the text format prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Any => "ANY",
            Self::EnvVar => "ENV_VAR",
            Self::File => "FILE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ANY" => Some(Self::Any),
            "ENV_VAR" => Some(Self::EnvVar),
            "FILE" => Some(Self::File),
            _ => None,
        }
    }

    pub fn from_number(number: u64) -> Option<Self> {
        match number {
            0 => Some(Self::Any),
            1 => Some(Self::EnvVar),
            2 => Some(Self::File),
            _ => None,
        }
    }
}

impl fmt::Display for MountRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A secret request (`flyteidl.core.Secret`). Empty strings mean "not set", as in proto3.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Secret {
    pub group: String,
    pub group_version: String,
    pub key: String,
    pub mount_requirement: MountRequirement,
    /// A custom environment variable: holds the value (ENV_VAR) or the file's path (FILE).
    pub env_var: String,
}

impl fmt::Display for Secret {
    /// A short description for messages: names only, never a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {:?}", self.group)?;
        if !self.group_version.is_empty() {
            write!(f, ", group_version {:?}", self.group_version)?;
        }
        write!(f, ", key {:?}, mount {}", self.key, self.mount_requirement)?;
        if !self.env_var.is_empty() {
            write!(f, ", env_var {:?}", self.env_var)?;
        }
        Ok(())
    }
}
