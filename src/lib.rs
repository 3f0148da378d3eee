//! s3-key-rotation: rotates the IAM access keys through which each
//! organization reads its provider-managed S3 bucket.
//!
//! - [`core`]: domain, rotation protocol, enrollment, ports (no I/O of its own);
//! - [`aws`]: the ports implemented with the AWS SDK for Rust;
//! - [`api`]: HTTP glue of the API Gateway functions;
//! - [`scheduled`]: EventBridge glue of the scheduled evaluation;
//! - [`cli`]: the operator CLI's commands, one file a group of them;
//! - [`metrics`]: CloudWatch metrics as embedded-metric-format log lines;
//! - [`config`]: the environment, read once at start-up;
//! - [`telemetry`]: logs and OpenTelemetry traces, set up once for every function.

pub mod api;
pub mod aws;
pub mod cli;
pub mod config;
pub mod core;
pub mod metrics;
pub mod scheduled;
pub mod telemetry;
