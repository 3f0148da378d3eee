//! Lambda function `sweep-worker`: triggered by the sweep's queue, sweeps the
//! slices `scheduled-rotation` dispatched (see `s3_key_rotation::core::fanout`)
//! and answers with the slices to deliver again (partial batch response).

use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent, Runtime};
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::SweepFunctionConfig;
use s3_key_rotation::core::fanout::SliceQueue;
use s3_key_rotation::scheduled::handle_slices;
use s3_key_rotation::telemetry::{Telemetry, Trigger};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = Telemetry::init();
    let config = SweepFunctionConfig::from_env()?;
    let clients = Clients::from_env(&config.sdk).await;
    let adapters = Adapters::wire(&clients, config.wiring());
    let settings = config.sweep_settings();
    let margin = Duration::from_secs(config.sweep.deadline_margin.as_secs());
    let (adapters, settings) = (&adapters, &settings);
    let handler = service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let queue = adapters.slices.as_ref().map(|q| q as &dyn SliceQueue);
        handle_slices(event, adapters.ports(), queue, settings, margin).await
    });
    telemetry.run(Runtime::new(handler), Trigger::PubSub).await
}
