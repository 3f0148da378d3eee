//! Lambda function `rotation-policy`: the KMS-style RPC API
//! (`UpdateRotationPolicy`, `DescribeKey`, `ListKeyVersions`) behind the HTTP API.

use lambda_http::{service_fn, Error, Request};
use s3_key_rotation::api::rotation_policy::{handle, PolicyPorts};
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::Config;
use s3_key_rotation::telemetry::{Telemetry, Trigger};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = Telemetry::init();
    let config = Config::from_env()?;
    let clients = Clients::from_env(&config).await;
    let adapters = Adapters::new(&clients, &config);
    let settings = config.policy_settings();
    let ports = PolicyPorts { registry: &adapters.registry, audit: &adapters.audit };
    let settings = &settings;
    let handler = service_fn(move |req: Request| async move { Ok::<_, Error>(handle(req, ports, settings).await) });
    // What `lambda_http::run` runs: the handler adapted to the runtime's events.
    telemetry.run(lambda_http::lambda_runtime::Runtime::new(lambda_http::Adapter::from(handler)), Trigger::Http).await
}
