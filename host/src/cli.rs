//! The `secrets-webhook` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::admission::{self, Verdict};
use crate::certs::secret::{CertSecret, Trust};
use crate::cluster::registration::{self, WebhookTarget};
use crate::cluster::{Certs, controller};
use crate::config::{Config, OnError, Overrides};
use crate::global_secrets::GlobalSecrets;
use crate::policy::{self, Active, Runtime};
use crate::{certs, serve, server};

#[derive(Parser)]
#[command(
    name = "secrets-webhook",
    version,
    about = "Injects Flyte secrets into pods, with the policy in wasm."
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SECRETS_WEBHOOK_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve AdmissionReviews over HTTPS.
    Serve(Box<ServeArgs>),
    /// Run the policy on one AdmissionReview or Pod (JSON or YAML) and print the result.
    Mutate(MutateArgs),
    /// Mark a Pod (or a Deployment, Job, CronJob… pod template) as Flyte does: the opt-in label and
    /// one `flyte.secrets/s<N>` annotation per secret. Prints the result.
    Annotate(AnnotateArgs),
    /// Work with policy components.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Create or renew the certificate Secret (ca.crt, tls.crt, tls.key) for the webhook's Service.
    InitCerts(InitCertsArgs),
    /// Apply the MutatingWebhookConfiguration (server-side apply).
    Register(RegisterArgs),
    /// Delete the MutatingWebhookConfiguration.
    Unregister(ClusterArgs),
    /// Print the version and the embedded policy's digest.
    Version,
}

/// Where the webhook lives in the cluster; shared by serve, init-certs, register, unregister.
#[derive(Args, Clone)]
struct ClusterArgs {
    /// Namespace of the webhook's Service and certificate Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "secrets-webhook")]
    namespace: String,
    /// The webhook's Service; also the MutatingWebhookConfiguration's name.
    #[arg(long, default_value = "secrets-webhook")]
    service_name: String,
    /// The Secret holding ca.crt, tls.crt and tls.key.
    #[arg(long, default_value = "secrets-webhook-tls")]
    secret_name: String,
    /// Directory of ca.crt, tls.crt and tls.key [serve: where they are read, default
    /// /etc/webhook/certs, ./certs in local mode; init-certs: also write them here; register:
    /// read ca.crt from here instead of the Secret].
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Have the API server call this URL instead of the Service (a webhook outside the cluster).
    #[arg(long)]
    webhook_url: Option<String>,
}

#[derive(Args, Clone)]
struct WebhookArgs {
    /// The Service port the API server calls.
    #[arg(long, default_value_t = 443)]
    service_port: i32,
    /// What the API server does when the webhook cannot be reached (only labelled pods are sent).
    #[arg(long, value_enum, default_value_t = FailurePolicy::Fail)]
    failure_policy: FailurePolicy,
    /// How long the API server waits for an answer (1 to 30).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=30))]
    timeout_seconds: i32,
    /// cert-manager owns the certificates: `<namespace>/<Certificate>` whose CA its cainjector
    /// puts in the configuration's caBundle. The webhook then never writes a caBundle (it still
    /// reloads the serving certificate when the Secret changes).
    #[arg(long, value_name = "NAMESPACE/CERTIFICATE", value_parser = parse_namespaced_name)]
    ca_injected_from: Option<String>,
}

fn parse_namespaced_name(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!("`{text}` is not <namespace>/<name>")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FailurePolicy {
    Fail,
    Ignore,
}

#[derive(Args)]
struct InitCertsArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    certs: CertArgs,
}

/// The serving certificate's names and the lifetimes of what is issued; `serve` and
/// `init-certs` take the same, so either can renew.
#[derive(Args, Clone)]
struct CertArgs {
    /// Another DNS name for the serving certificate (repeatable).
    #[arg(long)]
    dns_name: Vec<String>,
    /// An IP address for the serving certificate (repeatable).
    #[arg(long)]
    ip_address: Vec<std::net::IpAddr>,
    /// How long a CA is valid: `365d`, `720h`, `10m`, `90s`.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    ca_validity: time::Duration,
    /// How long a serving certificate is valid.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    cert_validity: time::Duration,
    /// Renew a serving certificate this long before it expires (a CA: --cert-validity +
    /// --renew-before before it expires, so nothing it signed outlives it).
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    renew_before: time::Duration,
}

/// Who writes the certificate Secret.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CertSource {
    /// The webhook: one elected replica creates and renews it, every replica follows it.
    Managed,
    /// Someone else (cert-manager): the webhook follows the Secret and never writes it.
    External,
    /// Files in --cert-dir (a mounted Secret): followed by file events; nothing is written.
    Files,
}

#[derive(Args)]
struct RegisterArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
    /// Configuration file; its webhook.namespaceSelector narrows which namespaces are served.
    #[arg(long, env = "SECRETS_WEBHOOK_CONFIG")]
    config: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<time::Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d or 720h"))?;
    match unit {
        "d" | "" => Ok(time::Duration::days(n)),
        "h" => Ok(time::Duration::hours(n)),
        "m" => Ok(time::Duration::minutes(n)),
        "s" => Ok(time::Duration::seconds(n)),
        _ => Err(format!("{text:?}: unit must be d, h, m or s")),
    }
}

#[derive(Args)]
struct PolicyArgs {
    /// Configuration file (YAML, Flyte's `webhook:` and `secrets:` sections).
    #[arg(long, env = "SECRETS_WEBHOOK_CONFIG")]
    config: Option<PathBuf>,
    /// A policy component to run instead of the embedded one.
    #[arg(long, env = "SECRETS_WEBHOOK_POLICY")]
    policy: Option<PathBuf>,
    /// Deny (default) or admit unchanged a pod whose secrets cannot be injected.
    #[arg(long, value_enum)]
    on_error: Option<OnError>,
    /// Directory of global secrets, `<dir>/<group>/<key>` [default: /etc/secrets].
    #[arg(long)]
    global_secrets_dir: Option<PathBuf>,
    /// Wall-clock budget of one policy call, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    policy_timeout_ms: u64,
    /// Linear memory one policy instance may use, in MiB.
    #[arg(long, default_value_t = 64)]
    policy_memory_mib: usize,
    /// Where compiled policies are cached across restarts; `none` disables the cache
    /// [default: <temp dir>/secrets-webhook-cache].
    #[arg(long)]
    policy_cache_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    webhook: WebhookArgs,
    /// Do not apply the MutatingWebhookConfiguration (it is managed another way).
    #[arg(long)]
    no_register: bool,
    /// Who writes the certificate Secret; --ca-injected-from implies external.
    #[arg(long, value_enum, default_value_t = CertSource::Managed)]
    certs: CertSource,
    #[command(flatten)]
    cert_args: CertArgs,
    /// Address to listen on [default: 0.0.0.0:9443, or webhook.listenPort].
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Run without a cluster: make a CA and a localhost certificate if none, register nothing.
    /// Also chosen when no cluster is reachable.
    #[arg(long)]
    local: bool,
    /// Largest AdmissionReview accepted, in bytes [default: 3 MiB].
    #[arg(long)]
    max_body_bytes: Option<usize>,
    /// Require clients (the API server) to present a certificate signed by this CA (PEM).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// Plain-HTTP address for /metrics, /healthz and /readyz (e.g. 0.0.0.0:9090); off if unset.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Call the policy library natively instead of the wasm component: the baseline for
    /// benchmarks. No sandbox, no hot swap.
    #[arg(long, hide = true)]
    native_policy: bool,
    /// How often the policy and config files are checked, besides file events and SIGHUP.
    #[arg(long, default_value_t = 10)]
    reload_poll_seconds: u64,
    /// The memory the process keeps whatever clients send, in bytes (or 128Mi, 1Gi): connections,
    /// reviews in flight and guest instances are sized from it. The Deployment sets it from its
    /// own memory limit [default: 128Mi, the shipped Deployment's limit].
    #[arg(long, env = "SECRETS_WEBHOOK_MEMORY_BUDGET", value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Connections the admission port keeps open [default: from --memory-budget].
    #[arg(long)]
    max_connections: Option<usize>,
    /// How long a connection may stay silent before its first request, in seconds.
    #[arg(long, default_value_t = 10)]
    first_request_seconds: u64,
    /// How long a connection may stay idle between requests, in seconds (above the API server's
    /// own 90 s, so it is the one that closes an idle HTTP/1.1 connection).
    #[arg(long, default_value_t = 120)]
    idle_seconds: u64,
}

/// Bytes, as a Kubernetes quantity writes them: `134217728`, `128Mi`, `1Gi`, `512Ki`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => {
            return Err(format!(
                "`{text}`: expected bytes, or a number with Ki, Mi or Gi"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{text}` is not a size in bytes"))
}

#[derive(Args)]
struct MutateArgs {
    #[command(flatten)]
    policy: PolicyArgs,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Output::Review)]
    output: Output,
    /// An AdmissionReview or a Pod, JSON or YAML; `-` for standard input.
    file: PathBuf,
}

#[derive(Args)]
struct AnnotateArgs {
    /// A secret request: `group=G,key=K[,version=V][,mount=ANY|ENV_VAR|FILE][,env_var=E]`.
    /// Repeat for several; they become s0, s1, … in this order.
    #[arg(long = "secret", required = true, value_parser = parse_secret)]
    secrets: Vec<secrets_policy::Secret>,
    /// The object, JSON or YAML; `-` for standard input. Printed back in the same format.
    file: PathBuf,
}

fn parse_secret(spec: &str) -> Result<secrets_policy::Secret, String> {
    let mut secret = secrets_policy::Secret::default();
    for field in spec.split(',') {
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| format!("{field:?} is not name=value"))?;
        let value = value.to_owned();
        match name.trim() {
            "group" => secret.group = value,
            "key" => secret.key = value,
            "version" | "group_version" => secret.group_version = value,
            "env_var" => secret.env_var = value,
            "mount" | "mount_requirement" => {
                secret.mount_requirement = secrets_policy::MountRequirement::from_name(
                    &value.to_uppercase(),
                )
                .ok_or_else(|| format!("mount must be ANY, ENV_VAR or FILE, not {value:?}"))?;
            }
            other => {
                return Err(format!(
                    "unknown field {other:?}; expected group, key, version, mount, env_var"
                ));
            }
        }
    }
    Ok(secret)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// The AdmissionReview response.
    Review,
    /// The pod with the patch applied.
    Pod,
    /// The JSON Patch.
    Patch,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Write the embedded policy component to FILE.
    Export { file: PathBuf },
    /// Compile FILE, check its world, settings and self-check, and print its digest.
    Check {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    // Colour only for a person at a terminal, not in a log collector's files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let options = serve_options(*args)?;
            runtime.block_on(serve::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mutate(args) => mutate(args),
        Command::Annotate(args) => annotate(args),
        Command::Policy(PolicyCommand::Export { file }) => {
            std::fs::write(&file, policy::EMBEDDED)
                .with_context(|| format!("writing {}", file.display()))?;
            eprintln!(
                "wrote the embedded policy ({} bytes) to {}",
                policy::EMBEDDED.len(),
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check { file, config }) => {
            let config = Config::load(config.as_deref(), &Overrides::default())?;
            let runtime = Runtime::new(policy::Limits::default())?;
            let policy = runtime.compile(&policy::source::read(&file)?)?;
            policy::admit(&policy, &config.settings)?;
            println!(
                "ok: {} implements {} (sha256 {})",
                file.display(),
                policy::WORLD,
                policy.digest()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::InitCerts(args) => block_on(init_certs(args)),
        Command::Register(args) => block_on(register(args)),
        Command::Unregister(args) => block_on(unregister(args)),
        Command::Version => {
            let runtime = Runtime::new(policy::Limits::default())?;
            let digest = runtime.compile(policy::EMBEDDED)?.digest().to_owned();
            println!(
                "secrets-webhook {} (world {}, embedded policy sha256 {digest})",
                env!("CARGO_PKG_VERSION"),
                policy::WORLD
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The policy the flags choose.
fn policy_source(args: &PolicyArgs) -> policy::Source {
    let cache_dir = match &args.policy_cache_dir {
        Some(dir) if dir == Path::new("none") => None,
        Some(dir) => Some(dir.clone()),
        None => Some(policy::Source::default_cache_dir()),
    };
    policy::Source {
        file: args.policy.clone(),
        memory_bytes: args.policy_memory_mib << 20,
        timeout: Duration::from_millis(args.policy_timeout_ms),
        cache_dir,
    }
}

/// `serve`'s flags as options.
fn serve_options(args: ServeArgs) -> Result<serve::Options> {
    let certs = match (args.certs, &args.webhook.ca_injected_from) {
        (CertSource::Files, _) => Certs::Files,
        (CertSource::External, _) | (CertSource::Managed, Some(_)) => Certs::External,
        (CertSource::Managed, None) => Certs::Managed,
    };
    let cluster = serve::InCluster {
        certs,
        secret: cert_secret(&args.cluster, &args.cert_args)?,
        lease: format!("{}-leader", args.cluster.service_name),
        target: (!args.no_register).then(|| webhook_target(&args.cluster, &args.webhook, None)),
    };
    Ok(serve::Options {
        config: args.policy.config.clone(),
        overrides: Overrides {
            listen: args.listen,
            cert_dir: args.cluster.cert_dir.clone(),
            on_error: args.policy.on_error,
            max_body_bytes: args.max_body_bytes,
            global_secrets_dir: args.policy.global_secrets_dir.clone(),
            local: args.local,
        },
        policy: policy_source(&args.policy),
        native_policy: args.native_policy,
        client_ca: args.client_ca,
        metrics_listen: args.metrics_listen,
        reload_poll: Duration::from_secs(args.reload_poll_seconds.max(1)),
        memory_budget: args.memory_budget.unwrap_or(server::budget::DEFAULT_BUDGET),
        max_connections: args.max_connections,
        first_request: Duration::from_secs(args.first_request_seconds.max(1)),
        idle: Duration::from_secs(args.idle_seconds.max(1)),
        timeout_seconds: args.webhook.timeout_seconds as u32,
        cluster,
    })
}

fn block_on(future: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn webhook_target(
    cluster: &ClusterArgs,
    webhook: &WebhookArgs,
    namespace_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> WebhookTarget {
    WebhookTarget {
        name: cluster.service_name.clone(),
        namespace: cluster.namespace.clone(),
        service_name: cluster.service_name.clone(),
        service_port: webhook.service_port,
        url: cluster.webhook_url.clone(),
        failure_policy: match webhook.failure_policy {
            FailurePolicy::Fail => "Fail",
            FailurePolicy::Ignore => "Ignore",
        }
        .to_owned(),
        timeout_seconds: webhook.timeout_seconds,
        namespace_selector,
        ca_injected_from: webhook.ca_injected_from.clone(),
    }
}

/// The host part of `--webhook-url`, which the serving certificate must name.
fn url_host(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(
        uri.host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

/// The certificate Secret as `serve` and `init-certs` see it.
fn cert_secret(cluster: &ClusterArgs, certs: &CertArgs) -> Result<CertSecret> {
    let mut extra: Vec<String> = certs.dns_name.clone();
    extra.extend(certs.ip_address.iter().map(ToString::to_string));
    extra.extend(cluster.webhook_url.as_deref().and_then(url_host));
    let lifetimes = certs::Lifetimes {
        ca: certs.ca_validity,
        serving: certs.cert_validity,
        renew_before: certs.renew_before,
    };
    lifetimes.check()?;
    Ok(CertSecret {
        namespace: cluster.namespace.clone(),
        name: cluster.secret_name.clone(),
        names: certs::service_names(&cluster.service_name, &cluster.namespace, &extra),
        lifetimes,
        identity: controller::identity(),
    })
}

async fn init_certs(args: InitCertsArgs) -> Result<ExitCode> {
    let spec = cert_secret(&args.cluster, &args.certs)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    // A new CA may sign once the webhook configuration trusts it; a Job that may not read the
    // configuration leaves that step to `serve`.
    let trusted = registration::observe(client.clone(), &args.cluster.service_name)
        .await
        .ok()
        .flatten()
        .as_ref()
        .and_then(registration::ca_bundle_of);
    let trust = trusted.as_deref().map_or(Trust::Never, Trust::Bundle);
    let api = kube::Api::namespaced(client, &spec.namespace);
    let outcome = crate::certs::secret::reconcile(&api, &spec, trust).await?;
    for change in &outcome.changes {
        tracing::info!(secret = spec.name, namespace = spec.namespace, change = %change, "certificate Secret changed");
    }
    if outcome.changes.is_empty() {
        tracing::info!(
            secret = spec.name,
            namespace = spec.namespace,
            "certificate Secret is valid; kept"
        );
    }
    if let Some(waiting) = &outcome.waiting {
        tracing::info!(
            waiting,
            "serve finishes the rotation once the webhook configuration trusts the new CA"
        );
    }
    if let Some(dir) = &args.cluster.cert_dir {
        certs::write_dir(dir, &outcome.bundle)?;
        tracing::info!(dir = %dir.display(), "certificate files written");
    }
    Ok(ExitCode::SUCCESS)
}

async fn register(args: RegisterArgs) -> Result<ExitCode> {
    let config = Config::load(args.config.as_deref(), &Overrides::default())?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let ca = match &args.cluster.cert_dir {
        Some(dir) => std::fs::read(dir.join(certs::CA_FILE))
            .with_context(|| format!("reading {}/ca.crt", dir.display()))?,
        None => {
            let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
                kube::Api::namespaced(client.clone(), &args.cluster.namespace);
            let secret = secrets
                .get(&args.cluster.secret_name)
                .await
                .with_context(|| {
                    format!(
                        "reading Secret {}/{} (run init-certs first)",
                        args.cluster.namespace, args.cluster.secret_name
                    )
                })?;
            secret
                .data
                .and_then(|mut data| data.remove(certs::CA_FILE))
                .map(|bytes| bytes.0)
                .context("the certificate Secret has no ca.crt")?
        }
    };
    let target = webhook_target(&args.cluster, &args.webhook, config.namespace_selector);
    registration::register(client, &target, Some(&ca)).await?;
    tracing::info!(name = target.name, "MutatingWebhookConfiguration applied");
    Ok(ExitCode::SUCCESS)
}

async fn unregister(args: ClusterArgs) -> Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    if registration::unregister(client, &args.service_name).await? {
        tracing::info!(
            name = args.service_name,
            "MutatingWebhookConfiguration deleted"
        );
    } else {
        tracing::info!(
            name = args.service_name,
            "no MutatingWebhookConfiguration to delete"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        Ok(std::io::read_to_string(std::io::stdin())?)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

fn annotate(args: AnnotateArgs) -> Result<ExitCode> {
    let text = read_input(&args.file)?;
    let mut object: Value =
        serde_yaml::from_str(&text).context("the input is neither JSON nor YAML")?;
    secrets_policy::annotations::annotate_object(&mut object, &args.secrets)
        .map_err(anyhow::Error::msg)?;
    if text.trim_start().starts_with('{') {
        println!("{}", serde_json::to_string_pretty(&object)?);
    } else {
        print!("{}", serde_yaml::to_string(&object)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn mutate(args: MutateArgs) -> Result<ExitCode> {
    let overrides = Overrides {
        on_error: args.policy.on_error,
        global_secrets_dir: args.policy.global_secrets_dir.clone(),
        ..Overrides::default()
    };
    let config = Config::load(args.policy.config.as_deref(), &overrides)?;
    let text = read_input(&args.file)?;
    let input: Value = serde_yaml::from_str(&text).context("the input is neither JSON nor YAML")?;
    let review = match input.get("kind").and_then(Value::as_str) {
        Some("AdmissionReview") => input,
        Some("Pod") => wrap_pod(input),
        other => bail!(
            "expected an AdmissionReview or a Pod, got kind {}",
            other.unwrap_or("(none)")
        ),
    };
    let object = review
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    // Offline: no store, so the Embedded manager refuses every secret it is asked for.
    let source = policy_source(&args.policy);
    let runtime = source.runtime(policy::Limits::default().max_concurrent)?;
    let globals = GlobalSecrets::load(&config.global_secrets).context("reading global secrets")?;
    let active = Active::new(source.compile(&runtime)?, &config.settings, globals)?;
    let reply = policy::block_on(admission::review(
        &serde_json::to_vec(&review)?,
        &active,
        config.on_error,
        &policy::Call::unbounded(),
    ));
    let response: Value = serde_json::from_slice(&reply.body)?;
    let refused = matches!(
        reply.verdict,
        Verdict::Denied | Verdict::Failed | Verdict::Invalid
    ) && response["response"]["allowed"] == false;
    if refused {
        eprintln!(
            "denied: {}",
            response["response"]["status"]["message"]
                .as_str()
                .unwrap_or("")
        );
    }
    for injection in &reply.injections {
        eprintln!(
            "injected {}/{} ({})",
            injection.group, injection.key, injection.manager
        );
    }
    let patch: Value = match response["response"]["patch"].as_str() {
        Some(encoded) => {
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(encoded)?)?
        }
        None => json!([]),
    };
    let printed = match args.output {
        Output::Review => response,
        Output::Patch => patch,
        Output::Pod => {
            let mut pod = object;
            json_patch::patch(
                &mut pod,
                &serde_json::from_value::<json_patch::Patch>(patch)?,
            )
            .context("applying the policy's patch")?;
            pod
        }
    };
    println!("{}", serde_json::to_string_pretty(&printed)?);
    Ok(if refused {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// An AdmissionReview for creating `pod`, as the API server would send it.
fn wrap_pod(pod: Value) -> Value {
    let namespace = pod
        .pointer("/metadata/namespace")
        .cloned()
        .unwrap_or(json!("default"));
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "secrets-webhook-mutate",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "dryRun": true,
            "object": pod,
        }
    })
}
