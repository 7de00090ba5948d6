//! Requests as their API views: one request with its approval decisions, or list rows.

use portcullis_proto::api::{ApprovalView, ExecError, RequestView};
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::clock;
use crate::error::ApiError;
use crate::lifecycle::{parse, parse_uuid};

/// The columns of `requests` a [`RequestView`] is read from, in the order [`row_to_view`]
/// reads them (one request; list queries select fewer).
macro_rules! view_columns {
    () => {
        "id, connection, kind, environment, class, state, decision, requester, reason, statement, created_at_ms, updated_at_ms, \
         approved_at_ms, dispatched_at_ms, started_at_ms, finished_at_ms, agent, error_code, error_message, explain, requester_user_id, \
         steps, current_step, policy_rule_name, break_glass_id, reviewed_by, reviewed_at_ms, preview"
    };
}
pub(crate) use view_columns;

/// Loads a request as its view. `None` when it does not exist.
pub async fn load_view(
    state: &AppState,
    id: Uuid,
) -> Result<Option<(RequestView, String)>, ApiError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        view_columns!(),
        " FROM requests WHERE id = ?"
    ))
    .bind(id.to_string())
    .fetch_optional(state.store.reader())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let mut view = row_to_view(&r)?;
    if view.steps.is_empty() {
        // Nothing to approve, so no decisions: the auto-approved path skips the query.
        return Ok(Some((view, r.try_get("requester_user_id")?)));
    }
    let approvals = sqlx::query(
        "SELECT approver, role, step, decision, comment, at_ms FROM approvals WHERE request_id = ? ORDER BY at_ms, approver",
    )
    .bind(id.to_string())
    .fetch_all(state.store.reader())
    .await?;
    view.approvals = approvals
        .iter()
        .map(|a| {
            Ok(ApprovalView {
                approver: a.try_get(0)?,
                role: parse(a.try_get::<String, _>(1)?)?,
                step: u32::try_from(a.try_get::<i64, _>(2)?).unwrap_or(0),
                decision: a.try_get(3)?,
                comment: a.try_get(4)?,
                at: clock::format_ms(a.try_get(5)?),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Some((view, r.try_get("requester_user_id")?)))
}

pub fn row_to_view(r: &sqlx::sqlite::SqliteRow) -> Result<RequestView, ApiError> {
    view_of(r)
}

/// A row of `requests` read with [`view_columns!`] (or a list query's fewer columns), from
/// either of the store's drivers.
pub(crate) trait ViewRow {
    /// The text in column `i`, `None` for NULL.
    fn text(&self, i: usize) -> Result<Option<String>, ApiError>;
    /// The integer in column `i`, `None` for NULL.
    fn int(&self, i: usize) -> Result<Option<i64>, ApiError>;
    /// The index of the column `name`, `None` when the query left it out.
    fn index_of(&self, name: &str) -> Option<usize>;

    /// The text in column `i`, which is never NULL.
    fn required_text(&self, i: usize) -> Result<String, ApiError> {
        self.text(i)?.ok_or_else(|| null_column(i))
    }

    /// The integer in column `i`, which is never NULL.
    fn required_int(&self, i: usize) -> Result<i64, ApiError> {
        self.int(i)?.ok_or_else(|| null_column(i))
    }

    /// The text in the column `name`, `None` when it is NULL, left out or unreadable.
    fn named_text(&self, name: &str) -> Option<String> {
        self.index_of(name)
            .and_then(|i| self.text(i).ok().flatten())
    }

    /// The integer in the column `name`, `None` when it is NULL, left out or unreadable.
    fn named_int(&self, name: &str) -> Option<i64> {
        self.index_of(name).and_then(|i| self.int(i).ok().flatten())
    }
}

fn null_column(i: usize) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "the state store has NULL in a request's column {i}, which is never NULL"
    ))
}

impl ViewRow for sqlx::sqlite::SqliteRow {
    fn text(&self, i: usize) -> Result<Option<String>, ApiError> {
        Ok(self.try_get(i)?)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, ApiError> {
        Ok(self.try_get(i)?)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        use sqlx::Column;
        self.columns()
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.ordinal())
    }
}

/// The names in [`view_columns!`], in their order, split once.
static VIEW_COLUMN_NAMES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| view_columns!().split(',').map(str::trim).collect());

/// A request's [`view_columns!`] as the writer thread read them, every column present.
pub(crate) struct ViewValues(pub(crate) Vec<rusqlite::types::Value>);

impl ViewValues {
    /// Reads the view's columns of `row` (a query of [`view_columns!`]).
    pub(crate) fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<ViewValues> {
        let count = row.as_ref().column_count();
        (0..count)
            .map(|i| row.get::<_, rusqlite::types::Value>(i))
            .collect::<rusqlite::Result<_>>()
            .map(ViewValues)
    }
}

impl ViewRow for ViewValues {
    fn text(&self, i: usize) -> Result<Option<String>, ApiError> {
        use rusqlite::types::Value;
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            Some(Value::Text(t)) => Ok(Some(t.clone())),
            _ => Err(wrong_type(i, "text")),
        }
    }

    fn int(&self, i: usize) -> Result<Option<i64>, ApiError> {
        use rusqlite::types::Value;
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            Some(Value::Integer(n)) => Ok(Some(*n)),
            _ => Err(wrong_type(i, "an integer")),
        }
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        VIEW_COLUMN_NAMES.iter().position(|c| *c == name)
    }
}

fn wrong_type(i: usize, expected: &str) -> ApiError {
    ApiError::Internal(anyhow::anyhow!(
        "the state store has a request whose column {i} is not {expected}"
    ))
}

/// A request's view from its row (without its approval decisions).
pub(crate) fn view_of(r: &impl ViewRow) -> Result<RequestView, ApiError> {
    let ts = |i: usize| -> Result<Option<String>, ApiError> { Ok(r.int(i)?.map(clock::format_ms)) };
    let error_code = r.text(17)?;
    let error_message = r.text(18)?;
    // List queries leave the plan out; a missing column means none.
    let explain = r.named_text("explain");
    let steps = r
        .named_text("steps")
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("corrupt steps in the state store: {e}")))?
        .unwrap_or_default();
    Ok(RequestView {
        id: parse_uuid(r.required_text(0)?)?,
        connection: parse(r.required_text(1)?)?,
        kind: parse(r.required_text(2)?)?,
        environment: parse(r.required_text(3)?)?,
        class: parse(r.required_text(4)?)?,
        state: parse(r.required_text(5)?)?,
        decision: parse(r.required_text(6)?)?,
        requester: r.required_text(7)?,
        reason: r.required_text(8)?,
        statement: r.required_text(9)?,
        created_at: clock::format_ms(r.required_int(10)?),
        updated_at: clock::format_ms(r.required_int(11)?),
        approved_at: ts(12)?,
        dispatched_at: ts(13)?,
        started_at: ts(14)?,
        finished_at: ts(15)?,
        agent: r.text(16)?,
        error: error_code.map(|code| ExecError {
            code,
            message: error_message.unwrap_or_default(),
        }),
        explain: explain.and_then(|e| serde_json::from_str(&e).ok()),
        steps,
        current_step: r
            .named_int("current_step")
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0),
        approvals: Vec::new(),
        policy_rule: r.named_text("policy_rule_name"),
        preview: r
            .named_text("preview")
            .and_then(|p| serde_json::from_str(&p).ok()),
        break_glass: r.named_text("break_glass_id"),
        reviewed_by: r.named_text("reviewed_by"),
        reviewed_at: r.named_int("reviewed_at_ms").map(clock::format_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer thread's view finds each named column where the view's query puts it.
    #[test]
    fn the_view_values_find_every_column_by_name() {
        let names: Vec<&str> = view_columns!().split(',').map(str::trim).collect();
        let values = ViewValues(vec![rusqlite::types::Value::Null; names.len()]);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(values.index_of(name), Some(i), "{name}");
        }
        assert_eq!(values.index_of("policy_rule_name"), Some(23));
        assert_eq!(values.index_of("no_such_column"), None);
    }
}
