//! README's stuck message runbook, followed literally: every `outbox-relay` command and every SQL
//! statement in its code blocks runs as written against a database with a stuck group.

use serde_json::json;
use uuid::Uuid;

use crate::harness::TestDb;
use crate::harness::cli::{outbox_relay, run};
use crate::harness::relay::{insert_delivery, keyed_message, publish_messages};

/// The runbook section of README.md: from its heading to the next `## ` heading.
fn runbook() -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("### Stuck message runbook")
        .expect("README has the runbook");
    let rest = &readme[start..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The contents of every fenced block of `language` in `text`.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let fence = format!("```{language}\n");
    text.split(fence.as_str())
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

async fn status_of(db: &TestDb, id: Uuid) -> Option<(String, bool)> {
    sqlx::query_as(
        "SELECT d.status, coalesce(d.next_attempt_at <= now(), false)
           FROM outbox.deliveries d WHERE d.message_id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_readme_runbook_runs_as_written() {
    let db = TestDb::new().await;
    outbox_relay::store::consumer_groups_ensure(&db.pool, "notifications", false)
        .await
        .unwrap();
    let messages = vec![
        keyed_message("orders.paid", &json!({"n": 0, "key": "order-1"})),
        keyed_message("orders.paid", &json!({"n": 1, "key": "order-1"})),
        keyed_message("orders.paid", &json!({"n": 2})),
        keyed_message("orders.created", &json!({"n": 3})),
    ];
    let ids = publish_messages(&db.pool, messages, false).await;
    sqlx::query(
        "UPDATE outbox.consumer_groups g SET cursor_tx_id = m.tx_id, cursor_seq = m.seq
           FROM outbox.messages m WHERE g.name = 'notifications' AND m.id = $1",
    )
    .bind(ids[3])
    .execute(&db.pool)
    .await
    .unwrap();
    insert_delivery(&db.pool, "notifications", ids[0], "retrying", 2).await;
    insert_delivery(&db.pool, "notifications", ids[1], "blocked", 0).await;
    insert_delivery(&db.pool, "notifications", ids[2], "dead", 10).await;
    insert_delivery(&db.pool, "notifications", ids[3], "dead", 10).await;

    let runbook = runbook();
    let commands: Vec<String> = blocks(&runbook, "bash")
        .iter()
        .flat_map(|block| block.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| line.starts_with("outbox-relay "))
        .collect();
    let statements: Vec<String> = blocks(&runbook, "sql")
        .iter()
        .flat_map(|block| {
            block
                .split(";\n")
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(commands.len() >= 4, "{commands:?}");
    assert!(statements.len() >= 5, "{statements:?}");

    for command in &commands {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let out = run(outbox_relay().args(["--database-url", &db.url]).args(&args));
        assert_eq!(out.code, Some(0), "`{command}`: {}", out.stderr);
        assert!(!out.stdout.trim().is_empty(), "`{command}` printed nothing");
    }
    for statement in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    // Step 3 made the retrying message due now; the blocked one still waits for it; step 4
    // retried the dead orders.paid letter (so the discard found it no longer dead) and left the
    // other topic's dead letter alone.
    assert_eq!(
        status_of(&db, ids[0]).await,
        Some(("retrying".into(), true))
    );
    assert_eq!(
        status_of(&db, ids[1]).await,
        Some(("blocked".into(), false))
    );
    assert_eq!(
        status_of(&db, ids[2]).await,
        Some(("retrying".into(), true))
    );
    assert_eq!(status_of(&db, ids[3]).await, Some(("dead".into(), false)));
}
