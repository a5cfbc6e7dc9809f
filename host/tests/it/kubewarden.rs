//! The Kubewarden build of the policy (`kubewarden.wasm`, from guest/kubewarden), loaded the way
//! Kubewarden loads it: a core module on wasmtime, linked with the waPC host functions as wapc's
//! wasmtime-provider defines them and WASI preview 1, initialised and called as that provider
//! does. Its answers are turned into AdmissionResponses the way policy-evaluator does (a JSON
//! Patch diffed from `mutated_object`) and must equal the embedded component's, fixture by fixture.
//! With `KWCTL` set, Kubewarden's own `kwctl run` answers every fixture too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use secrets_webhook::admission;
use secrets_webhook::config::OnError;
use secrets_webhook::config::{Config, Overrides};
use secrets_webhook::global_secrets::GlobalSecrets;
use secrets_webhook::policy::{self, Limits, Policy, Review, Runtime};
use secrets_webhook::policy::{Mutation, Mutator};
use serde_json::{Value, json};

use crate::common::{self, fixtures, workspace};

/// The module as host/build.rs built it, compiled once for all tests.
fn module() -> &'static (wasmtime::Engine, wasmtime::Module) {
    static MODULE: OnceLock<(wasmtime::Engine, wasmtime::Module)> = OnceLock::new();
    MODULE.get_or_init(|| {
        let engine = wapc::engine();
        let module = wasmtime::Module::new(&engine, kubewarden_wasm()).unwrap();
        (engine, module)
    })
}

fn kubewarden_wasm() -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("SECRETS_WEBHOOK_POLICY_DIR")).join("kubewarden.wasm"))
        .unwrap()
}

fn guest() -> wapc::Guest {
    let (engine, module) = module();
    wapc::Guest::new(engine, module).unwrap()
}

/// The waPC host side, after `wapc` 2 with `wasmtime-provider` (the stack policy-evaluator uses).
mod wapc {
    use wasmtime::{Caller, Engine, Error, Extern, Linker, Memory, Module, Store, TypedFunc};

    /// The waPC functions live in this import module.
    const NAMESPACE: &str = "wapc";
    /// Enough for any fixture many times over; a guest that loops fails instead of hanging.
    const FUEL: u64 = 20_000_000_000;

    /// What one module instance has seen, and the buffers of the call in progress.
    #[derive(Default)]
    pub struct State {
        operation: Vec<u8>,
        payload: Vec<u8>,
        guest_response: Option<Vec<u8>>,
        guest_error: Option<String>,
        host_response: Option<Vec<u8>>,
        host_error: Option<String>,
        /// `binding/namespace/operation` of every `__host_call`.
        pub host_calls: Vec<String>,
        pub console: Vec<String>,
        pub stdout: Vec<u8>,
        pub stderr: Vec<u8>,
    }

    pub fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.consume_fuel(true);
        Engine::new(&config).unwrap()
    }

    /// One instance, kept for many calls as policy-server keeps its instances.
    pub struct Guest {
        store: Store<State>,
        guest_call: TypedFunc<(i32, i32), i32>,
    }

    impl Guest {
        pub fn new(engine: &Engine, module: &Module) -> wasmtime::Result<Self> {
            let mut linker = Linker::new(engine);
            add_to_linker(&mut linker)?;
            super::wasi::add_to_linker(&mut linker, module)?;
            let mut store = Store::new(engine, State::default());
            store.set_fuel(FUEL)?;
            let instance = linker.instantiate(&mut store, module)?;
            // The provider calls whichever of these the module exports, in this order; a WASI
            // exit with status 0 is how a TinyGo `_start` ends, not a failure.
            for start in ["_start", "wapc_init"] {
                if instance.get_export(&mut store, start).is_none() {
                    continue;
                }
                let init = instance.get_typed_func::<(), ()>(&mut store, start)?;
                if let Err(err) = init.call(&mut store, ()) {
                    if err
                        .downcast_ref::<super::wasi::Exit>()
                        .is_some_and(|exit| exit.0 == 0)
                    {
                        continue;
                    }
                    return Err(err.context(format!("{start} failed")));
                }
            }
            let guest_call = instance.get_typed_func(&mut store, "__guest_call")?;
            Ok(Self { store, guest_call })
        }

        /// `WapcHost::call`: the operation's answer, or the guest's error.
        pub fn call(&mut self, operation: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
            let state = self.store.data_mut();
            state.operation = operation.as_bytes().to_vec();
            state.payload = payload.to_vec();
            state.guest_response = None;
            state.guest_error = None;
            state.host_response = None;
            state.host_error = None;
            self.store.set_fuel(FUEL).unwrap();
            let lengths = (len(operation.as_bytes()), len(payload));
            let result = match self.guest_call.call(&mut self.store, lengths) {
                Ok(result) => result,
                // The provider reports a trap as a failed call carrying the trap's text.
                Err(err) => return Err(format!("{err:#}")),
            };
            let state = self.store.data_mut();
            if result == 0 {
                return Err(state
                    .guest_error
                    .take()
                    .unwrap_or_else(|| "No error message set for call failure".to_owned()));
            }
            match (state.guest_response.take(), state.guest_error.take()) {
                (Some(response), _) => Ok(response),
                (None, Some(error)) => Err(error),
                (None, None) => Err("No error message OR response set for call success".to_owned()),
            }
        }

        pub fn state(&self) -> &State {
            self.store.data()
        }
    }

    fn len(bytes: &[u8]) -> i32 {
        i32::try_from(bytes.len()).expect("fits a wasm32 length")
    }

    fn memory(caller: &mut Caller<'_, State>) -> wasmtime::Result<Memory> {
        caller
            .get_export("memory")
            .and_then(Extern::into_memory)
            .ok_or_else(|| Error::msg("the guest exports no memory"))
    }

    /// Reads guest memory; an out-of-bounds pointer traps the call.
    pub fn read(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
        let memory = memory(caller)?;
        let mut bytes = vec![0; len as u32 as usize];
        memory
            .read(&*caller, ptr as u32 as usize, &mut bytes)
            .map_err(Error::new)?;
        Ok(bytes)
    }

    pub fn write(caller: &mut Caller<'_, State>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
        let memory = memory(caller)?;
        memory
            .write(&mut *caller, ptr as u32 as usize, bytes)
            .map_err(Error::new)
    }

    fn text(bytes: Vec<u8>, what: &str) -> wasmtime::Result<String> {
        String::from_utf8(bytes).map_err(|err| Error::msg(format!("{what} is not UTF-8: {err}")))
    }

    fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
        linker.func_wrap(
            NAMESPACE,
            "__guest_request",
            |mut caller: Caller<'_, State>, op_ptr: i32, ptr: i32| {
                let payload = caller.data().payload.clone();
                let operation = caller.data().operation.clone();
                write(&mut caller, ptr, &payload)?;
                write(&mut caller, op_ptr, &operation)
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__guest_response",
            |mut caller: Caller<'_, State>, ptr: i32, len: i32| {
                let response = read(&mut caller, ptr, len)?;
                caller.data_mut().guest_response = Some(response);
                Ok(())
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__guest_error",
            |mut caller: Caller<'_, State>, ptr: i32, len: i32| {
                let error = text(read(&mut caller, ptr, len)?, "__guest_error")?;
                caller.data_mut().guest_error = Some(error);
                Ok(())
            },
        )?;
        // This policy needs no host capability; a call is recorded (the tests require none) and
        // answered as policy-evaluator answers an unknown one: an error.
        linker.func_wrap(
            NAMESPACE,
            "__host_call",
            |mut caller: Caller<'_, State>,
             bd_ptr: i32,
             bd_len: i32,
             ns_ptr: i32,
             ns_len: i32,
             op_ptr: i32,
             op_len: i32,
             _ptr: i32,
             _len: i32| {
                let binding = text(read(&mut caller, bd_ptr, bd_len)?, "binding")?;
                let namespace = text(read(&mut caller, ns_ptr, ns_len)?, "namespace")?;
                let operation = text(read(&mut caller, op_ptr, op_len)?, "operation")?;
                let call = format!("{binding}/{namespace}/{operation}");
                let state = caller.data_mut();
                state.host_error = Some(format!("unknown host capability {call}"));
                state.host_calls.push(call);
                Ok(0_i32)
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__host_response",
            |mut caller: Caller<'_, State>, ptr: i32| match caller.data().host_response.clone() {
                Some(response) => write(&mut caller, ptr, &response),
                None => Ok(()),
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__host_response_len",
            |caller: Caller<'_, State>| {
                caller.data().host_response.as_ref().map_or(0, |r| r.len()) as i32
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__host_error",
            |mut caller: Caller<'_, State>, ptr: i32| match caller.data().host_error.clone() {
                Some(error) => write(&mut caller, ptr, error.as_bytes()),
                None => Ok(()),
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__host_error_len",
            |caller: Caller<'_, State>| {
                caller.data().host_error.as_ref().map_or(0, String::len) as i32
            },
        )?;
        linker.func_wrap(
            NAMESPACE,
            "__console_log",
            |mut caller: Caller<'_, State>, ptr: i32, len: i32| {
                let line = text(read(&mut caller, ptr, len)?, "__console_log")?;
                caller.data_mut().console.push(line);
                Ok(())
            },
        )?;
        Ok(())
    }
}

/// The WASI preview 1 functions a Rust `wasm32-wasip1` policy imports, as wasmtime-provider's
/// context sets them up for Kubewarden: no arguments, no environment, no preopened directory,
/// stdout and stderr (captured here). Any other WASI function the module imports traps if called.
mod wasi {
    use std::hash::{BuildHasher, RandomState};

    use wasmtime::{Caller, Error, ExternType, Linker, Module};

    use super::wapc::{State, read, write};

    const MODULE: &str = "wasi_snapshot_preview1";
    const PROVIDED: [&str; 5] = [
        "fd_write",
        "random_get",
        "environ_sizes_get",
        "environ_get",
        "proc_exit",
    ];
    const SUCCESS: i32 = 0;
    const BADF: i32 = 8;

    /// `proc_exit`: unwinds the guest with its status.
    #[derive(Debug)]
    pub struct Exit(pub i32);

    impl std::fmt::Display for Exit {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "the guest exited with status {}", self.0)
        }
    }

    impl std::error::Error for Exit {}

    fn u32_at(bytes: &[u8], at: usize) -> i32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as i32
    }

    pub fn add_to_linker(linker: &mut Linker<State>, module: &Module) -> wasmtime::Result<()> {
        linker.func_wrap(
            MODULE,
            "fd_write",
            |mut caller: Caller<'_, State>, fd: i32, iovs: i32, iovs_len: i32, written: i32| {
                if fd != 1 && fd != 2 {
                    return Ok(BADF);
                }
                let iovecs = read(&mut caller, iovs, iovs_len * 8)?;
                let mut data = Vec::new();
                for iovec in iovecs.chunks(8) {
                    data.extend(read(&mut caller, u32_at(iovec, 0), u32_at(iovec, 4))?);
                }
                write(&mut caller, written, &(data.len() as u32).to_le_bytes())?;
                let state = caller.data_mut();
                let stream = if fd == 1 {
                    &mut state.stdout
                } else {
                    &mut state.stderr
                };
                stream.extend(data);
                Ok(SUCCESS)
            },
        )?;
        // std seeds HashMap keys from here (wapc-guest's handler registry is one).
        linker.func_wrap(
            MODULE,
            "random_get",
            |mut caller: Caller<'_, State>, buf: i32, len: i32| {
                let seed = RandomState::new();
                let bytes: Vec<u8> = (0u64..)
                    .flat_map(|n| seed.hash_one(n).to_le_bytes())
                    .take(len as u32 as usize)
                    .collect();
                write(&mut caller, buf, &bytes)?;
                Ok(SUCCESS)
            },
        )?;
        linker.func_wrap(
            MODULE,
            "environ_sizes_get",
            |mut caller: Caller<'_, State>, count: i32, size: i32| {
                write(&mut caller, count, &0u32.to_le_bytes())?;
                write(&mut caller, size, &0u32.to_le_bytes())?;
                Ok(SUCCESS)
            },
        )?;
        linker.func_wrap(
            MODULE,
            "environ_get",
            |_: Caller<'_, State>, _: i32, _: i32| SUCCESS,
        )?;
        linker.func_wrap(
            MODULE,
            "proc_exit",
            |_: Caller<'_, State>, status: i32| -> wasmtime::Result<()> {
                Err(Error::new(Exit(status)))
            },
        )?;
        for import in module.imports() {
            if import.module() != MODULE || PROVIDED.contains(&import.name()) {
                continue;
            }
            if let ExternType::Func(ty) = import.ty() {
                let name = import.name().to_owned();
                linker.func_new(MODULE, import.name(), ty, move |_, _, _| {
                    Err(Error::msg(format!("WASI {name} is not provided")))
                })?;
            }
        }
        Ok(())
    }
}

/// The custom sections of a core module, in order. Binary format: the header `\0asm`, version 1,
/// then sections of `id: u8, size: LEB128 u32, payload`; a custom section (id 0) starts with its
/// name, LEB128 length first.
fn custom_sections(wasm: &[u8]) -> Vec<(String, &[u8])> {
    fn leb128(bytes: &[u8], at: &mut usize) -> usize {
        let mut value = 0;
        for shift in (0..35).step_by(7) {
            let byte = bytes[*at];
            *at += 1;
            value |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("LEB128 too long at {at}");
    }
    assert_eq!(&wasm[..4], b"\0asm", "not wasm");
    // A component would have version 0x0d, layer 1: Kubewarden's `Module::new` refuses those.
    assert_eq!(&wasm[4..8], &[1, 0, 0, 0], "not a core module");
    let mut sections = Vec::new();
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = leb128(wasm, &mut at);
        let end = at + size;
        if id == 0 {
            let mut name_at = at;
            let name_len = leb128(wasm, &mut name_at);
            let name = std::str::from_utf8(&wasm[name_at..name_at + name_len]).unwrap();
            sections.push((name.to_owned(), &wasm[name_at + name_len..end]));
        }
        at = end;
    }
    sections
}

fn metadata_yml() -> Value {
    let path = workspace().join("guest/kubewarden/metadata.yml");
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn the_module_carries_metadata_yml_where_kubewarden_reads_it() {
    let wasm = kubewarden_wasm();
    let sections = custom_sections(&wasm);
    // policy-evaluator reads the first section of this name (`KUBEWARDEN_CUSTOM_SECTION_METADATA`).
    let metadata: Vec<&[u8]> = sections
        .iter()
        .filter(|(name, _)| name == "io.kubewarden.metadata")
        .map(|(_, data)| *data)
        .collect();
    assert_eq!(
        metadata.len(),
        1,
        "sections: {:?}",
        sections.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let embedded: Value = serde_json::from_slice(metadata[0]).expect("the section is JSON");
    assert_eq!(embedded, metadata_yml());
    assert_eq!(embedded["protocolVersion"], "v1");
    assert_eq!(embedded["executionMode"], "kubewarden-wapc");
    assert_eq!(embedded["mutating"], true);
    assert_eq!(
        embedded["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}])
    );
}

#[test]
fn the_cluster_admission_policy_fits_the_crd_and_the_metadata() {
    let path = workspace().join("deploy/kubewarden/cluster-admission-policy.yaml");
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let policy = serde_json::to_value(yaml).unwrap();
    assert_eq!(policy["apiVersion"], "policies.kubewarden.io/v1");
    assert_eq!(policy["kind"], "ClusterAdmissionPolicy");
    // kwctl and the controller read the spec with `deny_unknown_fields` (the SDK's CRD types).
    let known = [
        "backgroundAudit",
        "contextAwareResources",
        "failurePolicy",
        "matchConditions",
        "matchPolicy",
        "message",
        "mode",
        "module",
        "mutating",
        "namespaceSelector",
        "objectSelector",
        "policyServer",
        "rules",
        "settings",
        "sideEffects",
        "timeoutEvalSeconds",
        "timeoutSeconds",
    ];
    let spec = policy["spec"].as_object().unwrap();
    for key in spec.keys() {
        assert!(known.contains(&key.as_str()), "unknown spec key {key}");
    }
    // Without `mutating: true` policy-server refuses the policy's patches.
    assert_eq!(spec["mutating"], true);
    let metadata = metadata_yml();
    assert_eq!(spec["rules"], metadata["rules"]);
    assert_eq!(spec["backgroundAudit"], metadata["backgroundAudit"]);
    assert!(spec["module"].as_str().unwrap().starts_with("registry://"));
}

#[test]
fn the_module_speaks_wapc_protocol_v1() {
    let (_, module) = module();
    let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
    for export in ["memory", "__guest_call", "wapc_init"] {
        assert!(
            exports.contains(&export),
            "{export} not exported: {exports:?}"
        );
    }
    // Kubewarden links nothing else: an import from any other module fails instantiation there.
    for import in module.imports() {
        assert!(
            ["wapc", "wasi_snapshot_preview1"].contains(&import.module()),
            "unexpected import {}::{}",
            import.module(),
            import.name()
        );
    }
    let mut guest = guest();
    let version = guest.call("protocol_version", b"").unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&version).unwrap(),
        json!("v1")
    );
    let unknown = guest.call("mutate", b"{}").unwrap_err();
    assert!(unknown.contains("mutate"), "{unknown}");
}

/// The global secrets of the fixtures, as `globalSecrets` settings.
fn fixture_globals() -> Value {
    let mut groups = BTreeMap::new();
    for group in std::fs::read_dir(fixtures().join("global-secrets")).unwrap() {
        let group = group.unwrap();
        let mut keys = BTreeMap::new();
        for key in std::fs::read_dir(group.path()).unwrap() {
            let key = key.unwrap();
            let value = std::fs::read_to_string(key.path()).unwrap();
            keys.insert(key.file_name().into_string().unwrap(), value);
        }
        groups.insert(group.file_name().into_string().unwrap(), keys);
    }
    assert!(!groups.is_empty());
    serde_json::to_value(groups).unwrap()
}

struct Fixture {
    name: String,
    review: Value,
    config: Config,
}

fn load_fixtures() -> Vec<Fixture> {
    let overrides = Overrides {
        global_secrets_dir: Some(fixtures().join("global-secrets")),
        ..Overrides::default()
    };
    let mut all = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        // The Embedded manager's fixtures need the webhook's store, which Kubewarden lacks.
        if !dir.join("review.json").exists() || dir.join("sources.json").exists() {
            continue;
        }
        let review = std::fs::read_to_string(dir.join("review.json")).unwrap();
        let config = dir.join("config.yaml");
        all.push(Fixture {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            review: serde_json::from_str(&review).unwrap(),
            config: Config::load(config.exists().then_some(config.as_path()), &overrides).unwrap(),
        });
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(all.len() >= 15, "only {} fixtures", all.len());
    all
}

/// The embedded component with one fixture's settings and global secrets.
struct Component<'a> {
    policy: &'a Policy,
    settings: &'a str,
    globals: Arc<GlobalSecrets>,
}

impl Mutator for Component<'_> {
    fn mutate<'a>(&'a self, review: &'a Review, call: &'a policy::Call) -> Mutation<'a> {
        Box::pin(self.policy.mutate(
            self.settings,
            review,
            policy::Services {
                globals: self.globals.clone(),
                embedded: None,
            },
            call,
        ))
    }
}

/// The parts of an AdmissionResponse both sides must agree on. Patches are compared by what they
/// make of the pod: the webhook writes its own operations, Kubewarden diffs.
#[derive(Debug, PartialEq)]
struct Answer {
    allowed: bool,
    code: Option<u64>,
    message: Option<String>,
    warnings: Vec<String>,
    /// The pod with the response's patch applied; `None` when there is no patch.
    pod: Option<Value>,
}

impl Answer {
    /// An AdmissionResponse (base64 JSON Patch) read against the `object` it was made for.
    fn of_response(response: &Value, object: &Value) -> Self {
        Self {
            allowed: response["allowed"].as_bool().unwrap(),
            code: response["status"]["code"].as_u64(),
            message: response["status"]["message"].as_str().map(str::to_owned),
            warnings: serde_json::from_value(response["warnings"].clone()).unwrap_or_default(),
            pod: response["patch"].as_str().map(|patch| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .unwrap();
                patched(object, &serde_json::from_slice(&bytes).unwrap())
            }),
        }
    }

    /// What differs from `expected`, shortly: pods as the patch from `expected`'s to this one's.
    fn differences(&self, expected: &Answer) -> Option<String> {
        let mut differences = Vec::new();
        let verdict = |a: &Answer| (a.allowed, a.code, a.message.clone(), a.warnings.clone());
        if verdict(self) != verdict(expected) {
            differences.push(format!(
                "verdict {:?}, the component's {:?}",
                verdict(self),
                verdict(expected)
            ));
        }
        match (&self.pod, &expected.pod) {
            (Some(pod), Some(wanted)) if pod != wanted => differences.push(format!(
                "pod differs from the component's by {}",
                serde_json::to_string(&json_patch::diff(wanted, pod)).unwrap()
            )),
            (Some(_), None) => differences.push("patched; the component left it".to_owned()),
            (None, Some(_)) => differences.push("not patched; the component patched".to_owned()),
            _ => {}
        }
        (!differences.is_empty()).then(|| differences.join("; "))
    }
}

fn patched(object: &Value, patch: &json_patch::Patch) -> Value {
    let mut pod = object.clone();
    json_patch::patch(&mut pod, patch).expect("the patch applies to the pod it was made for");
    pod
}

/// The webhook's answer: the embedded component behind the server's admission logic. `onError`
/// is always `deny`: Kubewarden has no such switch, a refusal is a refusal.
fn component_answer(component: &Component<'_>, review: &Value) -> Answer {
    let reply = policy::block_on(admission::review(
        &serde_json::to_vec(review).unwrap(),
        component,
        OnError::Deny,
        &policy::Call::unbounded(),
    ));
    assert_eq!(reply.http_status, 200);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    Answer::of_response(&body["response"], &review["request"]["object"])
}

/// Calls `validate` as policy-evaluator does and builds its AdmissionResponse the same way:
/// `allowed` is `accepted`, the patch is `json_patch::diff(object, mutated_object)` unless empty,
/// and `status` is present when the guest set a message or a code.
fn kubewarden_answer(guest: &mut wapc::Guest, review: &Value, settings: &Value) -> (Answer, Value) {
    let request = &review["request"];
    // policy-evaluator (and `kwctl run`) first reads the request into its own AdmissionRequest,
    // which requires these, and leaves out absent fields rather than sending nulls.
    for field in ["uid", "kind", "resource", "operation", "userInfo"] {
        assert!(!request[field].is_null(), "the request lacks {field}");
    }
    let payload = json!({"request": request, "settings": settings});
    let bytes = guest
        .call("validate", &serde_json::to_vec(&payload).unwrap())
        .unwrap_or_else(|err| panic!("validate failed: {err}"));
    let response: Value = serde_json::from_slice(&bytes).unwrap();
    // The SDK's `ValidationResponse`, snake_case; nothing else is read by the host.
    for key in response.as_object().unwrap().keys() {
        assert!(
            [
                "accepted",
                "message",
                "code",
                "mutated_object",
                "audit_annotations",
                "warnings"
            ]
            .contains(&key.as_str()),
            "unknown key {key} in {response}"
        );
    }
    let pod = match &response["mutated_object"] {
        Value::Null => None,
        mutated => {
            let object = request.get("object").filter(|o| !o.is_null());
            let object = object.expect("policy-evaluator refuses a mutation without an object");
            let patch = json_patch::diff(object, mutated);
            (!patch.0.is_empty()).then(|| patched(object, &patch))
        }
    };
    let answer = Answer {
        allowed: response["accepted"].as_bool().expect("accepted is a bool"),
        code: response["code"].as_u64(),
        message: response["message"].as_str().map(str::to_owned),
        warnings: serde_json::from_value(response["warnings"].clone()).unwrap_or_default(),
        pod,
    };
    (answer, response)
}

fn embedded_policy() -> Policy {
    Runtime::new(Limits::default())
        .unwrap()
        .compile(policy::EMBEDDED)
        .unwrap()
}

/// The fixture's `webhook:` section as Kubewarden settings, with `globals` as `globalSecrets`.
fn kubewarden_settings(config: &Config, globals: Option<&Value>) -> Value {
    let mut settings = match serde_json::from_str(&config.settings).unwrap() {
        Value::Null => json!({}),
        settings => settings,
    };
    if let Some(globals) = globals {
        settings["globalSecrets"] = globals.clone();
    }
    settings
}

/// Runs every fixture through both and returns the failures, and how many answers were mutations,
/// refusals and plain admissions.
fn compare_all(with_globals: bool) -> (Vec<String>, [usize; 3]) {
    let policy = embedded_policy();
    let mut guest = guest();
    let globals_json = fixture_globals();
    let mut failures = Vec::new();
    let mut counts = [0; 3];
    for fixture in load_fixtures() {
        let globals = if with_globals {
            GlobalSecrets::load_from(&fixture.config.global_secrets, []).unwrap()
        } else {
            GlobalSecrets::default()
        };
        let component = Component {
            policy: &policy,
            settings: &fixture.config.settings,
            globals: Arc::new(globals),
        };
        let settings = kubewarden_settings(&fixture.config, with_globals.then_some(&globals_json));
        let checked = guest.call("validate_settings", settings.to_string().as_bytes());
        let checked: Value = serde_json::from_slice(&checked.unwrap()).unwrap();
        if checked["valid"] != true {
            failures.push(format!("{}: settings refused: {checked}", fixture.name));
            continue;
        }
        let expected = component_answer(&component, &fixture.review);
        let (answer, _) = kubewarden_answer(&mut guest, &fixture.review, &settings);
        if let Some(differences) = answer.differences(&expected) {
            failures.push(format!("{}: {differences}", fixture.name));
            continue;
        }
        counts[match (answer.allowed, answer.pod.is_some()) {
            (true, true) => 0,
            (false, _) => 1,
            (true, false) => 2,
        }] += 1;
    }
    let state = guest.state();
    assert!(
        state.host_calls.is_empty(),
        "host calls: {:?}",
        state.host_calls
    );
    assert!(
        state.stdout.is_empty() && state.stderr.is_empty() && state.console.is_empty(),
        "the guest printed: {}{}{:?}",
        String::from_utf8_lossy(&state.stdout),
        String::from_utf8_lossy(&state.stderr),
        state.console
    );
    (failures, counts)
}

#[test]
fn every_fixture_gets_the_components_answer() {
    let (failures, [mutated, refused, admitted]) = compare_all(true);
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Guards against a comparison that passes because nothing happened.
    assert!(
        mutated >= 20 && refused >= 10 && admitted >= 5,
        "{mutated} mutated, {refused} refused, {admitted} admitted"
    );
}

/// Kubewarden's own evaluator: `kwctl run` on every fixture, two at a time, must give the
/// component's answer.
#[test]
fn kwctl_gives_every_fixture_the_components_answer() {
    let Some(kwctl) =
        common::tools::find("KWCTL", "kwctl_gives_every_fixture_the_components_answer")
    else {
        return;
    };
    let module = PathBuf::from(env!("SECRETS_WEBHOOK_POLICY_DIR")).join("kubewarden.wasm");
    let policy = embedded_policy();
    let globals_json = fixture_globals();
    let fixtures = load_fixtures();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(fixture) =
                    fixtures.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                {
                    let globals =
                        GlobalSecrets::load_from(&fixture.config.global_secrets, []).unwrap();
                    let component = Component {
                        policy: &policy,
                        settings: &fixture.config.settings,
                        globals: Arc::new(globals),
                    };
                    let expected = component_answer(&component, &fixture.review);
                    let settings = kubewarden_settings(&fixture.config, Some(&globals_json));
                    let answer = kwctl_answer(&kwctl, &module, fixture, &settings);
                    if let Some(differences) = answer.differences(&expected) {
                        let failure = format!("{}: {differences}", fixture.name);
                        failures.lock().unwrap().push(failure);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ under kwctl:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(fixtures.len() >= 70, "only {} fixtures", fixtures.len());
}

/// `kwctl run` on one fixture: its AdmissionResponse, read like the component's.
fn kwctl_answer(kwctl: &Path, module: &Path, fixture: &Fixture, settings: &Value) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("review.json");
    std::fs::write(&request, fixture.review.to_string()).unwrap();
    let output = std::process::Command::new(kwctl)
        .arg("run")
        .arg("--request-path")
        .arg(&request)
        .arg("--settings-json")
        .arg(settings.to_string())
        .arg(format!("file://{}", module.display()))
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: kwctl failed: {}",
        fixture.name,
        String::from_utf8_lossy(&output.stderr)
    );
    let response: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{}: kwctl printed no response ({err})", fixture.name));
    Answer::of_response(&response, &fixture.review["request"]["object"])
}

#[test]
fn without_global_secrets_it_is_the_webhook_without_them() {
    let (failures, _) = compare_all(false);
    assert!(
        failures.is_empty(),
        "{} fixture(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn global_secrets_come_from_the_settings() {
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("10-global-env-var/review.json")).unwrap(),
    )
    .unwrap();
    let mut guest = guest();
    let with = json!({"globalSecrets": {"db": {"password": "from-settings"}}});
    let (answer, response) = kubewarden_answer(&mut guest, &review, &with);
    assert!(answer.allowed && answer.pod.is_some(), "{response}");
    assert!(
        response["mutated_object"]
            .to_string()
            .contains("from-settings")
    );
    let (_, response) = kubewarden_answer(&mut guest, &review, &json!({}));
    assert!(
        !response.to_string().contains("from-settings"),
        "{response}"
    );
}

fn validate_settings(guest: &mut wapc::Guest, settings: &[u8]) -> Value {
    let answer = guest.call("validate_settings", settings).unwrap();
    serde_json::from_slice(&answer).unwrap()
}

#[test]
fn settings_the_component_accepts_are_accepted() {
    let mut guest = guest();
    let policy = embedded_policy();
    let deployed: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(
            workspace().join("deploy/kubewarden/cluster-admission-policy.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let example: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(workspace().join("deploy/kubewarden/settings.yaml")).unwrap(),
    )
    .unwrap();
    for settings in [
        json!({}),
        json!({"secretManagerTypes": ["Vault", "K8s"], "vaultSecretManager": {"role": "r", "kvVersion": "1"}}),
        json!({"secretManagerType": "AWS", "awsSecretManager": {"sidecarImage": "x"}, "secretEnvVarPrefix": "_UNION_"}),
        json!({"globalSecrets": {"db": {"password": "p", "user": "u"}}, "secretManagerType": "Global"}),
        json!({"globalSecrets": null}),
        serde_json::to_value(&deployed["spec"]["settings"]).unwrap(),
        serde_json::to_value(&example).unwrap(),
    ] {
        let answer = validate_settings(&mut guest, settings.to_string().as_bytes());
        assert_eq!(
            answer,
            json!({"valid": true, "message": null}),
            "{settings}"
        );
        let mut core = settings.clone();
        if let Some(object) = core.as_object_mut() {
            object.remove("globalSecrets");
        }
        policy.validate_settings(&core.to_string()).unwrap();
    }
}

#[test]
fn bad_settings_are_refused_with_the_librarys_reason() {
    let mut guest = guest();
    let policy = embedded_policy();
    // Settings the library refuses: the same words, since it is the same check.
    for settings in [
        json!({"secretManagerType": "Bogus"}),
        json!({"secretManagerTypes": []}),
        json!({"secretEnvVarPrefix": "1X"}),
        json!({"vaultSecretManager": {"role": ""}}),
        json!({"vaultSecretManager": {"kvVersion": "3"}}),
        json!({"awsSecretManager": {"sidecarImage": " "}}),
        json!({"gcpSecretManager": {"image": "x"}}),
    ] {
        let json = settings.to_string();
        let reason = secrets_policy::Settings::from_json(&json).unwrap_err();
        let answer = validate_settings(&mut guest, json.as_bytes());
        assert_eq!(
            answer,
            json!({"valid": false, "message": reason}),
            "{settings}"
        );
        assert!(policy.validate_settings(&json).is_err(), "{settings}");
    }
    // Settings only this front door reads.
    for (settings, needle) in [
        (&br#"{"globalSecrets": "db"}"#[..], "globalSecrets"),
        (
            br#"{"globalSecrets": {"db": {"password": 1}}}"#,
            "globalSecrets",
        ),
        (
            br#"{"globalSecrets": {"": {"password": "p"}}}"#,
            "empty group or key",
        ),
        (
            br#"{"globalSecrets": {"db": {"": "p"}}}"#,
            "empty group or key",
        ),
        (br#"["K8s"]"#, "expected an object"),
        (br#""K8s""#, "expected an object"),
        (b"secretManagerType: K8s", "not JSON"),
        // The library takes Embedded; a waPC policy has no store to ask.
        (
            br#"{"secretManagerType": "Embedded"}"#,
            "needs the secrets-webhook host",
        ),
        (
            br#"{"secretManagerTypes": ["K8s", "Embedded"]}"#,
            "needs the secrets-webhook host",
        ),
    ] {
        let answer = validate_settings(&mut guest, settings);
        let shown = String::from_utf8_lossy(settings);
        assert_eq!(answer["valid"], false, "{shown}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(needle), "{shown}: {message}");
    }
}

#[test]
fn requests_outside_the_rules_and_broken_input() {
    let mut guest = guest();
    let review: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("02-k8s-file/review.json")).unwrap(),
    )
    .unwrap();
    // A DELETE carries no object; the policy must not try to mutate it.
    let mut delete = review.clone();
    delete["request"]["operation"] = json!("DELETE");
    let object = delete["request"].as_object_mut().unwrap().remove("object");
    delete["request"]["oldObject"] = object.unwrap();
    let (answer, response) = kubewarden_answer(&mut guest, &delete, &json!({}));
    assert!(
        answer.allowed && response["mutated_object"].is_null(),
        "{response}"
    );
    // Settings the policy refuses never reach a verdict: policy-server would answer 500.
    let bad = json!({"request": review["request"], "settings": {"secretManagerTypes": []}});
    let err = guest
        .call("validate", bad.to_string().as_bytes())
        .unwrap_err();
    assert!(err.contains("secretManagerTypes is empty"), "{err}");
    let err = guest.call("validate", b"not json").unwrap_err();
    assert!(err.contains("ValidationRequest"), "{err}");
    // The instance still answers after errors, as policy-server reuses it.
    let (answer, _) = kubewarden_answer(&mut guest, &review, &json!({}));
    assert!(answer.allowed && answer.pod.is_some());
}
