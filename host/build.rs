//! Builds the default policy (`guest/component`) for wasm32-wasip2 so the binary can embed it, and
//! the policies the tests need: the hostile one (`guest/hostile`) and the example
//! (`examples/annotating-policy`). One cargo invocation builds all three in parallel.
//!
//! A second invocation builds the Kubewarden policy (`guest/kubewarden`) for wasm32-wasip1: waPC
//! hosts load core modules, not components, so it needs the other target. It comes out annotated
//! (its metadata is compiled in), so it is copied as is, for `tests/it/kubewarden.rs`.
//!
//! The guest gets its own target directory: the outer build holds the lock on the usual one.
//! Variables cargo sets for build scripts (and clippy's wrapper) are cleared so the inner build is
//! an ordinary release build for the wasm target.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const COMPONENT_TARGET: &str = "wasm32-wasip2";
/// Package → file name in OUT_DIR.
const POLICIES: [(&str, &str); 3] = [
    ("secrets-policy-component", "mutation.wasm"),
    ("secrets-policy-hostile", "hostile.wasm"),
    ("annotating-policy", "annotating.wasm"),
];

/// The target Kubewarden's Rust policies are built for (its policy template's choice).
const KUBEWARDEN_TARGET: &str = "wasm32-wasip1";
/// Package → file name in OUT_DIR.
const KUBEWARDEN_POLICY: (&str, &str) = ("secrets-policy-kubewarden", "kubewarden.wasm");

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ is inside the workspace");
    for watched in ["guest", "wit", "examples", "Cargo.lock", "Cargo.toml"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; share one guest build across profiles.
    let target_root = out_dir.ancestors().nth(4).unwrap_or(&out_dir).to_path_buf();
    let guest_target = target_root.join("wasm-guest");

    let components: Vec<&str> = POLICIES.iter().map(|(package, _)| *package).collect();
    build_guests(workspace, &guest_target, COMPONENT_TARGET, &components);
    build_guests(
        workspace,
        &guest_target,
        KUBEWARDEN_TARGET,
        &[KUBEWARDEN_POLICY.0],
    );

    for (target, (package, file)) in POLICIES
        .iter()
        .map(|policy| (COMPONENT_TARGET, *policy))
        .chain([(KUBEWARDEN_TARGET, KUBEWARDEN_POLICY)])
    {
        let built = guest_target
            .join(target)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        let copied = out_dir.join(file);
        std::fs::copy(&built, &copied)
            .unwrap_or_else(|err| panic!("copy {}: {err}", built.display()));
    }
    println!(
        "cargo:rustc-env=SECRETS_WEBHOOK_EMBEDDED_POLICY={}",
        out_dir.join("mutation.wasm").display()
    );
    println!(
        "cargo:rustc-env=SECRETS_WEBHOOK_POLICY_DIR={}",
        out_dir.display()
    );
}

/// One release build of `packages` for `target`, as a plain `cargo build` from the workspace would
/// do it, outside the outer build's environment.
fn build_guests(workspace: &Path, guest_target: &Path, target: &str, packages: &[&str]) {
    ensure_target_installed(target);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args(["build", "--release", "--target", target])
        .args(packages.iter().flat_map(|package| ["-p", package]))
        .arg("--target-dir")
        .arg(guest_target);
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        let outer =
            (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_NET_OFFLINE")
                || name.starts_with("RUSTC_")
                || matches!(
                    name.as_ref(),
                    "RUSTFLAGS"
                        | "RUSTDOCFLAGS"
                        | "TARGET"
                        | "HOST"
                        | "OUT_DIR"
                        | "PROFILE"
                        | "OPT_LEVEL"
                        | "DEBUG"
                        | "NUM_JOBS"
                );
        if outer {
            command.env_remove(name.as_ref());
        }
    }
    let status = command
        .status()
        .expect("cargo can be run from a build script");
    assert!(
        status.success(),
        "building the guest policies {packages:?} for {target} failed"
    );
}

/// A fresh machine has the toolchain from rust-toolchain.toml but may lack its wasm target when the
/// toolchain was installed earlier without it; add it rather than fail with a confusing error.
fn ensure_target_installed(target: &str) {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc).args(["--print", "sysroot"]).output();
    let Ok(output) = sysroot else { return };
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .exists()
    {
        return;
    }
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", target]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    match rustup.status() {
        Ok(status) if status.success() => {}
        _ => println!(
            "cargo:warning=could not add the {target} target; run `rustup target add {target}`"
        ),
    }
}
