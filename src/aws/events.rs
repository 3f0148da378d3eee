//! Notifications on an EventBridge bus (source `s3-key-rotation`).

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::classify;
use crate::core::ports::{Notification, Notifier, PortError};

/// The `source` of every event this system publishes.
pub const SOURCE: &str = "s3-key-rotation";

#[derive(Debug, Clone)]
pub struct EventBus {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBus {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        Self { client, bus: bus.into() }
    }
}

#[async_trait]
impl Notifier for EventBus {
    async fn publish(&self, notifications: &[Notification]) -> Result<(), PortError> {
        // PutEvents takes at most 10 entries.
        for chunk in notifications.chunks(10) {
            let entries: Vec<PutEventsRequestEntry> = chunk
                .iter()
                .map(|n| {
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(SOURCE)
                        .detail_type(n.detail_type)
                        .detail(n.detail.to_string())
                        .build()
                })
                .collect();
            let output = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("events", "PutEvents", &e))?;
            if output.failed_entry_count() > 0 {
                let codes: Vec<&str> = output.entries().iter().filter_map(|e| e.error_code()).collect();
                return Err(PortError::Unavailable {
                    service: "events",
                    operation: "PutEvents",
                    detail: format!(
                        "{} of {} entries failed: {}",
                        output.failed_entry_count(),
                        chunk.len(),
                        codes.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}
