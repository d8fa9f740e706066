//! Long-running operations of the management API: one row per operation, its state in ARM's
//! provisioning-state vocabulary. `Succeeded`, `Failed` and `Canceled` are terminal: no
//! write moves an operation out of them. At most one operation per resource is not terminal
//! ([`Store::op_insert`] checks it in the insert's own transaction). The node running an
//! operation touches its heartbeat; [`Store::op_fail_stale`] fails operations whose node
//! stopped touching it (the server was restarted or died while they ran).

use crate::{Result, Store, StoreError, i, oi, os, s};
use sqlx::any::AnyRow;

/// The states no operation leaves.
pub const TERMINAL_STATES: [&str; 3] = ["Succeeded", "Failed", "Canceled"];

/// `status NOT IN (terminal states)`, for the statements below.
macro_rules! not_terminal {
    () => {
        "status NOT IN ('Succeeded', 'Failed', 'Canceled')"
    };
}

/// One long-running operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// The operation's id (the last segment of its status and result URLs).
    pub id: String,
    /// Lowercase subscription id the operation belongs to.
    pub subscription_id: String,
    /// The resource provider namespace (lowercase) of its URLs.
    pub namespace: String,
    /// The location segment of its URLs (normalised: lowercase, no spaces).
    pub location: String,
    /// The resource the operation works on (the caller's casing).
    pub resource_id: String,
    /// What it does: `create`, `update`, `delete` or `action:{name}`.
    pub kind: String,
    /// `Accepted`, `Provisioning`, `Updating`, `Deleting`, `Succeeded`, `Failed`, `Canceled`.
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// JSON of an action's result, when it has one.
    pub result: Option<String>,
    /// The object id of the principal that started it.
    pub caller: String,
    /// Unix seconds.
    pub start_time: i64,
    pub end_time: Option<i64>,
    pub heartbeat_at: i64,
}

impl OperationRecord {
    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATES.contains(&self.status.as_str())
    }
}

fn op(r: &AnyRow) -> Result<OperationRecord> {
    Ok(OperationRecord {
        id: s(r, "id")?,
        subscription_id: s(r, "subscription_id")?,
        namespace: s(r, "namespace_lc")?,
        location: s(r, "location")?,
        resource_id: s(r, "resource_id")?,
        kind: s(r, "kind")?,
        status: s(r, "status")?,
        error_code: os(r, "error_code")?,
        error_message: os(r, "error_message")?,
        result: os(r, "result")?,
        caller: s(r, "caller")?,
        start_time: i(r, "start_time")?,
        end_time: oi(r, "end_time")?,
        heartbeat_at: i(r, "heartbeat_at")?,
    })
}

impl Store {
    /// Records a new operation, unless another operation on the same resource is not yet
    /// terminal: then nothing is written and the answer is [`StoreError::Conflict`] naming
    /// the running operation's id. The check and the insert are one transaction (the table
    /// is locked on PostgreSQL), so of two concurrent starts on one resource one wins.
    pub async fn op_insert(&self, o: &OperationRecord) -> Result<()> {
        let mut tx = self.write_tx_locking(&["operations"]).await?;
        let running = sqlx::query(concat!(
            "SELECT id FROM operations WHERE resource_id_lc = $1 AND ",
            not_terminal!()
        ))
        .bind(o.resource_id.to_lowercase())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = running {
            return Err(StoreError::Conflict(s(&r, "id")?));
        }
        sqlx::query(
            "INSERT INTO operations (id, subscription_id, namespace_lc, location, resource_id, resource_id_lc, kind, status, error_code, error_message, result, caller, start_time, end_time, heartbeat_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)",
        )
        .bind(&o.id)
        .bind(o.subscription_id.to_lowercase())
        .bind(o.namespace.to_lowercase())
        .bind(&o.location)
        .bind(&o.resource_id)
        .bind(o.resource_id.to_lowercase())
        .bind(&o.kind)
        .bind(&o.status)
        .bind(&o.error_code)
        .bind(&o.error_message)
        .bind(&o.result)
        .bind(&o.caller)
        .bind(o.start_time)
        .bind(o.end_time)
        .bind(o.heartbeat_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::map_unique(e, "operation id exists"))?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn op_get(&self, id: &str) -> Result<Option<OperationRecord>> {
        let r = sqlx::query("SELECT * FROM operations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(op).transpose()
    }

    /// The operation on a resource that is not yet terminal, if any.
    pub async fn op_running_for(&self, resource_id: &str) -> Result<Option<OperationRecord>> {
        let r = sqlx::query(concat!(
            "SELECT * FROM operations WHERE resource_id_lc = $1 AND ",
            not_terminal!()
        ))
        .bind(resource_id.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(op).transpose()
    }

    /// Moves an operation to `status` (with the error of a failure, the end time of a
    /// terminal state, and the result of an action), touching its heartbeat. Returns false,
    /// having written nothing, when the operation is unknown or already terminal: no write
    /// leaves a terminal state.
    pub async fn op_update_state(
        &self,
        id: &str,
        status: &str,
        error: Option<(&str, &str)>,
        end_time: Option<i64>,
        result: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(concat!("UPDATE operations SET status = $2, error_code = $3, error_message = $4, end_time = $5, result = COALESCE($6, result), heartbeat_at = $7 WHERE id = $1 AND ", not_terminal!()))
        .bind(id)
        .bind(status)
        .bind(error.map(|e| e.0.to_string()))
        .bind(error.map(|e| e.1.to_string()))
        .bind(end_time)
        .bind(result.map(str::to_string))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Touches the heartbeat of a running operation; false when it is terminal or unknown.
    pub async fn op_heartbeat(&self, id: &str, now: i64) -> Result<bool> {
        let r = sqlx::query(concat!(
            "UPDATE operations SET heartbeat_at = $2 WHERE id = $1 AND ",
            not_terminal!()
        ))
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Fails every operation that is not terminal and whose heartbeat is older than
    /// `stale_before` (unix seconds), with the given error, and returns the operations this
    /// call failed. Each row is failed by a statement that checks both conditions again, so
    /// an operation whose node touched it meanwhile is left alone, and of two nodes sweeping
    /// at once each operation is failed (and reported) once.
    pub async fn op_fail_stale(
        &self,
        stale_before: i64,
        code: &str,
        message: &str,
        now: i64,
    ) -> Result<Vec<OperationRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT * FROM operations WHERE ",
            not_terminal!(),
            " AND heartbeat_at < $1"
        ))
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        let mut failed = vec![];
        for r in &rows {
            let mut o = op(r)?;
            let done = sqlx::query(concat!("UPDATE operations SET status = 'Failed', error_code = $2, error_message = $3, end_time = $4 WHERE id = $1 AND ", not_terminal!(), " AND heartbeat_at < $5"))
            .bind(&o.id)
            .bind(code)
            .bind(message)
            .bind(now)
            .bind(stale_before)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                o.status = "Failed".into();
                o.error_code = Some(code.into());
                o.error_message = Some(message.into());
                o.end_time = Some(now);
                failed.push(o);
            }
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a fresh SQLite file, and on a fresh PostgreSQL database when
    /// CLOISTER_TEST_PG is set.
    async fn stores() -> Vec<Store> {
        crate::tests_support::stores("ops").await
    }

    fn rec(id: &str, resource: &str) -> OperationRecord {
        OperationRecord {
            id: id.into(),
            subscription_id: "SUB-A".into(),
            namespace: "Contoso.Slow".into(),
            location: "westus".into(),
            resource_id: resource.into(),
            kind: "create".into(),
            status: "Accepted".into(),
            error_code: None,
            error_message: None,
            result: None,
            caller: "oid-1".into(),
            start_time: 100,
            end_time: None,
            heartbeat_at: 100,
        }
    }

    #[tokio::test]
    async fn operations_move_forward_only_and_one_runs_per_resource() {
        for st in stores().await {
            let res = "/subscriptions/sub-a/resourceGroups/g/providers/Contoso.Slow/things/T1";
            st.op_insert(&rec("op1", res)).await.unwrap();
            let got = st.op_get("op1").await.unwrap().unwrap();
            assert_eq!(got.subscription_id, "sub-a");
            assert_eq!(got.namespace, "contoso.slow");
            assert_eq!(got.status, "Accepted");
            assert!(!got.is_terminal());
            assert!(st.op_get("nope").await.unwrap().is_none());

            // A second operation on the same resource (any casing) is refused while the first runs.
            let e = st
                .op_insert(&rec("op2", &res.to_uppercase()))
                .await
                .unwrap_err();
            assert!(
                matches!(e, StoreError::Conflict(ref id) if id == "op1"),
                "{e}"
            );
            assert!(st.op_get("op2").await.unwrap().is_none());
            assert_eq!(
                st.op_running_for(&res.to_lowercase())
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
                "op1"
            );

            assert!(
                st.op_update_state("op1", "Provisioning", None, None, None, 101)
                    .await
                    .unwrap()
            );
            assert!(
                st.op_update_state(
                    "op1",
                    "Failed",
                    Some(("Boom", "it broke")),
                    Some(102),
                    None,
                    102
                )
                .await
                .unwrap()
            );
            // Terminal: nothing moves it again, not even to another terminal state.
            for s2 in ["Succeeded", "Provisioning", "Failed", "Canceled"] {
                assert!(
                    !st.op_update_state("op1", s2, None, Some(103), None, 103)
                        .await
                        .unwrap()
                );
            }
            assert!(!st.op_heartbeat("op1", 104).await.unwrap());
            let got = st.op_get("op1").await.unwrap().unwrap();
            assert_eq!(got.status, "Failed");
            assert_eq!(got.error_code.as_deref(), Some("Boom"));
            assert_eq!(got.error_message.as_deref(), Some("it broke"));
            assert_eq!(got.end_time, Some(102));
            assert!(st.op_running_for(res).await.unwrap().is_none());

            // Once it is terminal, the next operation on the resource may start.
            st.op_insert(&rec("op2", res)).await.unwrap();
            assert!(
                !st.op_update_state("unknown", "Succeeded", None, None, None, 1)
                    .await
                    .unwrap()
            );
            // An action's result is kept.
            assert!(
                st.op_update_state("op2", "Succeeded", None, Some(5), Some("{\"k\":1}"), 5)
                    .await
                    .unwrap()
            );
            assert_eq!(
                st.op_get("op2").await.unwrap().unwrap().result.as_deref(),
                Some("{\"k\":1}")
            );
        }
    }

    #[tokio::test]
    async fn stale_operations_are_failed_once_and_live_ones_kept() {
        for st in stores().await {
            let mut a = rec(
                "stale",
                "/subscriptions/sub-a/resourceGroups/g/providers/X.Y/z/a",
            );
            a.heartbeat_at = 10;
            let mut b = rec(
                "live",
                "/subscriptions/sub-a/resourceGroups/g/providers/X.Y/z/b",
            );
            b.heartbeat_at = 50;
            let mut c = rec(
                "done",
                "/subscriptions/sub-a/resourceGroups/g/providers/X.Y/z/c",
            );
            c.heartbeat_at = 1;
            for o in [&a, &b, &c] {
                st.op_insert(o).await.unwrap();
            }
            st.op_update_state("done", "Succeeded", None, Some(2), None, 2)
                .await
                .unwrap();
            // `done` was touched at 2 by its update, but it is terminal anyway.
            let failed = st
                .op_fail_stale(40, "OperationInterrupted", "restarted", 60)
                .await
                .unwrap();
            let ids: Vec<_> = failed.iter().map(|o| o.id.as_str()).collect();
            assert_eq!(ids, ["stale"]);
            assert_eq!(failed[0].status, "Failed");
            let s = st.op_get("stale").await.unwrap().unwrap();
            assert_eq!(s.status, "Failed");
            assert_eq!(s.error_code.as_deref(), Some("OperationInterrupted"));
            assert_eq!(s.end_time, Some(60));
            assert_eq!(st.op_get("live").await.unwrap().unwrap().status, "Accepted");
            assert_eq!(
                st.op_get("done").await.unwrap().unwrap().status,
                "Succeeded"
            );
            // A second sweep reports nothing new.
            assert!(
                st.op_fail_stale(40, "OperationInterrupted", "restarted", 61)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // A heartbeat keeps an operation alive past a later cutoff.
            assert!(st.op_heartbeat("live", 100).await.unwrap());
            assert!(
                st.op_fail_stale(90, "OperationInterrupted", "restarted", 101)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
