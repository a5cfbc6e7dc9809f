//! The Embedded manager's trust model against a real API server: a tenant who may create pods
//! and Secrets in her own namespace reads nothing of another scope, Flyte 2's own layout (every
//! task pod in `flyte`) works with its chart's configuration, and the webhook's own
//! ServiceAccount, stolen, is held by the API server to what the webhook writes.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use secrets_webhook::secrets::scope::{Scope, mirror_name};
use serde_json::{Value, json};

use super::{
    Flyte2, SOURCE, TASKS, client_as, create_task_pod, env_secret, requests, scope, scope_labels,
    wait_until_injecting,
};
use crate::common::{self, free_port};
use crate::envtest::ApiServer;
use crate::replica::install_rendered;

/// A tenant of the cluster: she may create pods and Secrets in the namespaces she is given.
const TENANT: &str = "alice";
/// Another project's namespace in the same organization: the tenant's.
const PAYROLL: &str = "payroll-development";

/// Gives `user` pods and Secrets in `namespace`, as a platform would give a team its namespace
/// (the aggregated `edit` ClusterRole is empty without a controller-manager).
async fn grant_namespace(client: &kube::Client, namespace: &str, user_kind: &str, user: &str) {
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    let name = format!("team-{}", user.replace(':', "-"));
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["*"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": user_kind, "name": user}]
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

fn labels(org: &str, project: &str, domain: &str) -> Value {
    json!({"organization": org, "project": project, "domain": domain})
}

/// A Secret named and labelled like the mirror of `id`, holding `value`.
fn planted(id: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": mirror_name(id),
                     "labels": {"secrets-webhook.flyte.org/mirror": "true",
                                "app.kubernetes.io/managed-by": "secrets-webhook"},
                     "annotations": {"secrets-webhook.flyte.org/source-id": id}},
        "stringData": {"value": value}
    }))
    .unwrap()
}

fn value_of(secret: &Secret) -> String {
    let data = secret.data.as_ref().unwrap();
    String::from_utf8_lossy(&data["value"].0).into_owned()
}

/// A tenant plants a Secret named and labelled like another project's mirror in her own
/// namespace. The API server refuses her the label; and a Secret planted while that policy was
/// not there is never filled: the source changes and an invalidation is posted, the real
/// mirror follows, hers keeps what she put in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_mirror_never_receives_another_scopes_value() {
    let test = "a_planted_mirror_never_receives_another_scopes_value";
    let Some((flyte, port)) = Flyte2::start_with_invalidation(test).await else {
        return;
    };
    let admin = flyte.client();
    flyte
        .api
        .create_namespace(PAYROLL, &[("organization", "acme")])
        .await;
    grant_namespace(&admin, PAYROLL, "User", TENANT).await;
    let id = scope().secret_id("db");
    flyte.set_source(&id, Some("first")).await;
    wait_until_injecting(&flyte).await;
    flyte
        .create_pod("task", scope_labels(), requests(&["db"]), false)
        .await
        .unwrap();
    flyte.wait_for_mirror(&id, Some("first")).await;

    // Refused by the API server: only the webhook may write the mirror label.
    let alice = client_as(&flyte.api, TENANT).await;
    let hers: Api<Secret> = Api::namespaced(alice, PAYROLL);
    let err = hers
        .create(&PostParams::default(), &planted(&id, "planted"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only secrets-webhook may create or change"),
        "{err}"
    );
    // Nor put it on a Secret of hers.
    let mut unlabelled = planted(&id, "planted");
    unlabelled.metadata.labels = None;
    hers.create(&PostParams::default(), &unlabelled)
        .await
        .unwrap();
    let label = json!({"metadata": {"labels": {"secrets-webhook.flyte.org/mirror": "true"}}});
    let err = hers
        .patch(
            &mirror_name(&id),
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only secrets-webhook"), "{err}");

    // A cluster without that policy (or a Secret from before it): she labels it.
    let guard: Api<ValidatingAdmissionPolicyBinding> = Api::all(admin.clone());
    let binding = guard.get("secrets-webhook-mirror-label").await.unwrap();
    guard
        .delete("secrets-webhook-mirror-label", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(err) = hers
        .patch(
            &mirror_name(&id),
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
    {
        assert!(Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut restored = binding;
    restored.metadata = kube::api::ObjectMeta {
        name: restored.metadata.name,
        labels: restored.metadata.labels,
        ..Default::default()
    };
    guard
        .create(&PostParams::default(), &restored)
        .await
        .unwrap();

    // The source changes, and Flyte 2's secret service posts an invalidation.
    flyte.set_source(&id, Some("second")).await;
    let body = r#"{"org":"acme","domain":"development","project":"flytesnacks","name":"db"}"#;
    let answer = common::plain_http(port, "POST", "/invalidate-secret", body).await;
    assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    flyte.wait_for_mirror(&id, Some("second")).await;
    // Followed twice (the watch, the invalidation); give a straggler a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin_view: Api<Secret> = Api::namespaced(admin, PAYROLL);
    let theirs = admin_view.get(&mirror_name(&id)).await.unwrap();
    assert_eq!(value_of(&theirs), "planted", "{}", flyte.replica.log());
}

/// Forged scope labels in a tenant's namespace: another project, another domain, another
/// organization, and a namespace that binds no organization. Every pod is denied, naming the
/// rule, and nothing of the other scope is written anywhere she can read; her own scope works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_scope_labels_get_nothing() {
    let Some(flyte) = Flyte2::start("forged_scope_labels_get_nothing").await else {
        return;
    };
    let admin = flyte.client();
    let unbound = "ml-development";
    flyte
        .api
        .create_namespace(PAYROLL, &[("organization", "acme")])
        .await;
    flyte.api.create_namespace(unbound, &[]).await;
    for namespace in [PAYROLL, unbound] {
        grant_namespace(&admin, namespace, "User", TENANT).await;
    }
    let umbrella = Scope {
        org: "umbrella".into(),
        domain: String::new(),
        project: String::new(),
    };
    let others = [
        scope().secret_id("db"),
        scope().cascade()[1]
            .secret_id("db")
            .replace("development", "production"),
        umbrella.secret_id("db"),
    ];
    for (at, id) in others.iter().enumerate() {
        flyte.set_source(id, Some(&format!("not hers {at}"))).await;
    }
    let acme_org = scope().cascade()[2].secret_id("db");
    flyte.set_source(&acme_org, Some("acme's")).await;
    wait_until_injecting(&flyte).await;

    let alice = client_as(&flyte.api, TENANT).await;
    let in_payroll: Api<Pod> = Api::namespaced(alice.clone(), PAYROLL);
    for (name, labels, why) in [
        (
            "other-project",
            labels("acme", "flytesnacks", "development"),
            "grants no scope",
        ),
        (
            "other-domain",
            labels("acme", "payroll", "production"),
            "grants no scope",
        ),
        (
            "other-org",
            labels("umbrella", "payroll", "development"),
            "does not match namespace",
        ),
    ] {
        let err = create_task_pod(&in_payroll, name, labels, requests(&["db"]), false)
            .await
            .unwrap_err();
        assert!(
            err.contains(why) && err.contains("flyte.secrets/s0"),
            "{name}: {err}"
        );
    }
    let in_unbound: Api<Pod> = Api::namespaced(alice, unbound);
    let err = create_task_pod(
        &in_unbound,
        "own-org-claimed",
        labels("umbrella", "ml", "development"),
        requests(&["db"]),
        false,
    )
    .await
    .unwrap_err();
    assert!(err.contains("binds no organization"), "{err}");

    // Her own scope works: the organization's secret, in a mirror of her namespace.
    let in_payroll: Api<Pod> = Api::namespaced(client_as(&flyte.api, TENANT).await, PAYROLL);
    let pod = create_task_pod(
        &in_payroll,
        "own",
        labels("acme", "payroll", "development"),
        requests(&["db"]),
        false,
    )
    .await
    .unwrap();
    assert_eq!(env_secret(&pod, "_UNION_DB"), Some(mirror_name(&acme_org)));
    // No mirror of another scope anywhere she can read.
    for namespace in [PAYROLL, unbound] {
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
        for id in &others {
            assert!(
                secrets.get_opt(&mirror_name(id)).await.unwrap().is_none(),
                "{namespace} holds a mirror of {id}"
            );
        }
    }
}

/// Flyte 2's own layout, with the `webhook:` section its Helm chart ships: every task pod in
/// `flyte` beside the store, organization `flyte`. Pods the executor creates there, and pods an
/// operator makes there from the executor's CRDs, get every secret of their scope; Flyte 2's
/// labels anywhere else get nothing; and naming the creators narrows `flyte` to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flyte_2s_own_layout_works_as_shipped() {
    // charts/flyte-binary/templates/configmap.yaml's `webhook:` (its cacheInvalidationPort left
    // at the default 9444 would collide with other tests).
    let chart = format!(
        "webhook:\n  certDir: /var/run/flyte/certs\n  localCert: true\n  \
         secretName: flyte-binary-webhook-secret\n  serviceName: flyte-binary-webhook\n  \
         servicePort: 443\n  secretManagerTypes:\n    - Embedded\n  \
         cacheInvalidationPort: {}\n  embeddedSecretManagerConfig:\n    type: K8s\n    \
         k8sConfig:\n      namespace: {SOURCE}\n",
        free_port()
    );
    let test = "flyte_2s_own_layout_works_as_shipped";
    let Some(flyte) = Flyte2::start_config(test, &chart).await else {
        return;
    };
    let admin = flyte.client();
    let executor = "system:serviceaccount:flyte:flyte-binary";
    let operator = "system:serviceaccount:spark-operator:spark-operator";
    for user in [executor, operator] {
        grant_namespace(&admin, SOURCE, "User", user).await;
    }
    flyte.api.create_namespace("team-a", &[]).await;
    let flyte_scope = Scope {
        org: "flyte".into(),
        domain: "development".into(),
        project: "p1".into(),
    };
    let [project, domain, org] = flyte_scope.cascade();
    for (scope, key) in [(&project, "token"), (&domain, "shared"), (&org, "org_wide")] {
        flyte.set_source(&scope.secret_id(key), Some(key)).await;
    }
    let flyte_labels = labels("flyte", "p1", "development");
    let asked = requests(&["token", "shared", "org_wide"]);
    let create = |user: &'static str, name: &'static str| {
        let api = &flyte.api;
        let (labels, asked) = (flyte_labels.clone(), asked.clone());
        async move {
            let pods: Api<Pod> = Api::namespaced(client_as(api, user).await, SOURCE);
            create_task_pod(&pods, name, labels, asked, false).await
        }
    };
    // The API server reads the registration a moment after it is written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pod = loop {
        match create(executor, "executor-task").await {
            Ok(pod) if env_secret(&pod, "_UNION_TOKEN").is_some() => break pod,
            Ok(_) => {
                Api::<Pod>::namespaced(admin.clone(), SOURCE)
                    .delete("executor-task", &DeleteParams::default())
                    .await
                    .unwrap();
            }
            Err(err) => assert!(Instant::now() < deadline, "{err}\n{}", flyte.replica.log()),
        }
        assert!(Instant::now() < deadline, "{}", flyte.replica.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mirrors: Api<Secret> = Api::namespaced(admin.clone(), SOURCE);
    for (scope, key) in [(&project, "token"), (&domain, "shared"), (&org, "org_wide")] {
        let id = scope.secret_id(key);
        let var = format!("_UNION_{}", key.to_uppercase());
        assert_eq!(env_secret(&pod, &var), Some(mirror_name(&id)), "{var}");
        let mirror = mirrors.get(&mirror_name(&id)).await.unwrap();
        assert_eq!(value_of(&mirror), key);
    }
    let by_operator = create(operator, "spark-driver").await.unwrap();
    assert!(env_secret(&by_operator, "_UNION_ORG_WIDE").is_some());

    // Flyte 2's labels in any other namespace.
    let elsewhere: Api<Pod> = Api::namespaced(admin.clone(), "team-a");
    let err = create_task_pod(&elsewhere, "t", flyte_labels.clone(), asked.clone(), false)
        .await
        .unwrap_err();
    assert!(err.contains("\"team-a\" grants no scope"), "{err}");

    // Only the executor, from now on: the configuration is reloaded in place.
    let narrowed = chart.replace(
        "    k8sConfig:",
        &format!("    flyteNamespaceCreators:\n      users: [\"{executor}\"]\n    k8sConfig:"),
    );
    std::fs::write(&flyte.config, narrowed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        match create(operator, "spark-driver-2").await {
            Err(err) => break err,
            Ok(_) => {
                Api::<Pod>::namespaced(admin.clone(), SOURCE)
                    .delete("spark-driver-2", &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
        assert!(Instant::now() < deadline, "{}", flyte.replica.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        err.contains("flyteNamespaceCreators") && err.contains(operator),
        "{err}"
    );
    create(executor, "executor-task-2").await.unwrap();
}

/// deploy/ as shipped, installed in another namespace (`flyte-secrets`, rendered by kustomize
/// from e2e/tests/data/namespace-overlay): the webhook's ServiceAccount there may write what the
/// webhook writes, and the API server refuses it anything else — a Secret the API server would
/// fill with a token, a Secret that is not a mirror, another MutatingWebhookConfiguration — and
/// refuses a tenant the mirror label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_webhook_token_is_held_by_the_api_server() {
    let test = "a_stolen_webhook_token_is_held_by_the_api_server";
    let Some(api) = ApiServer::start(test).await else {
        return;
    };
    let installed = "flyte-secrets";
    for namespace in [installed, SOURCE, TASKS] {
        api.create_namespace(namespace, &[]).await;
    }
    let admin = api.client();
    let overlay = common::workspace().join("e2e/tests/data/namespace-overlay");
    if install_rendered(&admin, &overlay, test).await.is_none() {
        return;
    }
    let webhook = client_as(
        &api,
        &format!("system:serviceaccount:{installed}:secrets-webhook"),
    )
    .await;
    // The policies are read by the API server a moment after they are created.
    let in_tasks: Api<Secret> = Api::namespaced(webhook.clone(), TASKS);
    let token: Secret = serde_json::from_value(json!({
        "metadata": {"name": "stolen-token",
                     "labels": {"secrets-webhook.flyte.org/mirror": "true"},
                     "annotations": {"kubernetes.io/service-account.name": "default"}},
        "type": "kubernetes.io/service-account-token"
    }))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match in_tasks.create(&PostParams::default(), &token).await {
            Err(err) if err.to_string().contains("may only write Secrets of type") => break err,
            Err(err) => assert!(Instant::now() < deadline, "{err}"),
            Ok(_) => {
                in_tasks
                    .delete("stolen-token", &DeleteParams::default())
                    .await
                    .unwrap();
                assert!(Instant::now() < deadline, "a token Secret was created");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(err);
    // An Opaque Secret with the ServiceAccount annotation: refused too.
    let mut annotated = token.clone();
    annotated.type_ = Some("Opaque".into());
    let err = in_tasks
        .create(&PostParams::default(), &annotated)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("without ServiceAccount annotations"),
        "{err}"
    );
    // What the webhook writes goes through: a mirror, an image pull Secret's copy.
    for (name, kind, data) in [
        ("flyte-secret-0123", "Opaque", json!({"value": "djE="})),
        (
            "img-pull-0123456789abcdef",
            "kubernetes.io/dockerconfigjson",
            json!({".dockerconfigjson": "e30="}),
        ),
    ] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"secrets-webhook.flyte.org/mirror": "true"}},
            "type": kind, "data": data
        }))
        .unwrap();
        in_tasks
            .create(&PostParams::default(), &secret)
            .await
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    // A Secret that is not a mirror: refused.
    let plain: Secret =
        serde_json::from_value(json!({"metadata": {"name": "team-credentials"}})).unwrap();
    let err = in_tasks
        .create(&PostParams::default(), &plain)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("may only write Secrets labelled"),
        "{err}"
    );
    // The store's namespace is read, never written.
    let source: Api<Secret> = Api::namespaced(webhook.clone(), SOURCE);
    source.list(&Default::default()).await.unwrap();

    // Another MutatingWebhookConfiguration: refused; its own: allowed.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(webhook);
    let config = |name: &str| -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    let err = configs
        .create(&PostParams::default(), &config("rewrite-every-pod"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("may only write its own MutatingWebhookConfiguration"),
        "{err}"
    );
    configs
        .create(&PostParams::default(), &config("secrets-webhook"))
        .await
        .unwrap();

    // A tenant may not plant the mirror label in this install either.
    let tenant: Api<Secret> = Api::namespaced(client_as(&api, TENANT).await, TASKS);
    grant_namespace(&admin, TASKS, "User", TENANT).await;
    let err = tenant
        .create(
            &PostParams::default(),
            &planted("u__org__a__domain____project____key__k", "x"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("only secrets-webhook may create"),
        "{err}"
    );
}
