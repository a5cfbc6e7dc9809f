//! The AWS store: Flyte 2's layout in AWS Secrets Manager, one secret per secret id, read at
//! `AWSCURRENT`. Credentials come the SDK's usual ways (IRSA or Pod Identity in EKS, env vars,
//! profiles); `AWS_ENDPOINT_URL` points it elsewhere (a VPC endpoint, moto in the tests). TLS is
//! rustls with ring, the crypto the rest of the binary uses.

use anyhow::{Result, anyhow, bail};
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use futures::future::BoxFuture;

use super::store::Backend;

/// Flyte 2's version stage: the current value.
const VERSION_STAGE: &str = "AWSCURRENT";

pub struct AwsBackend {
    client: aws_sdk_secretsmanager::Client,
}

/// The SDK's HTTPS client on rustls with ring (the SDK's default would link aws-lc as well).
pub fn http_client() -> aws_sdk_secretsmanager::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

impl AwsBackend {
    /// A client for `region` (Flyte 2's `awsConfig.region`; the SDK's own lookup when empty).
    pub async fn load(region: Option<&str>) -> Self {
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http_client());
        if let Some(region) = region.filter(|r| !r.is_empty()) {
            loader = loader.region(aws_config::Region::new(region.to_owned()));
        }
        Self::from_config(&loader.load().await)
    }

    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(config),
        }
    }
}

impl Backend for AwsBackend {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let read = self
                .client
                .get_secret_value()
                .secret_id(id)
                .version_stage(VERSION_STAGE)
                .send()
                .await;
            let output = match read {
                Ok(output) => output,
                Err(err)
                    if err
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_not_found_exception()) =>
                {
                    return Ok(None);
                }
                Err(err) => {
                    return Err(anyhow!("secret {id}: {}", DisplayErrorContext(&err)));
                }
            };
            // As Flyte 2: a string wins over binary; neither (or an empty string) is an error,
            // not "not found", so a broader scope's value never stands in for it.
            if let Some(text) = output.secret_string.filter(|text| !text.is_empty()) {
                return Ok(Some(text.into_bytes()));
            }
            match output.secret_binary {
                Some(blob) => Ok(Some(blob.into_inner())),
                None => bail!("secret {id} read as empty from AWS Secrets Manager"),
            }
        })
    }
}
