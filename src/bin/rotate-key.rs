//! Lambda function `rotate-key`: API Gateway HTTP API (payload v2),
//! `POST /iam/rotate-key` and `POST /admin/v2/iam/rotateKey`.

use lambda_http::{service_fn, Error, Request};
use s3_key_rotation::api::rotate_key::handle;
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::RotateKeyConfig;
use s3_key_rotation::telemetry::{Telemetry, Trigger};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = Telemetry::init();
    // Configuration (its areas only) and clients once per cold start; a bad setting stops here.
    let config = RotateKeyConfig::from_env()?;
    let clients = Clients::from_env(&config.sdk).await;
    let adapters = Adapters::wire(&clients, config.wiring());
    let settings = config.settings();
    let (adapters, settings) = (&adapters, &settings);
    let handler =
        service_fn(move |req: Request| async move { Ok::<_, Error>(handle(req, adapters.ports(), settings).await) });
    // What `lambda_http::run` runs: the handler adapted to the runtime's events.
    telemetry.run(lambda_http::lambda_runtime::Runtime::new(lambda_http::Adapter::from(handler)), Trigger::Http).await
}
