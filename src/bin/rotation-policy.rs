//! Lambda function `rotation-policy`: the KMS-style RPC API
//! (`UpdateRotationPolicy`, `DescribeKey`, `ListKeyVersions`) behind the HTTP API.

use lambda_http::{service_fn, Error, Request};
use s3_key_rotation::api::rotation_policy::{handle, PolicyPorts};
use s3_key_rotation::aws::registry::{S3Audit, S3Registry};
use s3_key_rotation::aws::Clients;
use s3_key_rotation::config::RotationPolicyConfig;
use s3_key_rotation::telemetry::{Telemetry, Trigger};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = Telemetry::init();
    // Its areas only (no vault, keys or queue): a bad setting of another stops it not.
    let config = RotationPolicyConfig::from_env()?;
    let clients = Clients::from_env(&config.sdk).await;
    let registry = S3Registry::new(clients.s3.clone(), &config.registry.bucket);
    let audit = S3Audit::new(clients.s3.clone(), &config.registry.bucket);
    let settings = config.settings();
    let ports = PolicyPorts { registry: &registry, audit: &audit };
    let settings = &settings;
    let handler = service_fn(move |req: Request| async move { Ok::<_, Error>(handle(req, ports, settings).await) });
    // What `lambda_http::run` runs: the handler adapted to the runtime's events.
    telemetry.run(lambda_http::lambda_runtime::Runtime::new(lambda_http::Adapter::from(handler)), Trigger::Http).await
}
