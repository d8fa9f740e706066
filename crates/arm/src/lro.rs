//! Long-running operations in the shapes azure-core's and azure-mgmt-core's pollers follow
//! (`ARMPolling`): a PUT answers `201` with `Azure-AsyncOperation` (and `Location`), a PATCH,
//! DELETE or POST action `202` with `Location` (and `Azure-AsyncOperation`), and `Retry-After`.
//! The `Azure-AsyncOperation` URL answers an operation-status body whose `status` ends in
//! `Succeeded`, `Failed` or `Canceled`; the `Location` URL answers `202` until the operation
//! ends, then the final result (`200` with a body, or `204`). A resource's
//! `properties.provisioningState` moves through the same states.

use http::HeaderValue;
use serde_json::{Value, json};

/// ARM's provisioning states (and operation-status `status` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Accepted,
    Provisioning,
    Updating,
    Deleting,
    Succeeded,
    Failed,
    Canceled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Accepted => "Accepted",
            State::Provisioning => "Provisioning",
            State::Updating => "Updating",
            State::Deleting => "Deleting",
            State::Succeeded => "Succeeded",
            State::Failed => "Failed",
            State::Canceled => "Canceled",
        }
    }
    /// Parses a stored or received value (case-insensitive, as the pollers compare).
    pub fn parse(s: &str) -> Option<State> {
        Some(match s.to_ascii_lowercase().as_str() {
            "accepted" => State::Accepted,
            "provisioning" | "creating" => State::Provisioning,
            "updating" => State::Updating,
            "deleting" => State::Deleting,
            "succeeded" => State::Succeeded,
            "failed" => State::Failed,
            "canceled" | "cancelled" => State::Canceled,
            _ => return None,
        })
    }
    /// `Succeeded`, `Failed` and `Canceled` end an operation.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Canceled)
    }
    /// Whether an operation may move from `self` to `next` (no way back from a terminal state).
    pub fn can_move_to(self, next: State) -> bool {
        !self.is_terminal() || self == next
    }
}

/// An operation's record, as its status URL reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The operation's own ARM id (the status URL's path).
    pub id: String,
    /// Its name (the last segment of `id`).
    pub name: String,
    pub state: State,
    /// Unix seconds.
    pub start_time: i64,
    pub end_time: Option<i64>,
    /// `(code, message)` of a failure.
    pub error: Option<(String, String)>,
    /// The resource the operation works on (for the final GET).
    pub resource_id: Option<String>,
    pub percent_complete: Option<u8>,
}

impl Operation {
    /// The operation-status body (`Azure-AsyncOperation` URL).
    pub fn status_body(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "status": self.state.as_str(),
            "startTime": crate::system_data::rfc3339(self.start_time),
        });
        if let Some(t) = self.end_time {
            v["endTime"] = json!(crate::system_data::rfc3339(t));
        }
        if let Some(p) = self.percent_complete {
            v["percentComplete"] = json!(p);
        }
        if let Some((code, message)) = &self.error {
            v["error"] = json!({"code": code, "message": message});
        }
        if let Some(r) = &self.resource_id {
            v["resourceId"] = json!(r);
        }
        v
    }
}

/// The headers of a `201`/`202` that starts an operation: `Azure-AsyncOperation` (status URL),
/// `Location` (result URL), `Retry-After` (seconds) and `x-ms-async-operation-timeout`.
pub fn start_headers(
    status_url: &str,
    location_url: &str,
    retry_after_secs: u32,
) -> Vec<(&'static str, HeaderValue)> {
    let mut h = vec![];
    if let Ok(v) = HeaderValue::from_str(status_url) {
        h.push(("azure-asyncoperation", v));
    }
    if let Ok(v) = HeaderValue::from_str(location_url) {
        h.push(("location", v));
    }
    h.push(("retry-after", HeaderValue::from(retry_after_secs)));
    h.push((
        "x-ms-async-operation-timeout",
        HeaderValue::from_static("PT1H"),
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_bodies() {
        for s in [
            "Accepted",
            "provisioning",
            "UPDATING",
            "Deleting",
            "Succeeded",
            "failed",
            "Canceled",
        ] {
            assert!(State::parse(s).is_some(), "{s}");
        }
        assert!(State::parse("Running").is_none());
        assert!(State::Succeeded.is_terminal() && !State::Accepted.is_terminal());
        assert!(!State::Failed.can_move_to(State::Succeeded));
        assert!(State::Accepted.can_move_to(State::Provisioning));
        let op = Operation {
            id: "/subscriptions/s/providers/X.Y/locations/westus/operationStatuses/op1".into(),
            name: "op1".into(),
            state: State::Failed,
            start_time: 0,
            end_time: Some(5),
            error: Some(("DeploymentFailed".into(), "the image did not start".into())),
            resource_id: None,
            percent_complete: None,
        };
        let b = op.status_body();
        assert_eq!(b["status"], "Failed");
        assert_eq!(b["error"]["code"], "DeploymentFailed");
        assert_eq!(b["endTime"], "1970-01-01T00:00:05Z");
        let h = start_headers(
            "https://h/op?api-version=1",
            "https://h/res?api-version=1",
            5,
        );
        assert_eq!(h[0].0, "azure-asyncoperation");
        assert_eq!(h[2].1, "5");
    }
}
