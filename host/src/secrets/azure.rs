//! The Azure store: Flyte 2's layout in Azure Key Vault. Key Vault names allow letters, digits
//! and `-` only, so a secret id is stored under Flyte 2's name codec
//! (`1-<org>-<domain>-<project>-<base32(key)>`), and its value in Flyte 2's JSON envelope
//! (`{"type":"STRING"|"BINARY","value":…}`, a BINARY value in base64).
//!
//! Credentials come from Microsoft's official `azure_identity`: Workload Identity when AKS has
//! set `AZURE_FEDERATED_TOKEN_FILE`, a client secret when `AZURE_CLIENT_SECRET` is set, the
//! managed identity otherwise (Flyte 2's DefaultAzureCredential tries the same, in that order).
//! The read is one call of Key Vault's REST API, `GET <vault>/secrets/<name>`.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail, ensure};
use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::Engine;
use futures::future::BoxFuture;
use serde::Deserialize;

use super::scope::parse_secret_id;
use super::store::Backend;

/// Key Vault's REST API version (GA since 2023).
const API_VERSION: &str = "7.5";
/// Flyte 2's codec version, the name's first field.
const CODEC_VERSION: &str = "1";
/// Key Vault's limit on a secret's name.
const MAX_NAME_LEN: usize = 127;

pub struct AzureBackend {
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    /// The vault's URI without its trailing `/`.
    vault: String,
    /// The token's scope: the vault's DNS suffix (`https://vault.azure.net/.default` in Azure's
    /// public cloud, its own in sovereign clouds and Managed HSM).
    scope: String,
}

impl AzureBackend {
    /// A backend for `vault_uri` with the credential the environment names.
    pub fn from_environment(vault_uri: &str) -> Result<Self> {
        let http = super::https::client()?;
        let credential = credential_from_environment(&http, None)?;
        Ok(Self::new(vault_uri, credential, http))
    }

    pub fn new(
        vault_uri: &str,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> Self {
        let vault = vault_uri.trim_end_matches('/').to_owned();
        let scope = token_scope(&vault);
        Self {
            http,
            credential,
            vault,
            scope,
        }
    }

    async fn read(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let name = encode_name(id)?;
        let token = self
            .credential
            .get_token(&[&self.scope], None)
            .await
            .map_err(|err| anyhow!("Azure credentials: {err}"))?;
        let url = format!("{}/secrets/{name}?api-version={API_VERSION}", self.vault);
        let response = self
            .http
            .get(url)
            .bearer_auth(token.token.secret())
            .send()
            .await?;
        let found = super::https::found(response, "Key Vault").await;
        let Some(body) = found.with_context(|| format!("Key Vault secret {name}"))? else {
            return Ok(None);
        };
        let secret: SecretBundle = serde_json::from_slice(&body).context("Key Vault's answer")?;
        match secret.value {
            Some(value) if !value.is_empty() => decode_value(&value).map(Some),
            _ => bail!("Key Vault gave secret {name} with no value"),
        }
    }
}

impl Backend for AzureBackend {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { self.read(id).await.with_context(|| format!("secret {id}")) })
    }
}

/// The credential the environment names, fetching tokens over `http`. `authority` replaces
/// Microsoft Entra's host (`AZURE_AUTHORITY_HOST` does the same from the environment).
pub fn credential_from_environment(
    http: &reqwest::Client,
    authority: Option<&str>,
) -> Result<Arc<dyn TokenCredential>> {
    let client_options = || {
        let mut options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http.clone()))),
            ..ClientOptions::default()
        };
        if let Some(host) = authority {
            let mut cloud = azure_core::cloud::CustomConfiguration::default();
            cloud.authority_host = host.to_owned();
            options.cloud = Some(Arc::new(cloud.into()));
        }
        options
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credential: Arc<dyn TokenCredential> = if env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            credential_options: ClientAssertionCredentialOptions {
                client_options: client_options(),
            },
            ..Default::default()
        }))
        .map_err(|err| anyhow!("Azure Workload Identity: {err}"))?
    } else if let Some(secret) = env("AZURE_CLIENT_SECRET") {
        let (Some(tenant), Some(client)) = (env("AZURE_TENANT_ID"), env("AZURE_CLIENT_ID")) else {
            bail!("AZURE_CLIENT_SECRET is set without AZURE_TENANT_ID and AZURE_CLIENT_ID");
        };
        let options = ClientSecretCredentialOptions {
            client_options: client_options(),
        };
        ClientSecretCredential::new(&tenant, client, secret.into(), Some(options))
            .map_err(|err| anyhow!("Azure client secret credential: {err}"))?
    } else {
        ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
            user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
            client_options: client_options(),
        }))
        .map_err(|err| anyhow!("Azure managed identity: {err}"))?
    };
    Ok(credential)
}

/// `https://kv.vault.azure.net` → `https://vault.azure.net/.default`. A vault named by an IP
/// address or a short name (a private endpoint's alias) takes the public cloud's.
fn token_scope(vault: &str) -> String {
    let host = vault
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    match host.split_once('.') {
        Some((_, suffix))
            if suffix.contains('.') && host.parse::<std::net::Ipv4Addr>().is_err() =>
        {
            format!("https://{suffix}/.default")
        }
        _ => "https://vault.azure.net/.default".to_owned(),
    }
}

/// Flyte 2's Key Vault name for secret id `id`: scope fields with `0` → `00` and `-` → `01`,
/// the key in base32 (RFC 4648, no padding).
pub fn encode_name(id: &str) -> Result<String> {
    let (scope, key) =
        parse_secret_id(id).ok_or_else(|| anyhow!("{id:?} is not a Flyte 2 secret id"))?;
    let escape = |field: &str| field.replace('0', "00").replace('-', "01");
    let name = format!(
        "{CODEC_VERSION}-{}-{}-{}-{}",
        escape(&scope.org),
        escape(&scope.domain),
        escape(&scope.project),
        data_encoding::BASE32_NOPAD.encode(key.as_bytes())
    );
    ensure!(
        name.len() <= MAX_NAME_LEN,
        "encoded secret name with length {} exceeds maximum length: {MAX_NAME_LEN}",
        name.len()
    );
    // Key Vault would refuse anything else; it must not reach the URL's path either.
    ensure!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "Key Vault secret names hold letters, digits and - only; the scope of {id} has others"
    );
    Ok(name)
}

#[derive(Deserialize)]
struct SecretBundle {
    value: Option<String>,
}

/// Flyte 2's envelope. Its Go type marshals `type` by name; a number (the enum's value) is
/// taken too.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Kind,
    value: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Kind {
    Name(String),
    Number(u8),
}

/// The value inside Flyte 2's envelope. Errors never quote the value.
fn decode_value(stored: &str) -> Result<Vec<u8>> {
    let envelope: Envelope = serde_json::from_str(stored)
        .map_err(|_| anyhow!("the stored value is not Flyte 2's {{\"type\", \"value\"}} JSON"))?;
    match envelope.kind {
        Kind::Name(name) if name == "STRING" => Ok(envelope.value.into_bytes()),
        Kind::Number(0) => Ok(envelope.value.into_bytes()),
        Kind::Name(name) if name == "BINARY" => binary(&envelope.value),
        Kind::Number(1) => binary(&envelope.value),
        Kind::Name(other) => bail!("stored value of unknown type {other:?}"),
        Kind::Number(other) => bail!("stored value of unknown type {other}"),
    }
}

fn binary(value: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|_| anyhow!("a BINARY value that is not base64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(org: &str, domain: &str, project: &str, key: &str) -> String {
        format!("u__org__{org}__domain__{domain}__project__{project}__key__{key}")
    }

    /// Flyte 2's own vectors (azure_utils_test.go).
    #[test]
    fn names_match_flyte_2s_codec() {
        let cases = [
            (
                id("testorg", "testdomain", "testproject", "testsecret"),
                "1-testorg-testdomain-testproject-ORSXG5DTMVRXEZLU",
            ),
            (
                id(
                    "test-org",
                    "test--domain",
                    "--testproject--",
                    "test-secret--",
                ),
                "1-test01org-test0101domain-0101testproject0101-ORSXG5BNONSWG4TFOQWS2",
            ),
            (
                id("test0org", "test00domain", "00testproject00", "testsecret"),
                "1-test00org-test0000domain-0000testproject0000-ORSXG5DTMVRXEZLU",
            ),
            (
                id(
                    "test01org",
                    "test0102domain",
                    "01testproject0101",
                    "testsecret",
                ),
                "1-test001org-test001002domain-001testproject001001-ORSXG5DTMVRXEZLU",
            ),
            (
                id(
                    "test01org",
                    "test0101domain",
                    "01testproject0101",
                    "test_secret__",
                ),
                "1-test001org-test001001domain-001testproject001001-ORSXG5C7ONSWG4TFORPV6",
            ),
            (
                id(
                    "test01org",
                    "test0101domain",
                    "01testproject0101",
                    "TESTSECRET",
                ),
                "1-test001org-test001001domain-001testproject001001-KRCVGVCTIVBVERKU",
            ),
        ];
        for (id, name) in cases {
            assert_eq!(encode_name(&id).unwrap(), name, "{id}");
        }
        // The broader scopes keep their empty fields.
        assert_eq!(
            encode_name(&id("acme", "", "", "db")).unwrap(),
            "1-acme---MRRA"
        );
    }

    #[test]
    fn names_too_long_or_unstorable_are_errors() {
        let prefix = id(
            "test-org-with-long-name",
            "development",
            "union-health-monitoring",
            "",
        );
        let room = MAX_NAME_LEN - encode_name(&prefix).unwrap().len();
        let fits = "a".repeat(room * 5 / 8);
        assert!(encode_name(&format!("{prefix}{fits}")).is_ok());
        let err = encode_name(&format!("{prefix}{fits}a"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds maximum length: 127"), "{err}");
        let err = encode_name(&id("acme", "dev", "ml/../x", "db"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("letters, digits and - only"), "{err}");
        assert!(encode_name("db").is_err());
    }

    #[test]
    fn values_come_out_of_flyte_2s_envelope() {
        let decode = |stored: &str| decode_value(stored).map_err(|e| e.to_string());
        assert_eq!(
            decode(r#"{"type":"STRING","value":"test-value"}"#).unwrap(),
            b"test-value"
        );
        assert_eq!(
            decode(r#"{"type":"BINARY","value":"SGVsbG8="}"#).unwrap(),
            b"Hello"
        );
        assert_eq!(decode(r#"{"type":0,"value":" a "}"#).unwrap(), b" a ");
        assert_eq!(decode(r#"{"type":1,"value":""}"#).unwrap(), b"");
        let err = decode(r#"{"type":"STRING","value":"hunter2""#).unwrap_err();
        assert!(
            err.contains("not Flyte 2's") && !err.contains("hunter2"),
            "{err}"
        );
        let err = decode(r#"{"type":"BINARY","value":"hunter2"}"#).unwrap_err();
        assert!(
            err.contains("not base64") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(decode(r#"{"type":"TEXT","value":"x"}"#).is_err());
        assert!(decode("hunter2").is_err());
    }

    #[test]
    fn tokens_are_for_the_vaults_cloud() {
        assert_eq!(
            token_scope("https://kv.vault.azure.net"),
            "https://vault.azure.net/.default"
        );
        assert_eq!(
            token_scope("https://kv.vault.azure.cn:443"),
            "https://vault.azure.cn/.default"
        );
        assert_eq!(
            token_scope("https://hsm.managedhsm.azure.net"),
            "https://managedhsm.azure.net/.default"
        );
        assert_eq!(
            token_scope("https://127.0.0.1:8443"),
            "https://vault.azure.net/.default"
        );
    }
}
