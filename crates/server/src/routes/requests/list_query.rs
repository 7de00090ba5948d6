//! The request list's statements: one per combination of filters, each walking an index.

use portcullis_core::RequestState;

/// The request list's statement for these filters (parameters in order: the caller's user id
/// when `own`, the state when given, the limit). Every variant walks an index from its
/// newest end and stops at the limit, over a set no larger than the filter that picks the
/// index; the other filters (written `+column`, which keeps the planner off that column's
/// index) only filter what it yields. The filter that picks the index:
/// - `unreviewed`: `requests_unreviewed`, the break-glass requests awaiting review;
/// - a state, in everyone's list or, for an open state (only work in flight), in the
///   caller's: `requests_by_state`, that state's requests by creation time;
/// - `own`: `requests_by_user`, the caller's requests by creation time;
/// - otherwise `requests_by_time`, everyone's by creation time.
///
/// The twelve statements are fixed texts, built once.
pub(super) fn list_sql(own: bool, state: Option<RequestState>, unreviewed: bool) -> &'static str {
    static STATEMENTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let mut all = Vec::with_capacity(12);
        for own in [false, true] {
            for state in [StateFilter::None, StateFilter::Open, StateFilter::Terminal] {
                for unreviewed in [false, true] {
                    all.push(build_list_sql(own, state, unreviewed));
                }
            }
        }
        all
    });
    let state = match state {
        None => StateFilter::None,
        Some(s) if s.is_terminal() => StateFilter::Terminal,
        Some(_) => StateFilter::Open,
    };
    STATEMENTS[usize::from(own) * 6 + state as usize * 2 + usize::from(unreviewed)].as_str()
}

#[derive(Debug, Clone, Copy)]
enum StateFilter {
    None = 0,
    Open = 1,
    Terminal = 2,
}

fn build_list_sql(own: bool, state: StateFilter, unreviewed: bool) -> String {
    const COLUMNS: &str = "id, connection, kind, environment, class, state, decision, requester, reason, statement, created_at_ms, updated_at_ms, \
        approved_at_ms, dispatched_at_ms, started_at_ms, finished_at_ms, agent, error_code, error_message, \
        steps, current_step, policy_rule_name, break_glass_id, reviewed_by, reviewed_at_ms";
    // The filter whose index the statement walks.
    let by_state = !unreviewed
        && match state {
            StateFilter::None => false,
            StateFilter::Open => true,
            StateFilter::Terminal => !own,
        };
    let mut filters = Vec::new();
    if own {
        filters.push(if unreviewed || by_state {
            "+requester_user_id = ?"
        } else {
            "requester_user_id = ?"
        });
    }
    match state {
        StateFilter::None => {}
        _ if by_state => filters.push("state = ?"),
        StateFilter::Open | StateFilter::Terminal => filters.push("+state = ?"),
    }
    if unreviewed {
        // The partial index's own condition, word for word, so the planner may use it.
        filters.push("break_glass_id IS NOT NULL AND reviewed_at_ms IS NULL");
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    format!("SELECT {COLUMNS} FROM requests{filter} ORDER BY created_at_ms DESC LIMIT ?")
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    /// The request list never reads the whole table nor sorts: for every combination of its
    /// filters the planner walks an index in the list's order, and each variant returns the
    /// rows the filters describe, newest first, up to the limit.
    #[tokio::test]
    async fn every_request_list_walks_an_index_and_returns_the_filtered_rows_newest_first() {
        use sqlx::Row;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).await.unwrap();
        // (user, state, break-glass awaiting review), created one ms apart.
        let mut made = Vec::new();
        let mut tx = store.begin().await.unwrap();
        for i in 0..60_i64 {
            let user = if i % 3 == 0 { "u1" } else { "u2" };
            let state = RequestState::ALL[(i as usize * 7) % RequestState::ALL.len()];
            let unreviewed = i % 5 == 0;
            let id = Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO requests (id, requester, requester_user_id, connection, kind, environment, class, statement, statement_sha256, reason, state, decision, created_at_ms, updated_at_ms, break_glass_id) \
                 VALUES (?, 'someone', ?, 'pg', 'postgres', 'production', 'read', 'SELECT 1', x'00', 'test', ?, 'auto_approve', ?, ?, ?)",
            )
            .bind(&id)
            .bind(user)
            .bind(state.as_str())
            .bind(1_000 + i)
            .bind(1_000 + i)
            .bind(unreviewed.then_some("grant"))
            .execute(&mut *tx)
            .await
            .unwrap();
            made.push((id, user, state, unreviewed));
        }
        tx.commit().await.unwrap();

        let limit = 7_i64;
        let states = std::iter::once(None).chain(RequestState::ALL.iter().copied().map(Some));
        for state in states {
            for own in [false, true] {
                for unreviewed in [false, true] {
                    let sql = list_sql(own, state, unreviewed);
                    let plan: Vec<String> = fetch(
                        &store,
                        &format!("EXPLAIN QUERY PLAN {sql}"),
                        own,
                        state,
                        limit,
                    )
                    .await
                    .iter()
                    .map(|r| r.get::<String, _>(3))
                    .collect();
                    let case =
                        format!("own={own} state={state:?} unreviewed={unreviewed}: {plan:?}");
                    assert!(
                        plan.iter().any(|d| d.contains("USING INDEX")),
                        "no index walked, {case}"
                    );
                    assert!(
                        !plan.iter().any(|d| d == "SCAN requests"),
                        "the whole table read, {case}"
                    );
                    assert!(
                        !plan.iter().any(|d| d.contains("TEMP B-TREE")),
                        "sorted instead of walking an index in order, {case}"
                    );
                    let got: Vec<String> = fetch(&store, sql, own, state, limit)
                        .await
                        .iter()
                        .map(|r| r.get::<String, _>(0))
                        .collect();
                    let want: Vec<String> = made
                        .iter()
                        .rev()
                        .filter(|(_, user, s, u)| {
                            (!own || *user == "u1")
                                && state.is_none_or(|want| want == *s)
                                && (!unreviewed || *u)
                        })
                        .take(limit as usize)
                        .map(|(id, ..)| id.clone())
                        .collect();
                    assert_eq!(got, want, "{case}");
                }
            }
        }
        store.close().await;
    }

    /// Runs `sql` with the list's parameters as the handler binds them.
    async fn fetch(
        store: &crate::store::Store,
        sql: &str,
        own: bool,
        state: Option<RequestState>,
        limit: i64,
    ) -> Vec<sqlx::sqlite::SqliteRow> {
        // The list's own fixed statements, and the same prefixed with EXPLAIN QUERY PLAN.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
        if own {
            query = query.bind("u1");
        }
        if let Some(s) = state {
            query = query.bind(s.as_str());
        }
        query.bind(limit).fetch_all(store.reader()).await.unwrap()
    }
}
