//! [`error_text`]: an error and its causes as one line for a person, without the internals the
//! libraries below put into their `Display`.
//!
//! - sqlx writes a Postgres error as `<message> at line 3655`: that line is in the server's C
//!   source, of no use to an operator. The text keeps the message, the server's DETAIL and HINT,
//!   and for a missing privilege (SQLSTATE 42501) says which object it concerns and how the
//!   grant is given (`outbox-relay grant relay|publisher ROLE`).
//! - redis-rs writes a failed pipeline as every failing index with its error: a batch refused
//!   for lack of memory becomes a 4 KB line, logged on each retry. The text says how many
//!   commands failed and each distinct error once.
//! - Whatever is left is cut at [`MAX_ERROR_TEXT`] characters.

use std::error::Error;

/// The longest error text logged or printed, in characters; the rest is replaced by a count.
pub const MAX_ERROR_TEXT: usize = 1000;

/// `error` and its causes on one line (`outer: cause: root`), each cause skipped when the text
/// so far already holds it (sqlx's and anyhow's errors repeat their source in `Display`).
pub fn error_text(error: &(dyn Error + 'static)) -> String {
    error_text_of_role(error, None)
}

/// [`error_text`] for a command that connected to Postgres as `role`: a missing privilege
/// then names the role to grant to.
pub fn error_text_of_role(error: &(dyn Error + 'static), role: Option<&str>) -> String {
    // Postgres errors anywhere in the chain, as their Display writes them → as they should read.
    let mut rewrites: Vec<(String, String)> = Vec::new();
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(sqlx::Error::Database(db)) = current.downcast_ref::<sqlx::Error>() {
            let clean = database_text(db.as_ref(), role);
            rewrites.push((current.to_string(), clean.clone()));
            rewrites.push((db.to_string(), clean));
        }
        cause = current.source();
    }
    let rewrite = |text: String| {
        rewrites
            .iter()
            .fold(text, |text, (from, to)| text.replace(from.as_str(), to))
    };
    let mut line = String::new();
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(current) = cause {
        let text = summarize_command_failures(&rewrite(current.to_string()));
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = current.source();
    }
    bounded(line.replace('\n', " "))
}

/// A Postgres error as an operator reads it: the message, DETAIL and HINT, and for a missing
/// privilege what grants it.
fn database_text(db: &dyn sqlx::error::DatabaseError, role: Option<&str>) -> String {
    let mut text = db.message().to_owned();
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        if let Some(detail) = pg.detail() {
            text.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = pg.hint() {
            text.push_str(&format!(" (hint: {hint})"));
        }
    }
    if db.code().as_deref() == Some("42501") {
        text.push_str(&privilege_hint(role));
    }
    text
}

/// What to do about `permission denied for table messages` and the like: the object is in
/// the message already; this says who grants what, to which role.
fn privilege_hint(role: Option<&str>) -> String {
    let (who, name) = match role {
        Some(role) => (format!("role `{role}`"), role.to_owned()),
        None => ("role connected".to_owned(), "ROLE".to_owned()),
    };
    format!(
        " (the {who} lacks that privilege: the owner of the outbox schema grants it, with \
         `outbox-relay grant relay {name}` for a relay or `outbox-relay grant publisher {name}` \
         for a publisher; migrate and prune run as the owner)"
    )
}

/// `Pipeline failures: [(Index 0, error: OOM …), (Index 1, error: OOM …), …]` (redis-rs) →
/// `Pipeline failures: 512 commands failed: OOM …`. Also for `Transaction aborted: [...]`.
fn summarize_command_failures(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR_TEXT));
    let mut rest = text;
    while let Some(start) = rest.find("(Index ") {
        // The list opens with `[` right before the first item.
        let Some(open) = rest[..start].rfind('[').filter(|&open| open + 1 == start) else {
            out.push_str(&rest[..start + 1]);
            rest = &rest[start + 1..];
            continue;
        };
        let Some(close) = list_end(&rest[start..]) else {
            break;
        };
        let items = &rest[start..start + close];
        out.push_str(&rest[..open]);
        out.push_str(&summarize_items(items));
        rest = &rest[start + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where the `]` closing a list of `(Index n, error: …)` items is, relative to its first item:
/// the first `)]`.
fn list_end(list: &str) -> Option<usize> {
    list.find(")]").map(|at| at + 1)
}

/// `(Index 0, error: A), (Index 1, error: A), (Index 7, error: B)` →
/// `3 commands failed: A (2 of them); B (1)`.
fn summarize_items(items: &str) -> String {
    let mut errors: Vec<(String, usize)> = Vec::new();
    let mut count = 0;
    for item in items.split("), (Index ") {
        let item = item.trim_start_matches("(Index ").trim_end_matches(')');
        let error = item
            .split_once(", error: ")
            .map_or(item, |(_, error)| error)
            .trim();
        count += 1;
        match errors.iter_mut().find(|(seen, _)| seen == error) {
            Some((_, n)) => *n += 1,
            None => errors.push((error.to_owned(), 1)),
        }
    }
    let commands = if count == 1 { "command" } else { "commands" };
    match errors.as_slice() {
        [(error, _)] => format!("{count} {commands} failed: {error}"),
        _ => {
            let each: Vec<String> = errors
                .iter()
                .map(|(error, n)| format!("{error} ({n})"))
                .collect();
            format!("{count} {commands} failed: {}", each.join("; "))
        }
    }
}

/// `text`, cut at [`MAX_ERROR_TEXT`] characters with a note of how much was left out.
fn bounded(text: String) -> String {
    let total = text.chars().count();
    if total <= MAX_ERROR_TEXT {
        return text;
    }
    let kept: String = text.chars().take(MAX_ERROR_TEXT).collect();
    format!("{kept}… ({} more characters)", total - MAX_ERROR_TEXT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("could not append the batch: {0}")]
    struct Outer(String);

    #[test]
    fn a_failed_pipeline_is_counted_not_listed() {
        let oom = "OOM: command not allowed when used memory > 'maxmemory'.";
        let items: Vec<String> = (0..500)
            .map(|i| format!("(Index {i}, error: {oom})"))
            .collect();
        let redis_text = format!("Pipeline failures: [{}]", items.join(", "));
        assert!(redis_text.len() > 4000);
        let text = error_text(&Outer(redis_text));
        assert_eq!(
            text,
            format!("could not append the batch: Pipeline failures: 500 commands failed: {oom}")
        );
        let mixed = format!(
            "Transaction aborted: [(Index 0, error: {oom}), (Index 3, error: WRONGTYPE x)] then"
        );
        assert_eq!(
            summarize_command_failures(&mixed),
            format!("Transaction aborted: 2 commands failed: {oom} (1); WRONGTYPE x (1) then")
        );
        let plain = "no list here (Index 4) [x]";
        assert_eq!(summarize_command_failures(plain), plain);
    }

    #[test]
    fn long_texts_are_cut_with_a_count() {
        let text = error_text(&Outer("x".repeat(3000)));
        assert!(text.ends_with("… (2028 more characters)"), "{text}");
        assert_eq!(
            text.chars().count(),
            MAX_ERROR_TEXT + "… (2028 more characters)".chars().count()
        );
    }

    #[test]
    fn a_privilege_hint_names_the_role_and_the_grant() {
        let hint = privilege_hint(Some("app"));
        assert!(
            hint.contains("the role `app` lacks that privilege"),
            "{hint}"
        );
        assert!(hint.contains("`outbox-relay grant relay app`"), "{hint}");
        let hint = privilege_hint(None);
        assert!(
            hint.contains("`outbox-relay grant publisher ROLE`"),
            "{hint}"
        );
    }
}
