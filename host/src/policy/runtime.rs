//! The wasm engine every policy shares: compiling a component (off the request path, cached on
//! disk by digest), the pooling allocator's limits, and the epoch ticker that times guests.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::host::GuestState;
use super::{Limits, POLICY_INTERFACE, Policy, TICK, WORLD, bindings};

/// The wasm engine shared by every policy, with its epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    pub(super) engine: Engine,
    pub(super) limits: Limits,
    cache: Option<Arc<PathBuf>>,
    _ticker: Arc<Ticker>,
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Self> {
        let engine = match Engine::new(&config(limits, true)) {
            Ok(engine) => engine,
            Err(err) => {
                // Pooling reserves address space up front; some sandboxes forbid that.
                tracing::warn!(error = %err, "pooling allocator unavailable; allocating on demand");
                Engine::new(&config(limits, false))?
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ticking = engine.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Self {
            engine,
            limits,
            cache: None,
            _ticker: Arc::new(Ticker(stop)),
        })
    }

    /// Compiles `wasm` and checks that it implements our world. Slow (tens of milliseconds):
    /// never on the request path.
    pub fn compile(&self, wasm: &[u8]) -> Result<Policy> {
        let digest = hex(&Sha256::digest(wasm));
        let short = digest[..12].to_owned();
        let component = self
            .load_component(wasm, &digest)
            .with_context(|| format!("policy {short} is not a valid wasm component"))?;
        let mut linker = Linker::<GuestState>::new(&self.engine);
        bindings::Mutation::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        linker.define_unknown_imports_as_traps(&component)?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let pre = linker
            .instantiate_pre(&component)
            .and_then(bindings::MutationPre::new)
            .map_err(anyhow::Error::from)
            .map_err(|err| match other_world(&exports) {
                Some(version) => err.context(format!(
                    "policy {short} was built for secrets-webhook:policy/mutation@{version}; \
                     this host runs {WORLD}: rebuild the policy against this release's wit/"
                )),
                None => err.context(format!("policy {short} does not implement world {WORLD}")),
            })?;
        Ok(Policy {
            runtime: self.clone(),
            pre,
            digest,
        })
    }

    /// Keeps compiled components in `dir`, keyed by the wasm digest and the engine's compatibility
    /// hash, so a restart skips compilation (tens of milliseconds to a fraction of one).
    pub fn with_cache(mut self, dir: PathBuf) -> Self {
        self.cache = Some(Arc::new(dir));
        self
    }

    fn load_component(&self, wasm: &[u8], digest: &str) -> Result<Component> {
        let Some(dir) = &self.cache else {
            return Ok(Component::new(&self.engine, wasm)?);
        };
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let path = dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
        // Read, not mapped: a mapped file truncated by someone else would crash the process.
        if let Ok(cached) = std::fs::read(&path) {
            // SAFETY: the file is one this program wrote below for an engine with this
            // compatibility hash (it is in the name); wasmtime also checks the header and refuses
            // an incompatible or truncated artifact, which we then recompile.
            match unsafe { Component::deserialize(&self.engine, &cached) } {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cached policy unusable; recompiling")
                }
            }
        }
        let compiled = self.engine.precompile_component(wasm)?;
        if let Err(err) = write_atomically(&path, &compiled) {
            tracing::warn!(path = %path.display(), error = %err, "cannot cache the compiled policy");
        }
        // SAFETY: these bytes were produced by this engine a moment ago.
        Ok(unsafe { Component::deserialize(&self.engine, &compiled)? })
    }
}

/// The world version a component's exports were built for, when it is not ours.
fn other_world(exports: &[String]) -> Option<&str> {
    let ours = WORLD.rsplit_once('@').map(|(_, version)| version);
    exports
        .iter()
        .find_map(|name| name.strip_prefix(POLICY_INTERFACE))
        .filter(|version| Some(*version) != ours)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// How much of each pooled memory stays resident between instances: what a guest touches for a
/// typical pod. Each slot keeps it while idle, so it is counted in the memory budget.
pub const RESIDENT_BYTES: usize = 1 << 20;

fn config(limits: Limits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    if pooling {
        let slots = limits.max_concurrent.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .max_memory_size(limits.memory_bytes)
            // A slot's pages stay mapped between instances and only the pages an instance
            // dirtied are reset to the image (PAGEMAP_SCAN, Linux 6.7+; else a memset of the
            // resident part). Without this every instance page-faults its stack, data and heap
            // in afresh, which cost more than the guest's own work.
            .total_stacks(slots)
            .linear_memory_keep_resident(RESIDENT_BYTES.min(limits.memory_bytes))
            .table_keep_resident(RESIDENT_BYTES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
