//! The queue of the sweep's slices (SQS).
//!
//! Each message carries the dispatcher's trace in the `AWSTraceHeader`
//! message system attribute (X-Ray's header: `Root=…;Parent=…;Sampled=…`),
//! the attribute SQS and X-Ray themselves use: it counts against neither the
//! message's size nor its ten message attributes, and Lambda's event source
//! mapping hands it to sweep-worker in the record's `attributes`, whose
//! invocation continues that trace (see `crate::telemetry`). Without traces
//! (none exported) the attribute is not sent.

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, SendMessageBatchRequestEntry,
};

use super::classify;
use crate::core::fanout::SliceQueue;
use crate::core::ports::PortError;

/// SQS takes at most ten messages in one request…
const BATCH: usize = 10;
/// …of at most 256 KiB together.
const BATCH_BYTES: usize = 256 * 1024;

/// `bodies` in batches SQS takes: at most ten, and at most 256 KiB together.
fn batches(bodies: &[String]) -> Vec<&[String]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, body) in bodies.iter().enumerate() {
        if i > start && (i - start == BATCH || bytes + body.len() > BATCH_BYTES) {
            batches.push(&bodies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += body.len();
    }
    if start < bodies.len() {
        batches.push(&bodies[start..]);
    }
    batches
}

#[derive(Debug, Clone)]
pub struct SqsSlices {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsSlices {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self { client, queue_url: queue_url.into() }
    }
}

#[async_trait]
impl SliceQueue for SqsSlices {
    async fn deliver_again_after(&self, receipt_handle: &str, after: std::time::Duration) -> Result<(), PortError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(i32::try_from(after.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| classify("sqs", "ChangeMessageVisibility", &e))?;
        Ok(())
    }

    async fn send(&self, bodies: &[String]) -> Result<(), PortError> {
        let unavailable = |e: aws_sdk_sqs::error::BuildError| PortError::Unavailable {
            service: "sqs",
            operation: "SendMessageBatch",
            detail: e.to_string(),
        };
        let trace = match crate::telemetry::trace_header() {
            Some(header) => Some(
                MessageSystemAttributeValue::builder()
                    .data_type("String")
                    .string_value(header)
                    .build()
                    .map_err(unavailable)?,
            ),
            None => None,
        };
        for batch in batches(bodies) {
            let mut pending: Vec<(String, &String)> =
                batch.iter().enumerate().map(|(i, body)| (i.to_string(), body)).collect();
            // Entries SQS refused on its side (throttled, say) are sent again.
            for attempt in 0..5u64 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                let entries = pending
                    .iter()
                    .map(|(id, body)| {
                        let entry = SendMessageBatchRequestEntry::builder().id(id).message_body(*body);
                        match &trace {
                            Some(trace) => entry.message_system_attributes(
                                MessageSystemAttributeNameForSends::AwsTraceHeader,
                                trace.clone(),
                            ),
                            None => entry,
                        }
                        .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                let output = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| classify("sqs", "SendMessageBatch", &e))?;
                let failed: Vec<&str> = output.failed().iter().map(|f| f.id()).collect();
                pending.retain(|(id, _)| failed.contains(&id.as_str()));
                if pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                return Err(PortError::Unavailable {
                    service: "sqs",
                    operation: "SendMessageBatch",
                    detail: format!("{} messages were refused five times", pending.len()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_to_ten_messages_and_256_kib() {
        let small: Vec<String> = (0..25).map(|i| format!("slice {i}")).collect();
        assert_eq!(batches(&small).iter().map(|b| b.len()).collect::<Vec<_>>(), [10, 10, 5]);
        // Slices of 1,000 orgs with the longest ids are about 51 KiB each.
        let large: Vec<String> = (0..12).map(|_| "x".repeat(51 * 1024)).collect();
        let sizes: Vec<usize> = batches(&large).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [5, 5, 2]);
        assert!(batches(&large).iter().all(|b| b.iter().map(String::len).sum::<usize>() <= BATCH_BYTES));
        assert_eq!(batches(&large).concat(), large, "every body once, in order");
        assert!(batches(&[]).is_empty());
    }
}
