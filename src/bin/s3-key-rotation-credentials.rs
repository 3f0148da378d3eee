//! `s3-key-rotation-credentials`: an AWS `credential_process` that hands a
//! consumer the org's current key from the key vault, so that the consumer
//! follows every rotation by itself.
//!
//! ```ini
//! [profile org-logs]
//! credential_process = s3-key-rotation-credentials --secret-id arn:aws:secretsmanager:…:secret:s3-key-rotation/org-7654321-AbCdEf --profile log-reader
//! ```
//!
//! It reads the secret's `AWSCURRENT` version with the reader's own
//! credentials (`--profile`, else the default chain) and prints
//! `{"Version": 1, "AccessKeyId", "SecretAccessKey", "Expiration"}` with
//! `Expiration` = now + `--refresh`. On any failure: nothing on stdout, one
//! line on stderr naming the secret and the AWS error code (never a secret),
//! exit status 1 (2: bad usage). It links only the SDK, the CLI parser and the
//! crate's duration parser, none of the functions' code. docs/consumers.md
//! tells how to use it.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::date_time::{DateTime, Format};
use clap::error::ErrorKind;
use clap::Parser;
use s3_key_rotation::aws::mask_secrets;
use s3_key_rotation::core::duration::Duration;

const NAME: &str = "s3-key-rotation-credentials";
/// Set in this process's environment, so inherited by any process its
/// credentials run: found at start, it means the reader's credentials lead
/// back to this command, which would otherwise run itself without end.
const RUNNING: &str = "S3_KEY_ROTATION_CREDENTIALS_RUNNING";
const MIN_REFRESH: Duration = Duration::from_secs(60);
const MAX_REFRESH: Duration = Duration::from_hours(12);
/// The longest text from elsewhere (an AWS message, a cause) that the stderr line carries.
const LINE_LIMIT: usize = 1000;
/// The whole call, credentials (an AssumeRole for a role profile) included.
const CALL_TIMEOUT: StdDuration = StdDuration::from_secs(30);

/// Prints the org's current S3 access key from the key vault as an AWS
/// `credential_process` answer.
#[derive(Debug, Parser)]
#[command(name = NAME, version, after_help = "\
Example, in ~/.aws/config:\n\n  [profile org-logs]\n  credential_process = s3-key-rotation-credentials \
--secret-id arn:aws:secretsmanager:us-east-1:123456789012:secret:s3-key-rotation/org-7654321-AbCdEf --profile \
log-reader\n\nExit status: 0 the key is on stdout; 1 it could not be read (one line on stderr says why); 2 bad \
usage.")]
struct Args {
    /// The org's secret: its full ARN, as `s3-key-rotation enroll --reader-principal` and
    /// `s3-key-rotation status --org N` print it (a bare name is looked up in the reader's own account).
    #[arg(long, value_name = "ARN")]
    secret_id: String,
    /// The reader's own profile (the principal the secret's policy names), never the profile whose
    /// credential_process is this command. Without it: the default credentials chain.
    #[arg(long)]
    profile: Option<String>,
    /// The secret's region (default: the ARN's, else the profile's or AWS_REGION).
    #[arg(long)]
    region: Option<String>,
    /// How long the printed key is used before the vault is read again: `Expiration` is now plus
    /// this (1m to 12h). botocore reads again when 15 minutes remain, so 30m reads every 15 minutes.
    #[arg(long, default_value = "30m", value_parser = parse_refresh)]
    refresh: Duration,
}

fn parse_refresh(text: &str) -> Result<Duration, String> {
    let refresh: Duration = text.parse().map_err(|e| format!("{e}"))?;
    if refresh < MIN_REFRESH || refresh > MAX_REFRESH {
        return Err(format!("{refresh} is not within {MIN_REFRESH} to {MAX_REFRESH}"));
    }
    Ok(refresh)
}

/// The access key in the secret's value.
struct Key {
    id: String,
    secret: String,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => return fail(2, &first_line(&e.to_string())),
    };
    if std::env::var_os(RUNNING).is_some() {
        return fail(
            2,
            &format!(
                "secret {}: the reader's credentials{} come from {NAME} itself (a loop): name the reader's own profile \
                 with --profile, never the profile whose credential_process is this command",
                printable(&args.secret_id),
                args.profile.as_deref().map(|p| format!(" (profile {})", printable(p))).unwrap_or_default()
            ),
        );
    }
    // Before any thread exists: every process started from here inherits it.
    std::env::set_var(RUNNING, "1");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &format!("cannot start: {e}")),
    };
    let key = match runtime.block_on(current_key(&args)) {
        Ok(key) => key,
        Err(reason) => return fail(1, &format!("secret {}: {reason}", printable(&args.secret_id))),
    };
    let answer = serde_json::json!({
        "Version": 1,
        "AccessKeyId": key.id,
        "SecretAccessKey": key.secret,
        "Expiration": expiration(SystemTime::now(), args.refresh),
    });
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{answer}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &format!("secret {}: cannot write the answer: {e}", printable(&args.secret_id))),
    }
}

/// `now` (whole seconds, rounded down) plus `refresh`, in RFC 3339: never later than now + refresh.
fn expiration(now: SystemTime, refresh: Duration) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DateTime::from_secs((secs + refresh.as_secs()) as i64).fmt(Format::DateTime).expect("a UTC time formats")
}

/// The region of a secret's ARN (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`).
fn arn_region(secret_id: &str) -> Option<&str> {
    let parts: Vec<&str> = secret_id.splitn(7, ':').collect();
    (parts.len() == 7 && parts[0] == "arn" && parts[2] == "secretsmanager" && !parts[3].is_empty()).then(|| parts[3])
}

async fn current_key(args: &Args) -> Result<Key, String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(TimeoutConfig::builder().operation_timeout(CALL_TIMEOUT).build());
    if let Some(region) = args.region.as_deref().or_else(|| arn_region(&args.secret_id)) {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(profile) = &args.profile {
        loader = loader.profile_name(profile);
    }
    let config = loader.load().await;
    let mut client = aws_sdk_secretsmanager::config::Builder::from(&config);
    if let Some(profile) = &args.profile {
        // The profile's credentials only: not the environment's keys, which the default
        // chain would put first (the consumer's process may hold others).
        let provider = ProfileFileCredentialsProvider::builder()
            .configure(&ProviderConfig::default().with_region(config.region().cloned()))
            .profile_name(profile)
            .build();
        client = client.credentials_provider(provider);
    }
    let client = aws_sdk_secretsmanager::Client::from_conf(client.build());
    let out = client
        .get_secret_value()
        .secret_id(&args.secret_id)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .map_err(|e| aws_failure(&e))?;
    let malformed =
        || "its AWSCURRENT value is not an access key (JSON with accessKeyId and secretAccessKey)".to_owned();
    let value: serde_json::Value =
        serde_json::from_str(out.secret_string().ok_or_else(malformed)?).map_err(|_| malformed())?;
    match (value["accessKeyId"].as_str(), value["secretAccessKey"].as_str()) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(Key { id: id.to_owned(), secret: secret.to_owned() })
        }
        _ => Err(malformed()),
    }
}

/// The AWS error code and message; else (no answer from AWS) what failed: the
/// reader's credentials, the endpoint, the time; each cause once.
fn aws_failure<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E>) -> String {
    if let Some(code) = err.code() {
        return match err.message().map(printable).filter(|m| !m.is_empty()) {
            Some(message) => format!("{code}: {message}"),
            None => code.to_owned(),
        };
    }
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        chain.push(cause);
        source = cause.source();
    }
    // A failure to get the reader's credentials: what the provider says past its own
    // generic words ("the credential provider was not enabled").
    let credentials = chain.iter().position(|c| c.is::<CredentialsError>());
    let (kind, causes) = match (credentials, err) {
        (Some(i), _) if i + 1 < chain.len() => ("no credentials", &chain[i + 1..]),
        (Some(i), _) => ("no credentials", &chain[i..]),
        (None, SdkError::TimeoutError(_)) => ("no answer within 30s", &chain[..]),
        (None, SdkError::DispatchFailure(e)) if e.is_io() || e.is_timeout() => {
            ("Secrets Manager could not be reached", &chain[..])
        }
        _ => ("the request failed", &chain[..]),
    };
    let mut said: Vec<String> = Vec::new();
    for cause in causes {
        let text = printable(&cause.to_string());
        if !text.is_empty() && !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
    }
    if said.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {}", said.join(": "))
    }
}

/// Text made safe for the one stderr line: blanks (new lines included) as one space, at
/// most [`LINE_LIMIT`] characters, and any run of 40 characters of a secret access key's
/// alphabet masked.
fn printable(text: &str) -> String {
    let out = mask_secrets(text);
    let trimmed = out.trim();
    match trimmed.char_indices().nth(LINE_LIMIT) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

/// The first paragraph of a usage error (clap's message, without its usage and help lines).
fn first_line(text: &str) -> String {
    let paragraph: Vec<&str> = text.trim_start().lines().take_while(|l| !l.trim().is_empty()).collect();
    match printable(&paragraph.join(" ")) {
        line if line.is_empty() => "bad usage".to_owned(),
        line => line,
    }
}

fn fail(status: u8, line: &str) -> ExitCode {
    eprintln!("{NAME}: {line}");
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_now_plus_the_refresh_rounded_down_never_later() {
        let now = UNIX_EPOCH + StdDuration::from_millis(1_796_000_000_900);
        assert_eq!(expiration(now, Duration::from_secs(1800)), "2026-11-30T01:23:20Z");
        assert_eq!(parse_refresh("30m").unwrap(), Duration::from_secs(1800));
        for bad in ["59s", "13h", "30", "0m", "-1m"] {
            assert!(parse_refresh(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_region_comes_from_a_secret_arn_only() {
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:s3-key-rotation/org-7-AbCdEf";
        assert_eq!(arn_region(arn), Some("eu-west-1"));
        assert_eq!(arn_region("s3-key-rotation/org-7"), None);
        assert_eq!(arn_region("arn:aws:s3:::logs"), None);
    }

    #[test]
    fn a_stderr_line_is_one_line_without_anything_shaped_like_a_secret() {
        let text = "bad\n  thing wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1 AKIAIOSFODNN7EXAMPLE";
        assert_eq!(printable(text), "bad thing *** AKIAIOSFODNN7EXAMPLE");
        assert_eq!(first_line("\nerror: x\n  --y <Y>\n\nUsage: z"), "error: x --y <Y>");
    }
}
