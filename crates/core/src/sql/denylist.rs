//! Functions no statement may call, whatever its class (EX-2).
//!
//! They read or write server files, run programs, open connections, sleep or take locks that
//! outlive a read-only transaction, change server or session state, evaluate SQL passed as a
//! string (which classification cannot see), or have side effects on sequences.

/// Functions denied by exact name.
const EXACT: &[&str] = &[
    // PostgreSQL: files and programs.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_logdir_ls",
    // PostgreSQL: other sessions, server state and replication.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "set_config",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_promote",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "pg_notify",
    // PostgreSQL: SQL passed as a string.
    "ts_stat",
    // Sequences.
    "nextval",
    "setval",
    // MySQL.
    "sleep",
    // Session state that outlives the request on a pooled connection.
    "setseed",
    // Blocks like sleep until a replication position arrives or the timeout passes.
    "master_gtid_wait",
    "benchmark",
    "load_file",
    "get_lock",
    "release_lock",
    "release_all_locks",
    "master_pos_wait",
    "source_pos_wait",
    "wait_for_executed_gtid_set",
    "wait_until_sql_thread_after_gtids",
    "sys_exec",
    "sys_eval",
    "sys_get",
    "sys_set",
    "sys_bineval",
    // SQLite.
    "load_extension",
    "writefile",
    "readfile",
    "edit",
    "fsdir",
    "zipfile",
    "fts3_tokenizer",
    // SQL Server.
    "xp_cmdshell",
];

/// Function families denied by prefix.
const PREFIXES: &[&str] = &[
    "pg_sleep",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_stat_reset",
    // Replication origins and slots write the cluster catalog even in a read-only
    // transaction; `pg_ls_*` list server directories (logs, WAL, snapshots, slots).
    "pg_replication_origin_",
    "pg_ls_",
    "lo_",
    "dblink",
    "dbms_",
    // `*_to_xml*` run a query given as text or dump whole tables, schemas or databases.
    "query_to_xml",
    "cursor_to_xml",
    "table_to_xml",
    "schema_to_xml",
    "database_to_xml",
];

/// Whether `name` (already lower-cased, without schema) is denied.
pub(super) fn is_denied(name: &str) -> bool {
    EXACT.contains(&name) || PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::is_denied;

    #[test]
    fn families_are_matched_by_prefix_and_others_exactly() {
        // EX-2: the denylist covers whole families but not look-alike names.
        for name in [
            "pg_sleep_for",
            "pg_advisory_xact_lock",
            "lo_unlink",
            "dblink_exec",
            "query_to_xmlschema",
        ] {
            assert!(is_denied(name), "{name}");
        }
        for name in [
            "currval",
            "txid_current",
            "count",
            "sleeper",
            "sleep_",
            "now",
            "lower",
        ] {
            assert!(!is_denied(name), "{name}");
        }
    }
}
