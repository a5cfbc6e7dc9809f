//! Flyte 2's Embedded manager against a real kube-apiserver + etcd (envtest). The scope
//! authority against tenants and a stolen token is in [`trust`]; slow stores and invalidation
//! bursts in [`limits`].
//!
//! - Every Embedded fixture (`fixtures/` folders with a `sources.json`) through a `serve`
//!   process over TLS, its sources written as Flyte 2's secret service writes them: Plaintext
//!   pods byte for byte as Flyte 2's, Mirror pods, denials.
//! - Mirror mode end to end: the webhook runs as its ServiceAccount with deploy/'s RBAC and the
//!   mirror-only ValidatingAdmissionPolicy, and pods are created through the API server.

mod limits;
mod trust;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use secrets_webhook::secrets::scope::{Scope, k8s_secret_name, mirror_name};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::common;
use crate::common::fixture::{
    Fixture, check, check_injected, counted_since, injections, load_fixtures,
};
use crate::envtest::ApiServer;
use crate::replica::{NAMESPACE, Replica, SERVICE_ACCOUNT, balance, impersonating, install_rbac};

/// What a replica logs when it leaves a source change to the elected one.
const LEFT: &str = "not elected: the elected replica follows this source";

/// Flyte 2's source namespace (`k8sConfig.namespace`) and a task namespace.
const SOURCE: &str = "flyte";
const TASKS: &str = "flytesnacks-development";

/// A source Secret as Flyte 2's secret service writes it: named by the md5 of the id, the value
/// under the id.
fn source(id: &str, value: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(k8s_secret_name(id)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            id.to_owned(),
            ByteString(value.to_vec()),
        )])),
        ..Secret::default()
    }
}

async fn write_sources(client: &kube::Client, namespace: &str, sources: &BTreeMap<String, String>) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for (id, value) in sources {
        api.create(&PostParams::default(), &source(id, value.as_bytes()))
            .await
            .unwrap();
    }
}

/// Deletes every Secret in `namespace`.
async fn clear_secrets(client: &kube::Client, namespace: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
}

/// The fixture's pull Secrets the expected pod lists are copied into the task namespace (same
/// type and data, their labels and the mirror label); the others are not. A pod in the source
/// namespace refers to the sources themselves: they stay as they were.
async fn check_pull_copies(client: &kube::Client, fixture: &Fixture) -> Result<(), String> {
    if fixture.review["request"]["namespace"] == SOURCE {
        let sources: Api<Secret> = Api::namespaced(client.clone(), SOURCE);
        for pull in &fixture.pull_secrets {
            let name = pull.metadata.name.as_deref().unwrap();
            let now = sources.get(name).await.map_err(|err| err.to_string())?;
            if (&now.metadata.labels, &now.type_, &now.data)
                != (&pull.metadata.labels, &pull.type_, &pull.data)
            {
                return Err(format!("source pull Secret {name} was written"));
            }
        }
        return Ok(());
    }
    let listed = &fixture.expected["pod"]["spec"]["imagePullSecrets"];
    let listed: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|reference| reference["name"].as_str())
        .collect();
    let tasks: Api<Secret> = Api::namespaced(client.clone(), TASKS);
    for pull in &fixture.pull_secrets {
        let name = pull.metadata.name.as_deref().unwrap();
        let copy = tasks.get_opt(name).await.map_err(|err| err.to_string())?;
        let copy = match (listed.contains(&name), copy) {
            (true, Some(copy)) => copy,
            (false, None) => continue,
            (true, None) => return Err(format!("listed pull Secret {name} was not copied")),
            (false, Some(_)) => return Err(format!("unlisted pull Secret {name} was copied")),
        };
        let labels = copy.metadata.labels.unwrap_or_default();
        let mut wanted = pull.metadata.labels.clone().unwrap_or_default();
        wanted.insert("secrets-webhook.flyte.org/mirror".into(), "true".into());
        if let Some((key, value)) = wanted
            .iter()
            .find(|(key, value)| labels.get(*key) != Some(value))
        {
            return Err(format!(
                "pull Secret {name} copied without label {key}={value}"
            ));
        }
        if (&copy.type_, &copy.data) != (&pull.type_, &pull.data) {
            return Err(format!(
                "pull Secret {name} copied with another type or data"
            ));
        }
    }
    Ok(())
}

/// The fixture's configuration with its own source namespace.
fn config_for(fixture: &Fixture, source: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture.config.as_ref().unwrap()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let webhook = &mut config["webhook"];
    if webhook.get("embeddedSecretManagerConfig").is_none() {
        webhook["embeddedSecretManagerConfig"] = serde_yaml::Mapping::new().into();
    }
    webhook["embeddedSecretManagerConfig"]["k8sConfig"] =
        serde_yaml::from_str(&format!("{{namespace: {source}}}")).unwrap();
    let path = dir.join(format!("{}.yaml", fixture.name));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_fixtures_through_the_server() {
    let fixtures: Vec<Fixture> = load_fixtures()
        .into_iter()
        .filter(|fixture| fixture.sources.is_some())
        .collect();
    assert!(fixtures.len() >= 15, "{} Embedded fixtures", fixtures.len());
    let Some(api) = ApiServer::start("embedded_fixtures_through_the_server").await else {
        return;
    };
    let client = api.client();
    // The fixtures' pods are in TASKS, whose namespace names its organization, or in Flyte 2's
    // one namespace, which is also their source.
    api.create_namespace(TASKS, &[("organization", "acme")])
        .await;
    api.create_namespace(SOURCE, &[]).await;
    let mut failures = Vec::new();
    for (index, fixture) in fixtures.iter().enumerate() {
        // A source namespace per fixture: each sees exactly its own sources.
        let source = match fixture.review["request"]["namespace"].as_str() {
            Some(SOURCE) => {
                clear_secrets(&client, SOURCE).await;
                SOURCE.to_owned()
            }
            _ => {
                let source = format!("source-{index}");
                api.create_namespace(&source, &[]).await;
                source
            }
        };
        write_sources(&client, &source, fixture.sources.as_ref().unwrap()).await;
        let sources: Api<Secret> = Api::namespaced(client.clone(), &source);
        for pull in &fixture.pull_secrets {
            sources.create(&PostParams::default(), pull).await.unwrap();
        }
        let config = config_for(fixture, &source, api.dir());
        let certs = api.dir().join(format!("certs-{index}"));
        let globals = common::fixtures().join("global-secrets");
        let replica = Replica::start(
            api.dir(),
            api.kubeconfig(),
            "https://unused.invalid/mutate",
            &fixture.name,
            &[
                "--local",
                "--config",
                config.to_str().unwrap(),
                "--cert-dir",
                certs.to_str().unwrap(),
                "--global-secrets-dir",
                globals.to_str().unwrap(),
            ],
        )
        .await;
        let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
        let mut https = common::client_to(([127, 0, 0, 1], replica.port).into(), &ca).await;
        let before = injections(&replica.metrics().await);
        let body = serde_json::to_vec(&fixture.review).unwrap();
        let (status, response) = https.post("/mutate", body).await;
        if status != 200 {
            failures.push(format!("{}: HTTP {status}: {response}", fixture.name));
        } else if let Err(why) = check(fixture, &response) {
            failures.push(format!("{}: {why}\n{}", fixture.name, replica.log()));
        } else if let Err(why) = check_pull_copies(&client, fixture).await {
            failures.push(format!("{}: {why}", fixture.name));
        }
        let counted = counted_since(&before, &injections(&replica.metrics().await));
        if let Err(why) = check_injected(fixture, "the metric counted", &counted) {
            failures.push(why);
        }
    }
    assert!(
        failures.is_empty(),
        "{} Embedded fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A cluster with Flyte 2's source namespace, a task namespace, the webhook's RBAC and mirror
/// policy, and one replica running as the webhook's ServiceAccount in Mirror mode.
struct Flyte2 {
    api: ApiServer,
    replica: Replica,
    /// How the replica was started: the webhook's kubeconfig, the registered URL, the config.
    kubeconfig: PathBuf,
    url: String,
    config: PathBuf,
}

impl Flyte2 {
    async fn start(test: &str) -> Option<Flyte2> {
        Self::start_with(test, ("", "")).await
    }

    /// With Flyte 2's invalidation port open, on the port returned.
    async fn start_with_invalidation(test: &str) -> Option<(Flyte2, u16)> {
        let port = common::free_port();
        let open = format!("cacheInvalidationPort: {port}");
        let flyte = Self::start_with(test, ("cacheInvalidationPort: 0", &open)).await?;
        Some((flyte, port))
    }

    /// `edit` is a replacement in deploy/'s config (from, to); it must apply.
    async fn start_with(test: &str, edit: (&str, &str)) -> Option<Flyte2> {
        let config = common::workspace().join("deploy/components/embedded/config.yaml");
        let text = std::fs::read_to_string(config)
            .unwrap()
            .replace("cacheInvalidationPort: 9444", "cacheInvalidationPort: 0");
        assert!(
            text.contains(edit.0),
            "deploy/'s config has no {:?}",
            edit.0
        );
        Self::start_config(test, &text.replace(edit.0, edit.1)).await
    }

    /// Flyte2 with the configuration file `text`.
    async fn start_config(test: &str, text: &str) -> Option<Flyte2> {
        let api = ApiServer::start(test).await?;
        api.create_namespace(NAMESPACE, &[]).await;
        api.create_namespace(SOURCE, &[]).await;
        api.create_namespace(TASKS, &[("organization", "acme")])
            .await;
        let client = api.client();
        install_rbac(
            &client,
            &[
                "deploy/base/serviceaccount.yaml",
                "deploy/base/rbac.yaml",
                "deploy/base/identity-policy.yaml",
                "deploy/components/embedded/rbac.yaml",
                "deploy/components/embedded/mirror-policy.yaml",
            ],
        )
        .await;
        let as_webhook = impersonating(&api, SERVICE_ACCOUNT);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/mutate",
            listener.local_addr().unwrap().port()
        );
        let backends = Arc::new(std::sync::Mutex::new(Vec::new()));
        tokio::spawn(balance(listener, backends.clone()));
        let config = api.dir().join("embedded.yaml");
        std::fs::write(&config, text).unwrap();
        let replica = Replica::start(
            api.dir(),
            &as_webhook,
            &url,
            "webhook",
            &["--config", config.to_str().unwrap()],
        )
        .await;
        backends.lock().unwrap().push(replica.port);
        replica.wait_ready().await;
        Some(Flyte2 {
            api,
            replica,
            kubeconfig: as_webhook,
            url,
            config,
        })
    }

    fn client(&self) -> kube::Client {
        self.api.client()
    }

    async fn set_source(&self, id: &str, value: Option<&str>) {
        let api: Api<Secret> = Api::namespaced(self.client(), SOURCE);
        let name = k8s_secret_name(id);
        match value {
            Some(value) => {
                let secret = source(id, value.as_bytes());
                api.patch(
                    &name,
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(&secret),
                )
                .await
                .unwrap();
            }
            None => {
                api.delete(&name, &DeleteParams::default()).await.unwrap();
            }
        }
    }

    async fn mirror(&self, id: &str) -> Option<Secret> {
        let api: Api<Secret> = Api::namespaced(self.client(), TASKS);
        api.get_opt(&mirror_name(id)).await.unwrap()
    }

    /// What the mirror of `id` holds, if there is one.
    async fn mirror_value(&self, id: &str) -> Option<String> {
        let secret = self.mirror(id).await?;
        let value = secret.data?.get("value")?.0.clone();
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// Waits until the mirror of `id` holds `value` (`None`: until it is gone).
    async fn wait_for_mirror(&self, id: &str, value: Option<&str>) -> Duration {
        let started = Instant::now();
        loop {
            let held = self.mirror_value(id).await;
            if held.as_deref() == value {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "mirror of {id} holds {held:?}, not {value:?}\n{}",
                self.replica.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a task pod asking for `annotations`' secrets, with `labels`; dry-run when asked.
    async fn create_pod(
        &self,
        name: &str,
        labels: Value,
        annotations: Value,
        dry_run: bool,
    ) -> Result<Pod, String> {
        let pods = Api::namespaced(self.client(), TASKS);
        create_task_pod(&pods, name, labels, annotations, dry_run).await
    }
}

/// Creates a task pod through `pods` asking for `annotations`' secrets, with `labels`.
async fn create_task_pod(
    pods: &Api<Pod>,
    name: &str,
    labels: Value,
    annotations: Value,
    dry_run: bool,
) -> Result<Pod, String> {
    let mut all_labels = json!({"inject-flyte-secrets": "true"});
    for (key, value) in labels.as_object().unwrap() {
        all_labels[key] = value.clone();
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": all_labels, "annotations": annotations},
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}]}
    }))
    .unwrap();
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    pods.create(&params, &pod)
        .await
        .map_err(|err| err.to_string())
}

/// A client acting as `user` (impersonated by the admin: RBAC and admission see `user`).
async fn client_as(api: &ApiServer, user: &str) -> kube::Client {
    let kubeconfig = impersonating(api, user);
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn scope() -> Scope {
    Scope {
        org: "acme".into(),
        domain: "development".into(),
        project: "flytesnacks".into(),
    }
}

fn scope_labels() -> Value {
    json!({"organization": "acme", "project": "flytesnacks", "domain": "development"})
}

/// `flyte.secrets/s<N>` annotations asking for `keys` (ENV_VAR; FILE for names ending in
/// `.pem`), encoded as Flyte does.
fn requests(keys: &[&str]) -> Value {
    let secrets: Vec<secrets_policy::Secret> = keys
        .iter()
        .map(|key| secrets_policy::Secret {
            key: (*key).to_owned(),
            mount_requirement: if key.ends_with(".pem") {
                secrets_policy::MountRequirement::File
            } else {
                secrets_policy::MountRequirement::EnvVar
            },
            ..secrets_policy::Secret::default()
        })
        .collect();
    let pairs = secrets_policy::annotations::encode_requests(&secrets).unwrap();
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

/// The Secret the env var `name` of the pod's container refers to.
fn env_secret(pod: &Pod, name: &str) -> Option<String> {
    let env = pod.spec.as_ref()?.containers[0].env.as_ref()?;
    let var = env.iter().find(|var| var.name == name)?;
    Some(
        var.value_from
            .as_ref()?
            .secret_key_ref
            .as_ref()?
            .name
            .clone(),
    )
}

/// Waits until the API server calls the webhook for new pods (it reads the configuration a
/// moment after the webhook registers it).
async fn wait_until_injecting(flyte: &Flyte2) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pod = flyte
            .create_pod("probe", scope_labels(), requests(&["db"]), true)
            .await;
        if let Ok(pod) = &pod
            && env_secret(pod, "_UNION_DB").is_some()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pods are not mutated: {pod:?}\n{}",
            flyte.replica.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Flyte 2's `imagePullSecrets.enabled` through the API server: the pull Secret of the scope a
/// secret was found in is copied into the pod's namespace and listed in the stored pod, never on
/// a dry run; a scope without one adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_secrets_through_the_api_server() {
    let test = "image_pull_secrets_through_the_api_server";
    let pulls = (
        "imagePullSecrets:\n      enabled: false",
        "imagePullSecrets:\n      enabled: true",
    );
    let Some(flyte) = Flyte2::start_with(test, pulls).await else {
        return;
    };
    let org = &scope().cascade()[2];
    flyte.set_source(&org.secret_id("db"), Some("org db")).await;
    flyte
        .set_source(&org.secret_id("token"), Some("org token"))
        .await;
    // Flyte 2's name for the organization's `db`: img-pull- + sha256("acme:::db")[:16]
    // (Python's hashlib).
    let name = "img-pull-fd8e0493cabaee00";
    let config = br#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"}}}"#;
    let pull: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"union.ai/secret-type": "image-pull-secret"}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)},
    }))
    .unwrap();
    let sources: Api<Secret> = Api::namespaced(flyte.client(), SOURCE);
    sources.create(&PostParams::default(), &pull).await.unwrap();
    // The replica follows the source namespace: wait until it sees the pull Secret.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = flyte
            .create_pod("probe", scope_labels(), requests(&["db"]), true)
            .await;
        let listed = probe
            .as_ref()
            .ok()
            .and_then(|pod| pod.spec.as_ref()?.image_pull_secrets.clone());
        if listed.is_some_and(|list| list.iter().any(|r| r.name == name)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{probe:?}\n{}",
            flyte.replica.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let copies: Api<Secret> = Api::namespaced(flyte.client(), TASKS);
    assert!(
        copies.get_opt(name).await.unwrap().is_none(),
        "dry runs copy nothing"
    );

    let pod = flyte
        .create_pod("task", scope_labels(), requests(&["db"]), false)
        .await
        .unwrap();
    let listed: Vec<String> = pod
        .spec
        .unwrap()
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, [name]);
    let copy = copies.get(name).await.unwrap();
    assert_eq!(
        copy.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    assert_eq!(copy.data.unwrap()[".dockerconfigjson"].0, config);
    let labels = copy.metadata.labels.unwrap();
    assert_eq!(labels["secrets-webhook.flyte.org/mirror"], "true");
    assert_eq!(labels["union.ai/secret-type"], "image-pull-secret");

    // `token` has no pull Secret in its scope: the pod lists none.
    let pod = flyte
        .create_pod("other", scope_labels(), requests(&["token"]), false)
        .await
        .unwrap();
    assert_eq!(pod.spec.unwrap().image_pull_secrets, None);
}

/// Two replicas, the first elected (it registered the webhook), and a pod whose mirror of
/// source `id` holds "first". The second logs at debug level what it leaves to the elected one.
async fn two_replicas(test: &str) -> Option<(Flyte2, Replica, String)> {
    let flyte = Flyte2::start(test).await?;
    let id = scope().cascade()[2].secret_id("db");
    flyte.set_source(&id, Some("first")).await;
    wait_until_injecting(&flyte).await;
    let second = Replica::start_with_env(
        flyte.api.dir(),
        &flyte.kubeconfig,
        &flyte.url,
        "second",
        &["--config", flyte.config.to_str().unwrap()],
        &[("RUST_LOG", "info,secrets_webhook::secrets::follow=debug")],
    )
    .await;
    second.wait_ready().await;
    flyte
        .create_pod("task", scope_labels(), requests(&["db"]), false)
        .await
        .unwrap();
    flyte.wait_for_mirror(&id, Some("first")).await;
    Some((flyte, second, id))
}

/// With two replicas, a changed source is followed by the elected one only: each following
/// replica would patch every namespace's mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_elected_replica_follows_sources() {
    let Some((flyte, second, id)) = two_replicas("only_the_elected_replica_follows_sources").await
    else {
        return;
    };

    flyte.set_source(&id, Some("second")).await;
    flyte.wait_for_mirror(&id, Some("second")).await;
    second.wait_for_log(LEFT, Duration::from_secs(10)).await;
    flyte
        .replica
        .wait_for_log("mirrors follow their source", Duration::from_secs(10))
        .await;
    assert!(
        !second.log().contains("mirrors follow their source"),
        "{}",
        second.log()
    );
}

/// A change the elected replica saw but never followed (it froze) is followed by the replica
/// elected next, which had left it to the frozen one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_elected_replica_follows_what_it_left() {
    let Some((flyte, second, id)) =
        two_replicas("the_next_elected_replica_follows_what_it_left").await
    else {
        return;
    };

    // The elected replica keeps its Lease, frozen, until the Lease runs out.
    flyte.replica.freeze();
    flyte.set_source(&id, Some("second")).await;
    second.wait_for_log(LEFT, Duration::from_secs(10)).await;
    assert_eq!(
        flyte.mirror_value(&id).await.as_deref(),
        Some("first"),
        "no one followed the change yet"
    );
    second
        .wait_for_log(
            "elected: following the source changes left to the previous leader",
            Duration::from_secs(60),
        )
        .await;
    flyte.wait_for_mirror(&id, Some("second")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_mode_through_the_api_server() {
    let Some(flyte) = Flyte2::start("mirror_mode_through_the_api_server").await else {
        return;
    };
    let [project, _, org] = scope().cascade();
    let db_project = project.secret_id("db");
    let db_org = org.secret_id("db");
    flyte.set_source(&db_org, Some("org value")).await;
    flyte.set_source(&db_project, Some("project value")).await;
    flyte
        .set_source(
            &org.secret_id("ca.pem"),
            Some("-----BEGIN CERTIFICATE-----"),
        )
        .await;
    wait_until_injecting(&flyte).await;
    // The probes were dry runs: nothing was written for them.
    assert!(
        flyte.mirror(&db_project).await.is_none(),
        "a dry run wrote a mirror"
    );

    // Stored pods hold no value; they refer to mirrors of the narrowest scope.
    let pod = flyte
        .create_pod("task-1", scope_labels(), requests(&["db", "ca.pem"]), false)
        .await
        .unwrap();
    let stored = serde_json::to_string(&pod).unwrap();
    assert!(
        !stored.contains("project value") && !stored.contains("BEGIN CERTIFICATE"),
        "{stored}"
    );
    assert_eq!(
        env_secret(&pod, "_UNION_DB").as_deref(),
        Some(mirror_name(&db_project).as_str())
    );
    let volume = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap().iter();
    let projected: Vec<String> = volume
        .filter_map(|v| v.projected.as_ref()?.sources.clone())
        .flatten()
        .filter_map(|source| Some(source.secret?.name))
        .collect();
    assert_eq!(projected, [mirror_name(&org.secret_id("ca.pem"))]);
    flyte
        .wait_for_mirror(&db_project, Some("project value"))
        .await;
    let mirror = flyte.mirror(&db_project).await.unwrap();
    let labels = mirror.metadata.labels.unwrap();
    assert_eq!(labels["secrets-webhook.flyte.org/mirror"], "true");

    // A changed source reaches the mirror, so the next pod (and this one's files) read it.
    flyte.set_source(&db_project, Some("rotated")).await;
    let followed_in = flyte.wait_for_mirror(&db_project, Some("rotated")).await;
    let pod = flyte
        .create_pod("task-2", scope_labels(), requests(&["db"]), false)
        .await
        .unwrap();
    assert_eq!(
        env_secret(&pod, "_UNION_DB").as_deref(),
        Some(mirror_name(&db_project).as_str())
    );

    // A deleted project-scope source takes its mirror with it; new pods fall back to the org.
    flyte.set_source(&db_project, None).await;
    flyte.wait_for_mirror(&db_project, None).await;
    // The webhook's store sees the deletion through its watch: retry until it does.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pod = loop {
        let pod = flyte
            .create_pod("task-3", scope_labels(), requests(&["db"]), false)
            .await
            .unwrap();
        if env_secret(&pod, "_UNION_DB") == Some(mirror_name(&db_org)) {
            break pod;
        }
        Api::<Pod>::namespaced(flyte.client(), TASKS)
            .delete("task-3", &DeleteParams::default())
            .await
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "still {:?}",
            env_secret(&pod, "_UNION_DB")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(pod);
    flyte.wait_for_mirror(&db_org, Some("org value")).await;

    // Refusals name what is wrong.
    let no_org = json!({"project": "flytesnacks", "domain": "development"});
    let err = flyte
        .create_pod("no-org", no_org, requests(&["db"]), false)
        .await
        .unwrap_err();
    assert!(
        err.contains("empty organization field in the pod labels"),
        "{err}"
    );
    let err = flyte
        .create_pod("absent", scope_labels(), requests(&["absent"]), false)
        .await
        .unwrap_err();
    assert!(
        err.contains("\"absent\" not found across all scopes"),
        "{err}"
    );
    let forged = json!({"organization": "acme", "project": "payroll", "domain": "development"});
    let err = flyte
        .create_pod("forged", forged, requests(&["db"]), false)
        .await
        .unwrap_err();
    assert!(err.contains("payroll-development"), "{err}");

    // A server-side dry run writes nothing, even for a secret no pod has used.
    let fresh = org.secret_id("fresh");
    flyte.set_source(&fresh, Some("f")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match flyte
            .create_pod("dry", scope_labels(), requests(&["fresh"]), true)
            .await
        {
            Ok(pod) => {
                assert_eq!(env_secret(&pod, "_UNION_FRESH"), Some(mirror_name(&fresh)));
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        flyte.mirror(&fresh).await.is_none(),
        "a dry run wrote a mirror"
    );

    // The mirror policy holds: as the webhook, a Secret that is not a mirror cannot be changed.
    let webhook = client_as(&flyte.api, SERVICE_ACCOUNT).await;
    let admin: Api<Secret> = Api::namespaced(flyte.client(), TASKS);
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("team-credentials".into()),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([("k".into(), "v".into())])),
        ..Secret::default()
    };
    admin.create(&PostParams::default(), &theirs).await.unwrap();
    let as_webhook: Api<Secret> = Api::namespaced(webhook, TASKS);
    let relabel = json!({"metadata": {"labels": {"secrets-webhook.flyte.org/mirror": "true"}}});
    let err = as_webhook
        .patch(
            "team-credentials",
            &PatchParams::default(),
            &Patch::Merge(&relabel),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("may only write Secrets labelled"),
        "{err}"
    );
    let err = as_webhook
        .delete("team-credentials", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("may only write Secrets labelled"),
        "{err}"
    );
    // Nor read one.
    let err = as_webhook.get("team-credentials").await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    println!("a changed source reached its mirror in {followed_in:?}");
    report_creation_times(&flyte).await;
}

/// Pod creation through the API server, side by side: pods the webhook is not called for, and
/// Embedded pods (Mirror mode, one secret, its mirror written once then reused). Printed for
/// BENCHMARKS.md; nothing is asserted on time.
async fn report_creation_times(flyte: &Flyte2) {
    let pods: Api<Pod> = Api::namespaced(flyte.client(), TASKS);
    let median = |label: &str, mut times: Vec<Duration>| {
        times.sort();
        let p50 = times[times.len() / 2];
        println!("pod creation p50, {label}: {p50:?} (n={})", times.len());
        p50
    };
    let served = |text: &str| {
        let series = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_default()
        };
        (
            series("secrets_webhook_review_duration_seconds_sum"),
            series("secrets_webhook_review_duration_seconds_count"),
        )
    };
    let before = served(&flyte.replica.metrics().await);
    let mut plain = Vec::new();
    let mut embedded = Vec::new();
    for round in 0..30 {
        let started = Instant::now();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("plain-{round}")},
            "spec": {"containers": [{"name": "main", "image": "python:3.12"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        plain.push(started.elapsed());
        let started = Instant::now();
        let name = format!("embedded-{round}");
        flyte
            .create_pod(&name, scope_labels(), requests(&["db"]), false)
            .await
            .unwrap();
        embedded.push(started.elapsed());
    }
    let after = served(&flyte.replica.metrics().await);
    println!(
        "the webhook's own time per review (mean): {:?}",
        Duration::from_secs_f64((after.0 - before.0) / (after.1 - before.1).max(1.0))
    );
    let plain = median("no webhook call", plain);
    let embedded = median("Embedded Mirror, one secret", embedded);
    println!(
        "Embedded adds {:?} at p50 ({:.2}x)",
        embedded.saturating_sub(plain),
        embedded.as_secs_f64() / plain.as_secs_f64()
    );
}

/// The AWS store through `serve`: a Mirror pod's secret comes from Secrets Manager (moto), and an
/// invalidation after a write brings the mirror in line.
#[cfg(feature = "aws")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_store_through_the_server() {
    let test = "aws_store_through_the_server";
    let Some(moto) = common::tools::find_or("MOTO_SERVER", test, "eval \"$(.ci/moto)\"") else {
        return;
    };
    let Some(api) = ApiServer::start(test).await else {
        return;
    };
    let port = common::free_port();
    let mut moto = std::process::Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(secrets_webhook::secrets::aws::http_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await;
    let admin = aws_sdk_secretsmanager::Client::new(&config);
    let id = scope().cascade()[2].secret_id("db");
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = admin
        .create_secret()
        .name(&id)
        .secret_string("from aws")
        .send()
        .await
    {
        assert!(Instant::now() < deadline, "moto: {err:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let rotate = async {
        admin
            .put_secret_value()
            .secret_id(&id)
            .secret_string("rotated in aws")
            .send()
            .await
            .unwrap();
    };
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ];
    let store = "type: AWS\n    awsConfig: {region: us-east-1}";
    let values: [&[u8]; 2] = [b"from aws", b"rotated in aws"];
    cloud_store_through_the_server(&api, "aws", store, &env, values, rotate).await;
    let _ = moto.kill();
    let _ = moto.wait();
}

/// A cloud store through `serve`: a Mirror pod asking for `db` gets a mirror of the org scope's
/// value (`values[0]`); after `rotate` writes `values[1]` and Flyte 2's secret service calls
/// `/invalidate-secret`, the mirror follows.
#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
async fn cloud_store_through_the_server(
    api: &ApiServer,
    name: &str,
    store: &str,
    env: &[(&str, &str)],
    values: [&[u8]; 2],
    rotate: impl std::future::Future<Output = ()>,
) {
    api.create_namespace(TASKS, &[("organization", "acme")])
        .await;
    let id = scope().cascade()[2].secret_id("db");
    let invalidation = common::free_port();
    let config = api.dir().join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "webhook:\n  secretManagerTypes: [Embedded]\n  secretEnvVarPrefix: _UNION_\n  \
             cacheInvalidationPort: {invalidation}\n  embeddedSecretManagerConfig:\n    {store}\n"
        ),
    )
    .unwrap();
    let certs = api.dir().join("certs");
    let replica = Replica::start_with_env(
        api.dir(),
        api.kubeconfig(),
        "https://unused.invalid/mutate",
        name,
        &[
            "--local",
            "--config",
            config.to_str().unwrap(),
            "--cert-dir",
            certs.to_str().unwrap(),
        ],
        env,
    )
    .await;

    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "task", "namespace": TASKS,
                     "labels": {"inject-flyte-secrets": "true", "organization": "acme",
                                "project": "flytesnacks", "domain": "development"},
                     "annotations": requests(&["db"])},
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}]}
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": format!("{name}-1"), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": TASKS, "operation": "CREATE", "object": pod}
    });
    let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    let mut https = common::client_to(([127, 0, 0, 1], replica.port).into(), &ca).await;
    let (status, response) = https
        .post("/mutate", serde_json::to_vec(&review).unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        response["response"]["allowed"],
        true,
        "{response}\n{}",
        replica.log()
    );
    let mirrors: Api<Secret> = Api::namespaced(api.client(), TASKS);
    let value = |secret: Secret| secret.data.unwrap()["value"].0.clone();
    let mirror = mirrors.get(&mirror_name(&id)).await.unwrap();
    assert_eq!(value(mirror), values[0]);

    rotate.await;
    let body = r#"{"org":"acme","domain":"development","project":"flytesnacks","name":"db"}"#;
    let answer = common::plain_http(invalidation, "POST", "/invalidate-secret", body).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mirror = mirrors.get(&mirror_name(&id)).await.unwrap();
        if value(mirror) == values[1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror did not follow:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The GCP store through `serve`, with Application Default Credentials from the file
/// `GOOGLE_APPLICATION_CREDENTIALS` names, against the Secret Manager fake.
#[cfg(feature = "gcp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_store_through_the_server() {
    let Some(api) = ApiServer::start("gcp_store_through_the_server").await else {
        return;
    };
    let gcp = common::cloud_fakes::FakeGcp::start("flyte-prod").await;
    let id = scope().cascade()[2].secret_id("db");
    gcp.set(&id, b"from gcp");
    let adc = api.dir().join("application_default_credentials.json");
    std::fs::write(&adc, gcp.credentials_json().to_string()).unwrap();
    let store = format!(
        "type: GCP\n    gcpConfig: {{project: flyte-prod, endpoint: \"{}\"}}",
        gcp.endpoint()
    );
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", adc.to_str().unwrap())];
    let rotate = async { gcp.set(&id, b"rotated in gcp") };
    let values: [&[u8]; 2] = [b"from gcp", b"rotated in gcp"];
    cloud_store_through_the_server(&api, "gcp", &store, &env, values, rotate).await;
}

/// The Azure store through `serve`, with Workload Identity set up as AKS does (the env vars and
/// the projected token file), against the Key Vault and Entra fakes; the fake's CA is trusted
/// through `SSL_CERT_FILE`.
#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_store_through_the_server() {
    let Some(api) = ApiServer::start("azure_store_through_the_server").await else {
        return;
    };
    let azure = common::cloud_fakes::FakeAzure::start().await;
    // Flyte 2's name for the org scope's db: `1-acme---` + base32("db").
    azure.set_string("1-acme---MRRA", "from azure");
    let ca = api.dir().join("fake-azure-ca.pem");
    std::fs::write(&ca, &azure.ca_pem).unwrap();
    let token = azure.write_token_file(api.dir());
    let url = azure.url();
    let env = [
        ("AZURE_FEDERATED_TOKEN_FILE", token.to_str().unwrap()),
        ("AZURE_TENANT_ID", azure.tenant.as_str()),
        ("AZURE_CLIENT_ID", azure.client_id.as_str()),
        ("AZURE_AUTHORITY_HOST", url.as_str()),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
    ];
    let store = format!("type: Azure\n    azureConfig: {{vaultURI: \"{url}/\"}}");
    let rotate = async { azure.set_string("1-acme---MRRA", "rotated in azure") };
    let values: [&[u8]; 2] = [b"from azure", b"rotated in azure"];
    cloud_store_through_the_server(&api, "azure", &store, &env, values, rotate).await;
}
