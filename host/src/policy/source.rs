//! Which policy serves and how it is held, as the flags say: a component file or the embedded
//! one, what one call may use, and where compiled components are cached.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::{EMBEDDED, Limits, Policy, Runtime};

pub struct Source {
    /// The component; `None` serves the embedded one.
    pub file: Option<PathBuf>,
    /// Linear memory one instance may use.
    pub memory_bytes: usize,
    /// Wall-clock budget of one call.
    pub timeout: Duration,
    /// Where compiled components are kept across restarts; `None` compiles each time.
    pub cache_dir: Option<PathBuf>,
}

impl Source {
    /// The default cache directory, `<temp dir>/secrets-webhook-cache`.
    pub fn default_cache_dir() -> PathBuf {
        std::env::temp_dir().join("secrets-webhook-cache")
    }

    /// The runtime for this source, with `slots` instances alive at most.
    pub fn runtime(&self, slots: u32) -> Result<Runtime> {
        let runtime = Runtime::new(Limits {
            memory_bytes: self.memory_bytes,
            deadline: self.timeout,
            max_concurrent: slots,
        })?;
        Ok(match &self.cache_dir {
            Some(dir) => runtime.with_cache(dir.clone()),
            None => runtime,
        })
    }

    /// The component, compiled by `runtime`.
    pub fn compile(&self, runtime: &Runtime) -> Result<Policy> {
        match &self.file {
            Some(path) => runtime.compile(&read(path)?),
            None => runtime.compile(EMBEDDED),
        }
    }
}

/// The bytes of the component at `path`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading policy {}", path.display()))
}
