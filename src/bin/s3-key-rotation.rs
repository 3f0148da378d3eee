//! Operator CLI of s3-key-rotation: the command line parsed, the command run,
//! its exit code. The commands are in [`s3_key_rotation::cli`].

use std::process::ExitCode;

use clap::Parser;
use s3_key_rotation::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    Cli::parse().run().await
}
