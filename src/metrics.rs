//! CloudWatch metrics as embedded-metric-format (EMF) log lines: a function
//! prints one JSON line on stdout, CloudWatch Logs extracts its metrics
//! (namespace [`NAMESPACE`]). No API call, no permission: the log is enough.
//! What each function publishes is next to its glue (`scheduled.rs` for the
//! sweep, [`rotation_line`] for rotate-key); the dashboard and the alarms of
//! `template.yaml` read them.

use serde_json::{json, Map, Value};

/// The namespace of every metric of the project.
pub const NAMESPACE: &str = "S3KeyRotation";

/// One EMF line: metric directives, and the fields that hold the metrics'
/// values and the dimensions' values.
#[derive(Debug, Clone)]
pub struct Line {
    timestamp_ms: i64,
    directives: Vec<Value>,
    fields: Map<String, Value>,
}

impl Line {
    /// A line whose metrics count at `timestamp_ms` (milliseconds since the epoch).
    pub fn new(timestamp_ms: i64) -> Self {
        Self { timestamp_ms, directives: Vec::new(), fields: Map::new() }
    }

    /// Publishes `metrics` (name, unit, value) under each of the `dimensions`
    /// sets (`&[]`: the metric without dimensions); the dimensions' values are
    /// fields of the line ([`Line::field`]).
    pub fn metrics(mut self, dimensions: &[&[&str]], metrics: &[(&str, &str, u64)]) -> Self {
        self.directives.push(json!({
            "Namespace": NAMESPACE,
            "Dimensions": dimensions,
            "Metrics": metrics.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
        }));
        for (name, _, value) in metrics {
            self.fields.insert((*name).to_owned(), (*value).into());
        }
        self
    }

    /// A field of the line: a dimension's value, or context for a reader of the log.
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.fields.clone();
        line.insert("_aws".into(), json!({"Timestamp": self.timestamp_ms, "CloudWatchMetrics": self.directives}));
        write!(f, "{}", Value::Object(line))
    }
}

/// `Rotations` by `Trigger` (`api`, `schedule`, `operator`: the rotation
/// request's trigger as the registry writes it): the dashboard's rotations per hour.
pub fn rotation_line(trigger: crate::core::domain::Trigger, count: usize, timestamp_ms: i64) -> Line {
    let trigger = serde_json::to_value(trigger).unwrap_or_default();
    Line::new(timestamp_ms).metrics(&[&["Trigger"]], &[("Rotations", "Count", count as u64)]).field("Trigger", trigger)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::domain::Trigger;

    /// Every metric a directive declares has a numeric value, and every
    /// dimension a value, in the line: what CloudWatch requires to extract it.
    pub(crate) fn assert_valid_emf(text: &str) -> Value {
        let line: Value = serde_json::from_str(text).unwrap();
        assert!(line["_aws"]["Timestamp"].is_i64(), "{text}");
        let directives = line["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert!(!directives.is_empty(), "{text}");
        for directive in directives {
            assert_eq!(directive["Namespace"], NAMESPACE);
            for set in directive["Dimensions"].as_array().unwrap() {
                for key in set.as_array().unwrap() {
                    assert!(line[key.as_str().unwrap()].is_string(), "dimension {key} has a value: {text}");
                }
            }
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                assert!(line[name].is_number(), "{name} has a value: {text}");
            }
        }
        line
    }

    #[test]
    fn a_rotation_counts_by_its_trigger() {
        let line = assert_valid_emf(&rotation_line(Trigger::Api, 1, 1_795_323_071_000).to_string());
        assert_eq!(line["Trigger"], "api");
        assert_eq!(line["Rotations"], 1);
        assert_eq!(line["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Trigger"]]));
        assert_eq!(line["_aws"]["Timestamp"], 1_795_323_071_000i64);
    }
}
