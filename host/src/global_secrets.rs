//! The webhook's own secrets (Flyte's `Global` manager): env vars `FLYTE_SECRET_<GROUP>_<KEY>` and
//! files `<dir>/<group>/<key>`, read into memory so the request path never touches the disk.
//! Values are never logged; only counts are.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Files larger than this are not secrets; they are skipped with a warning.
const MAX_VALUE_BYTES: u64 = 1024 * 1024;

#[derive(Default, Clone)]
pub struct GlobalSecrets {
    env_prefix: String,
    /// Upper-cased env var name → value.
    env: HashMap<String, String>,
    /// (group, key) → value, case preserved as on disk.
    files: HashMap<(String, String), String>,
}

impl std::fmt::Debug for GlobalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalSecrets")
            .field("env", &self.env.len())
            .field("files", &self.files.len())
            .finish()
    }
}

/// Where global secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Env vars starting with this are secrets (`FLYTE_SECRET_`).
    pub env_prefix: String,
    /// `<dir>/<group>/<key>` files are secrets; a missing directory means none.
    pub dir: Option<PathBuf>,
}

impl GlobalSecrets {
    /// Reads the secrets of `source` from this process's environment and the filesystem.
    pub fn load(source: &Source) -> io::Result<Self> {
        Self::load_from(source, std::env::vars())
    }

    /// As [`load`](Self::load), with the environment given.
    pub fn load_from(
        source: &Source,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> io::Result<Self> {
        let env = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(&source.env_prefix))
            .map(|(name, value)| (name.to_uppercase(), value))
            .collect();
        let files = match &source.dir {
            Some(dir) => read_dir_secrets(dir)?,
            None => HashMap::new(),
        };
        Ok(Self {
            env_prefix: source.env_prefix.clone(),
            env,
            files,
        })
    }

    /// The env var first, then the file, as Flyte's `FileEnvSecretManager` does.
    pub fn lookup(&self, group: &str, key: &str) -> Option<&str> {
        if group.is_empty() || key.is_empty() {
            return None;
        }
        let name = format!("{}{group}_{key}", self.env_prefix).to_uppercase();
        self.env
            .get(&name)
            .or_else(|| self.files.get(&(group.to_owned(), key.to_owned())))
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.env.len() + self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hidden entries are skipped: Kubernetes secret volumes keep their real files under `..data`.
fn visible_entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            entries.push((name, entry.path()));
        }
    }
    Ok(entries)
}

fn read_dir_secrets(dir: &Path) -> io::Result<HashMap<(String, String), String>> {
    let mut secrets = HashMap::new();
    let groups = match visible_entries(dir) {
        Ok(groups) => groups,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(secrets),
        Err(err) => return Err(err),
    };
    for (group, group_path) in groups {
        if !group_path.is_dir() {
            continue;
        }
        for (key, path) in visible_entries(&group_path)? {
            let metadata = std::fs::metadata(&path)?;
            if !metadata.is_file() {
                continue;
            }
            if metadata.len() > MAX_VALUE_BYTES {
                tracing::warn!(
                    group,
                    key,
                    bytes = metadata.len(),
                    "global secret file too large; skipped"
                );
                continue;
            }
            match String::from_utf8(std::fs::read(&path)?) {
                Ok(value) => {
                    secrets.insert((group.clone(), key), value);
                }
                Err(_) => tracing::warn!(group, key, "global secret is not UTF-8 text; skipped"),
            }
        }
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_first_then_files_and_hidden_entries_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/password"), "from-file").unwrap();
        std::fs::write(dir.path().join("db/user"), "alice").unwrap();
        std::fs::create_dir_all(dir.path().join("..data/db")).unwrap();
        std::fs::write(dir.path().join("db/.hidden"), "x").unwrap();
        let source = Source {
            env_prefix: "FLYTE_SECRET_".into(),
            dir: Some(dir.path().into()),
        };
        let env = [
            ("FLYTE_SECRET_DB_PASSWORD".to_owned(), "from-env".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ];
        let globals = GlobalSecrets::load_from(&source, env).unwrap();
        assert_eq!(globals.lookup("db", "password"), Some("from-env"));
        assert_eq!(globals.lookup("db", "user"), Some("alice"));
        assert_eq!(globals.lookup("DB", "user"), None);
        assert_eq!(globals.lookup("db", ".hidden"), None);
        assert_eq!(globals.lookup("", "user"), None);
        assert_eq!(globals.len(), 3);
        assert!(!format!("{globals:?}").contains("alice"));
    }

    #[test]
    fn a_missing_directory_is_no_secrets() {
        let source = Source {
            env_prefix: "FLYTE_SECRET_".into(),
            dir: Some("/nonexistent/secrets-webhook".into()),
        };
        assert!(GlobalSecrets::load_from(&source, []).unwrap().is_empty());
    }
}
