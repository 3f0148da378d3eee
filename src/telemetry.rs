//! Logs and traces of the four functions, set up in one place.
//!
//! Logs are what `lambda_runtime::tracing::init_default_subscriber()` makes
//! of them (`AWS_LAMBDA_LOG_FORMAT=JSON`, `AWS_LAMBDA_LOG_LEVEL` or
//! `RUST_LOG`). Traces are OpenTelemetry's, exported over OTLP/HTTP
//! (`http/protobuf`) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; unset, nothing is set up
//! beyond the logs, and nothing is exported.
//!
//! A trace holds, per invocation:
//! - the root span of the runtime's `OpenTelemetryLayer` (`faas.trigger`
//!   `http`, `timer` or `pubsub`), continuing Lambda's X-Ray trace (the
//!   invocation's `Lambda-Runtime-Trace-Id`, read with the X-Ray propagator);
//!   a sweep-worker invocation continues instead the trace of the dispatcher
//!   that queued its slice (the message's `AWSTraceHeader`, see
//!   [`trace_header`]), and its slice span links Lambda's own trace;
//! - a span per AWS request: the SDK's own operation span (`S3.GetObject`,
//!   `rpc.*` attributes), bridged from `tracing`, never a request or response
//!   body;
//! - the spans of this crate (the rotation protocol's steps `rotation.claim`,
//!   `rotation.create`, `rotation.verify`, `rotation.commit`, …, the sweep's
//!   orgs and slices), with their fields (org ids, key ids, never a secret:
//!   secrets are [`secrecy::SecretString`]s, which no field records), and the
//!   crate's `INFO` events and everyone's `WARN` and `ERROR` events as span
//!   events.
//!
//! Spans are exported in batches by a background thread, and flushed at the
//! end of every invocation, after its answer went to the Runtime API. Export
//! is bounded: one attempt per batch (no retries), each within
//! `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds; 1000 by default here, not the
//! specification's 10 s), and its errors are logged (`WARN`), never returned:
//! a collector that cannot be reached costs an invocation at most that
//! timeout, after its answer.
//!
//! The exporter's HTTP client is the Lambda runtime's own (hyper 1, plain
//! HTTP): the collector is expected next to the function (the ADOT Lambda
//! layer on `http://localhost:4318`); an `https://` endpoint is refused at
//! each export (logged), as a TLS client of the exporter's own would not fit
//! the 8 MiB budget.

use std::collections::HashMap;
use std::str::FromStr;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use lambda_runtime::layers::{OpenTelemetryFaasTrigger, OpenTelemetryLayer, TracingLayer};
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{Error, LambdaInvocation, Runtime};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_aws::trace::{XrayIdGenerator, XrayPropagator};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{warn, Level, Metadata, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context as LayerContext, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The export timeout when `OTEL_EXPORTER_OTLP_TIMEOUT` is not set.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What triggers a function: the root span's `faas.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An API Gateway request (rotate-key, rotation-policy).
    Http,
    /// The schedule (scheduled-rotation).
    Timer,
    /// An SQS message (sweep-worker): the root span continues the trace of
    /// the message's sender when the batch's messages carry one.
    PubSub,
}

/// The traces of a function, if exported. Made once, at start-up, by [`Telemetry::init`].
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sets up the logs and, when an OTLP endpoint is configured, the traces
    /// (from within the function's Tokio runtime, whose threads carry the
    /// exporter's connections). A setting the exporter refuses (an endpoint that is no URL) is logged
    /// and leaves the function without traces: telemetry never stops it.
    pub fn init() -> Self {
        let settings = ExportSettings::from_env(|name| std::env::var(name).ok());
        let (provider, failed) = match settings.as_ref().map(tracer_provider) {
            Some(Ok(provider)) => (Some(provider), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        // One subscriber either way (the logs' layer, the traces' when exported):
        // one copy of the logging code in the binary.
        let traces = provider
            .as_ref()
            .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("s3-key-rotation")).with_filter(Exported));
        tracing_subscriber::registry().with(log_layer()).with(traces).init();
        if let Some(e) = failed {
            warn!(error = %e, "traces are not exported: the OTLP exporter could not be set up");
        }
        for warning in settings.map(|s| s.warnings).unwrap_or_default() {
            warn!("{warning}");
        }
        Self { provider }
    }

    /// Runs the function's runtime with the runtime's own tracing layer (a
    /// span per invocation with its request id, as `lambda_runtime::run`
    /// adds) and, when traces are exported, the runtime's
    /// `OpenTelemetryLayer`: its root span continuing the invocation's trace,
    /// its spans flushed once the answer is sent.
    pub async fn run<S>(self, runtime: Runtime<S>, trigger: Trigger) -> Result<(), Error>
    where
        S: Service<LambdaInvocation, Response = (), Error = Error>,
    {
        let faas_trigger = match trigger {
            Trigger::Http => OpenTelemetryFaasTrigger::Http,
            Trigger::Timer => OpenTelemetryFaasTrigger::Timer,
            Trigger::PubSub => OpenTelemetryFaasTrigger::PubSub,
        };
        // The same layers whether traces are exported or not (one copy of the
        // runtime's loop in the binary): without them, the root span is
        // recorded by nobody (the logs leave it out) and nothing is flushed.
        let continues = self.provider.is_some();
        let provider = self.provider;
        runtime
            .layer(TracingLayer::new())
            .layer(
                OpenTelemetryLayer::new(move || {
                    if let Some(provider) = &provider {
                        flush(provider)
                    }
                })
                .with_trigger(faas_trigger),
            )
            .layer(ContinueTrace { continues, from_messages: trigger == Trigger::PubSub })
            .run()
            .await
    }
}

/// Exports what the invocation's spans left in the batch, waiting at most the
/// export timeout (the batch processor's own thread exports; the runtime's
/// other threads carry its request). Errors are logged, never returned.
fn flush(provider: &SdkTracerProvider) {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    // On a single-threaded runtime the export could not run while this waits:
    // the batch processor exports on its schedule instead.
    if !multi_thread {
        return;
    }
    if let Err(e) = tokio::task::block_in_place(|| provider.force_flush()) {
        warn!(error = %e, "could not export this invocation's traces");
    }
}

/// The settings of the export, from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExportSettings {
    timeout: Duration,
    service_name: String,
    /// Settings that were not followed, logged once the logs are set up.
    warnings: Vec<String>,
}

impl ExportSettings {
    /// `None` when nothing is to be exported: no OTLP endpoint,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let mut warnings = Vec::new();
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(protocol) = protocol.filter(|p| p != "http/protobuf") {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: traces are exported as http/protobuf"
            ));
        }
        let timeout_var = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
            .into_iter()
            .find_map(|name| set(name).map(|value| (name, value)));
        let timeout = match timeout_var {
            None => DEFAULT_EXPORT_TIMEOUT,
            Some((name, value)) => match u64::from_str(&value) {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    warnings.push(format!(
                        "{name}={value} is not a number of milliseconds: the export timeout is {} ms",
                        DEFAULT_EXPORT_TIMEOUT.as_millis()
                    ));
                    DEFAULT_EXPORT_TIMEOUT
                }
            },
        };
        let service_name = set("OTEL_SERVICE_NAME")
            .or_else(|| set("AWS_LAMBDA_FUNCTION_NAME"))
            .unwrap_or_else(|| "s3-key-rotation".to_owned());
        Some(Self { timeout, service_name, warnings })
    }
}

fn tracer_provider(settings: &ExportSettings) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let client = CollectorClient {
        timeout: settings.timeout,
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|e| opentelemetry_otlp::ExporterBuildError::InternalFailure(e.to_string()))?,
        client: std::sync::OnceLock::new(),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(settings.timeout)
        .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
        .build()?;
    let resource = Resource::builder().with_attribute(KeyValue::new("service.name", settings.service_name.clone()));
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(XrayIdGenerator::default())
        .with_resource(resource.build())
        .build())
}

/// The exporter's HTTP client: the Lambda runtime's own client of the Runtime
/// API (hyper-util's pooled HTTP/1.1 client, plain HTTP) pointed at the
/// collector, which sits next to the function (the ADOT layer's
/// `localhost:4318`). The binaries hold that client's code once: a client of
/// the exporter's own (hyper-util's with another connector or body, or a TLS
/// connector) took the arm64 bootstrap past 8 MiB. Each exchange, connecting
/// included, is bounded by the export timeout; it runs on the function's
/// Tokio runtime (the batch processor exports from a thread of its own).
#[derive(Debug)]
struct CollectorClient {
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    client: std::sync::OnceLock<std::sync::Arc<lambda_runtime_api_client::PooledClient>>,
}

#[async_trait::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri();
        let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!("{uri}: only http:// collectors are supported").into());
        };
        let base: http::Uri = format!("http://{authority}").parse()?;
        let client = self
            .client
            .get_or_init(|| {
                std::sync::Arc::new(lambda_runtime_api_client::PooledClient::builder().with_endpoint(base).build())
            })
            .clone();
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, lambda_runtime_api_client::body::Body::from(body));
        let timeout = self.timeout;
        let exchange = async move {
            use http_body_util::BodyExt;
            let (parts, body) = client.call(request).await?.into_parts();
            Ok::<_, HttpError>(Response::from_parts(parts, body.collect().await?.to_bytes()))
        };
        self.runtime.spawn(async move { tokio::time::timeout(timeout, exchange).await? }).await?
    }
}

/// The logs as `lambda_runtime::tracing::init_default_subscriber()` makes them
/// (`AWS_LAMBDA_LOG_FORMAT`, `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`, no target, no time).
fn log_layer<S>() -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG"));
    let level = LevelFilter::from_str(level.as_deref().unwrap_or("INFO")).unwrap_or(LevelFilter::INFO);
    let filter = EnvFilter::builder().with_default_directive(level.into()).from_env_lossy();
    // The root span of the runtime's OpenTelemetryLayer is the traces', not the logs'.
    let filter = match "lambda_runtime::layers::otel=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let layer = tracing_subscriber::fmt::layer().with_target(false).without_time();
    if std::env::var("AWS_LAMBDA_LOG_FORMAT").unwrap_or_default().eq_ignore_ascii_case("json") {
        layer.json().with_filter(filter).boxed()
    } else {
        layer.with_filter(filter).boxed()
    }
}

/// What becomes part of a trace: the AWS SDK's operation spans (one per
/// request; not its attempts', serialization's, … spans), every span of this
/// crate, the others' spans from `INFO` up; this crate's events from `INFO`
/// up and the others' from `WARN` up. Never OpenTelemetry's own.
fn exported(meta: &Metadata<'_>) -> bool {
    let ours = meta.target().starts_with("s3_key_rotation");
    if meta.target().starts_with("opentelemetry") {
        false
    } else if meta.is_span() {
        (ours && *meta.level() <= Level::DEBUG)
            || meta.fields().field("rpc.system").is_some()
            || *meta.level() <= Level::INFO
    } else {
        *meta.level() <= if ours { Level::INFO } else { Level::WARN }
    }
}

/// [`exported`] as a per-layer filter decided once per call site.
struct Exported;

impl<S> Filter<S> for Exported {
    fn enabled(&self, meta: &Metadata<'_>, _: &LayerContext<'_, S>) -> bool {
        exported(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if exported(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // The SDK's operation spans and this crate's step spans are `DEBUG`.
        Some(LevelFilter::DEBUG)
    }
}

/// Makes the invocation's root span continue its trace: the span the
/// runtime's `OpenTelemetryLayer` opens while this layer's context is current
/// gets it as parent.
#[derive(Debug, Clone, Copy)]
struct ContinueTrace {
    /// Traces are exported.
    continues: bool,
    /// Continue the trace of the batch's messages (their `AWSTraceHeader`)
    /// when they all carry the same one.
    from_messages: bool,
}

impl<S> Layer<S> for ContinueTrace {
    type Service = ContinueTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContinueTraceService { inner, continues: self.continues, from_messages: self.from_messages }
    }
}

struct ContinueTraceService<S> {
    inner: S,
    continues: bool,
    from_messages: bool,
}

impl<S> Service<LambdaInvocation> for ContinueTraceService<S>
where
    S: Service<LambdaInvocation>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: LambdaInvocation) -> Self::Future {
        if !self.continues {
            return self.inner.call(invocation);
        }
        let header = self
            .from_messages
            .then(|| messages_trace_header(&invocation.body))
            .flatten()
            .or_else(|| invocation.context.xray_trace_id.clone());
        let _current = header.as_deref().map(parent_context).unwrap_or_default().attach();
        self.inner.call(invocation)
    }
}

/// The context an X-Ray trace header (`Root=1-…;Parent=…;Sampled=1`) names.
fn parent_context(header: &str) -> Context {
    let carrier = HashMap::from([("x-amzn-trace-id".to_owned(), header.to_owned())]);
    XrayPropagator::default().extract(&carrier)
}

/// The `AWSTraceHeader` the messages of an SQS event all carry, if they do.
fn messages_trace_header(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Batch {
        #[serde(rename = "Records", default)]
        records: Vec<Record>,
    }
    #[derive(Deserialize)]
    struct Record {
        #[serde(default)]
        attributes: Attributes,
    }
    #[derive(Deserialize, Default)]
    struct Attributes {
        #[serde(rename = "AWSTraceHeader")]
        trace_header: Option<String>,
    }
    let batch: Batch = serde_json::from_slice(body).ok()?;
    let mut headers = batch.records.into_iter().map(|r| r.attributes.trace_header);
    let first = headers.next()??;
    headers.all(|h| h.as_deref() == Some(first.as_str())).then_some(first)
}

/// The X-Ray trace header (`Root=…;Parent=…;Sampled=…`) of the current span,
/// to hand the trace on (an SQS message's `AWSTraceHeader`); `None` when no
/// trace is recorded (traces not exported).
pub fn trace_header() -> Option<String> {
    let context = Span::current().context();
    opentelemetry_aws::trace::xray_propagator::span_context_to_string(context.span().span_context())
}

/// Links `span` to the trace an X-Ray trace header names, unless `span` is
/// in that trace already: a slice's span links the trace Lambda started for
/// the invocation, or its message's trace when the root span could not
/// continue it (messages of several traces in one batch).
pub fn link_trace(span: &Span, header: Option<&str>) {
    let Some(linked) = header.and_then(opentelemetry_aws::trace::xray_propagator::span_context_from_str) else {
        return;
    };
    let own = span.context().span().span_context().trace_id();
    if linked.is_valid() && own != linked.trace_id() {
        span.add_link(linked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(ExportSettings::from_env(env(&[("OTEL_SERVICE_NAME", "x")])), None);
        assert_eq!(ExportSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), None);
        let disabled = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(ExportSettings::from_env(env(&disabled)), None);
        let none = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"), ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(ExportSettings::from_env(env(&none)), None);
    }

    #[test]
    fn the_export_timeout_is_short_unless_set() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let settings = ExportSettings::from_env(env(&[endpoint, ("AWS_LAMBDA_FUNCTION_NAME", "rotate-key")])).unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(1000));
        assert_eq!(settings.service_name, "rotate-key");
        assert!(settings.warnings.is_empty());
        let set = ExportSettings::from_env(env(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "250")])).unwrap();
        assert_eq!(set.timeout, Duration::from_millis(250));
        let bad = ExportSettings::from_env(env(&[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "1s")])).unwrap();
        assert_eq!(bad.timeout, DEFAULT_EXPORT_TIMEOUT);
        assert_eq!(bad.warnings.len(), 1, "{:?}", bad.warnings);
        let grpc = ExportSettings::from_env(env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap();
        assert!(grpc.warnings[0].contains("http/protobuf"), "{:?}", grpc.warnings);
        let named = [endpoint, ("OTEL_SERVICE_NAME", "keys"), ("AWS_LAMBDA_FUNCTION_NAME", "rotate-key")];
        assert_eq!(ExportSettings::from_env(env(&named)).unwrap().service_name, "keys");
    }

    #[test]
    fn the_root_span_continues_lambdas_x_ray_trace() {
        let context = parent_context("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1");
        let span = context.span();
        let parent = span.span_context();
        assert_eq!(parent.trace_id().to_string(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(parent.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(parent.is_sampled() && parent.is_remote());
    }

    #[test]
    fn a_batch_continues_the_trace_its_messages_share() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let record = |h: Option<&str>| match h {
            Some(h) => serde_json::json!({"messageId": "m", "body": "{}", "attributes": {"AWSTraceHeader": h}}),
            None => serde_json::json!({"messageId": "m", "body": "{}", "attributes": {}}),
        };
        let batch =
            |records: Vec<serde_json::Value>| serde_json::to_vec(&serde_json::json!({"Records": records})).unwrap();
        assert_eq!(messages_trace_header(&batch(vec![record(Some(header))])).as_deref(), Some(header));
        assert_eq!(
            messages_trace_header(&batch(vec![record(Some(header)), record(Some(header))])).as_deref(),
            Some(header)
        );
        let other = "Root=1-5759e988-00000000e1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        assert_eq!(messages_trace_header(&batch(vec![record(Some(header)), record(Some(other))])), None);
        assert_eq!(messages_trace_header(&batch(vec![record(None)])), None);
        assert_eq!(messages_trace_header(b"not an sqs event"), None);
    }

    #[test]
    fn sdk_operations_and_our_spans_are_exported_not_the_sdks_inner_spans() {
        // The metadata of real call sites: an SDK operation span has `rpc.system`.
        let operation = tracing::debug_span!("SQS.SendMessageBatch", "rpc.system" = "aws-api");
        let attempt = tracing::debug_span!(target: "aws_smithy_runtime::client::orchestrator", "try_attempt");
        let ours = tracing::debug_span!("rotation.claim");
        let info = tracing::info_span!(target: "lambda_runtime::layers::trace", "Lambda runtime invoke");
        for (span, expected) in [(operation, true), (attempt, false), (ours, true), (info, true)] {
            let meta = span.metadata().expect("a disabled span keeps its metadata");
            assert_eq!(exported(meta), expected, "{}", meta.name());
        }
    }
}
