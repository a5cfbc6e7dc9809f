//! The GCP store: Flyte 2's layout in Google Secret Manager, one secret per secret id in
//! `gcpConfig.project`, read at `versions/latest`. Credentials are Application Default
//! Credentials from Google's official auth crate (Workload Identity on GKE, a key file named by
//! `GOOGLE_APPLICATION_CREDENTIALS`, the metadata server); the read is one call of the published
//! REST API (`…/versions/latest:access`).

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use futures::future::BoxFuture;
use google_cloud_auth::credentials::{self, CacheableResource, Credentials};
use serde::Deserialize;

use super::store::Backend;

pub const DEFAULT_ENDPOINT: &str = "https://secretmanager.googleapis.com";

pub struct GcpBackend {
    http: reqwest::Client,
    credentials: Credentials,
    /// `<endpoint>/v1/projects/<project>/secrets/`
    secrets: String,
}

#[derive(Deserialize)]
struct AccessResponse {
    payload: Option<Payload>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    data: String,
}

impl GcpBackend {
    /// A backend with Application Default Credentials.
    pub fn from_environment(project: &str, endpoint: Option<&str>) -> Result<Self> {
        super::https::install_ring();
        let credentials = credentials::Builder::default()
            .build()
            .context("GCP Application Default Credentials")?;
        Self::new(project, endpoint, credentials, super::https::client()?)
    }

    pub fn new(
        project: &str,
        endpoint: Option<&str>,
        credentials: Credentials,
        http: reqwest::Client,
    ) -> Result<Self> {
        // Project ids and numbers; legacy domain-scoped ids add `.` and `:`.
        ensure!(
            !project.is_empty()
                && project
                    .bytes()
                    .all(|b| valid_byte(b) || b == b'.' || b == b':'),
            "gcpConfig.project {project:?} is not a GCP project id"
        );
        let endpoint = endpoint.unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/');
        Ok(Self {
            http,
            credentials,
            secrets: format!("{endpoint}/v1/projects/{project}/secrets/"),
        })
    }

    async fn read(&self, id: &str) -> Result<Option<Vec<u8>>> {
        // Secret Manager names hold letters, digits, `_` and `-` only; anything else could not be
        // stored, and must not reach the URL's path.
        ensure!(
            valid_name(id),
            "secret {id} cannot be a GCP secret name (letters, digits, _ and - only)"
        );
        let headers = match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => bail!("GCP credentials gave no headers"),
            Err(err) => return Err(anyhow!(err).context("GCP credentials")),
        };
        let url = format!("{}{id}/versions/latest:access", self.secrets);
        let response = self.http.get(url).headers(headers).send().await?;
        let Some(body) = super::https::found(response, "Secret Manager").await? else {
            return Ok(None);
        };
        let access: AccessResponse =
            serde_json::from_slice(&body).context("Secret Manager's answer")?;
        // As Flyte 2: a version with no payload is an error, not "not found".
        let payload = access
            .payload
            .ok_or_else(|| anyhow!("Secret Manager gave no payload"))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(payload.data)
            .context("Secret Manager's payload is not base64")?;
        Ok(Some(value))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(valid_byte)
}

fn valid_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl Backend for GcpBackend {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { self.read(id).await.with_context(|| format!("secret {id}")) })
    }
}
