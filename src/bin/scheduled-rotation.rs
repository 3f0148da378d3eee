//! Lambda function `scheduled-rotation`: on an EventBridge schedule, evaluates
//! every enrolled org (see `s3_key_rotation::core::sweep`); with
//! `SWEEP_QUEUE_URL` set, dispatches the run in slices to `sweep-worker`
//! instead (see `s3_key_rotation::core::fanout`).

use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{service_fn, Error, LambdaEvent, Runtime};
use s3_key_rotation::aws::{Adapters, Clients};
use s3_key_rotation::config::SweepFunctionConfig;
use s3_key_rotation::scheduled::{handle, handle_dispatch, RunAnswer, SweepDetail};
use s3_key_rotation::telemetry::{Telemetry, Trigger};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = Telemetry::init();
    let config = SweepFunctionConfig::from_env()?;
    let clients = Clients::from_env(&config.sdk).await;
    let adapters = Adapters::wire(&clients, config.wiring());
    let settings = config.sweep_settings();
    let margin = Duration::from_secs(config.sweep.deadline_margin.as_secs());
    let (adapters, settings, config) = (&adapters, &settings, &config);
    // One handler either way (one copy of the runtime in the binary).
    let handler = service_fn(move |event: LambdaEvent<EventBridgeEvent<SweepDetail>>| async move {
        match &adapters.slices {
            Some(queue) => handle_dispatch(
                event,
                &adapters.registry,
                queue,
                &config.members.member_roles,
                config.sweep.sweep_slice_size,
            )
            .await
            .map(RunAnswer::Dispatched),
            None => handle(event, adapters.ports(), settings, margin).await.map(|s| RunAnswer::Swept(Box::new(s))),
        }
    });
    telemetry.run(Runtime::new(handler), Trigger::Timer).await
}
