//! `secrets-webhook` for the envtest suites: the same entry point as host/src/main.rs, so the
//! replicas they start are the shipped program. (Cargo gives a package's tests the paths of its
//! own binaries only.)

fn main() -> std::process::ExitCode {
    secrets_webhook::cli::main()
}
