//! The queue of the sweep's slices (SQS).

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::classify;
use crate::core::fanout::SliceQueue;
use crate::core::ports::PortError;

/// SQS takes at most ten messages in one request.
const BATCH: usize = 10;

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
    async fn send(&self, bodies: &[String]) -> Result<(), PortError> {
        for batch in bodies.chunks(BATCH) {
            let mut pending: Vec<(String, &String)> =
                batch.iter().enumerate().map(|(i, body)| (i.to_string(), body)).collect();
            // Entries SQS refused on its side (throttled, say) are sent again.
            for attempt in 0..5u64 {
                if attempt > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                }
                let entries = pending
                    .iter()
                    .map(|(id, body)| SendMessageBatchRequestEntry::builder().id(id).message_body(*body).build())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| PortError::Unavailable {
                        service: "sqs",
                        operation: "SendMessageBatch",
                        detail: e.to_string(),
                    })?;
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
