//! Previews for approvers: a signed dry run executes the write inside a transaction that is
//! always rolled back and reports how many rows it would change; statements or tables a
//! rollback would not fully undo are refused before anything runs.

use crate::common::*;
use crate::mysql::My;
use OperationClass::Write as WriteClass;
use portcullis_core::OperationClass;
use portcullis_proto::agent::JobReport;

fn affected(report: JobReport) -> u64 {
    match report {
        JobReport::Succeeded { result } => result.affected_rows.expect("affected rows"),
        other => panic!("{other:?}"),
    }
}

fn refused_code(report: JobReport) -> String {
    match report {
        JobReport::Failed { error } | JobReport::Refused { error } => error.code,
        other => panic!("expected a refusal: {other:?}"),
    }
}

#[tokio::test]
pub(crate) async fn pg_preview_counts_rows_and_changes_nothing() {
    let pg = Pg::new().await;
    pg.exec(&pg.sql("CREATE TABLE $s.items (id int PRIMARY KEY, name text)"))
        .await;
    pg.exec(&pg.sql("INSERT INTO $s.items SELECT g, 'n' || g FROM generate_series(1, 50) g"))
        .await;
    let rig = Rig::new(pg.target(&[WriteClass])).await;
    let n = affected(
        rig.preview(&pg.sql("UPDATE $s.items SET name = 'x' WHERE id <= 20"))
            .await,
    );
    assert_eq!(n, 20);
    assert_eq!(
        affected(rig.preview(&pg.sql("DELETE FROM $s.items")).await),
        50
    );
    assert_eq!(pg.count("items").await, 50, "the delete was rolled back");
    let r = rig
        .ok(
            &pg.sql("SELECT COUNT(*) FROM $s.items WHERE name = 'x'"),
            WriteClass,
        )
        .await;
    assert_eq!(
        r.rows[0][0],
        serde_json::json!(0),
        "the update was rolled back"
    );
    assert_eq!(
        refused_code(
            rig.preview(&pg.sql("INSERT INTO $s.items VALUES (99, 'y')"))
                .await
        ),
        "preview_refused"
    );
    assert_eq!(pg.count("items").await, 50);
}

#[tokio::test]
pub(crate) async fn mysql_preview_rolls_back_innodb_and_refuses_other_engines() {
    let my = My::new().await;
    my.exec("CREATE TABLE $d.safe (id int PRIMARY KEY, name text) ENGINE=InnoDB")
        .await;
    my.exec("CREATE TABLE $d.loose (id int PRIMARY KEY, name text) ENGINE=MyISAM")
        .await;
    for table in ["safe", "loose"] {
        my.exec(&format!(
            "INSERT INTO $d.{table} VALUES (1, 'a'), (2, 'b'), (3, 'c')"
        ))
        .await;
    }
    let rig = Rig::new(my.target(&[WriteClass])).await;
    assert_eq!(
        affected(rig.preview("DELETE FROM safe WHERE id < 3").await),
        2
    );
    assert_eq!(my.count("safe").await, 3, "rolled back");
    assert_eq!(
        refused_code(rig.preview("DELETE FROM loose").await),
        "preview_refused",
        "MyISAM ignores rollbacks"
    );
    assert_eq!(my.count("loose").await, 3, "nothing ran");
}
