//! The third-party programs some tests run (`../shared/tools`: kube-apiserver, etcd, kwctl,
//! policy-server), found through the variables `eval "$(../shared/tools/unpack target/tools)"`
//! sets. A test without its program says so on the terminal, past the test harness's capture,
//! and under CI (`CI` set) fails instead: CI unpacks them, so a missing one is a broken CI.

use std::io::Write as _;
use std::path::PathBuf;

/// The program named by `variable`, or `None` after saying loudly that `test` is skipped.
pub fn find(variable: &str, test: &str) -> Option<PathBuf> {
    find_or(
        variable,
        test,
        "eval \"$(../shared/tools/unpack target/tools)\"",
    )
}

/// [`find`] for a program set up by `how` (said when it is missing).
pub fn find_or(variable: &str, test: &str, how: &str) -> Option<PathBuf> {
    match std::env::var_os(variable).map(PathBuf::from) {
        Some(path) if path.is_file() => Some(path),
        found => {
            let why = match found {
                Some(path) => format!("{variable}={} is not a file", path.display()),
                None => format!("{variable} is not set"),
            };
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}; .ci/run sets it up ({how}) and must export it");
            }
            // Straight to the terminal: the harness captures print! and eprint! only.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {why} ({how}) ***\n"
            );
            None
        }
    }
}

/// Program `name` from the PATH (kubectl comes with the machine image), or `None` after saying
/// loudly that `test` is skipped.
pub fn on_path(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let why = format!("{name} is not on the PATH");
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {why}; CI's machine image has it");
        }
        let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {test}: {why} ***\n");
    }
    found
}
