//! Redis key names next to a stream, in its hash slot (so they work on Redis Cluster and
//! replicate atomically with the stream's entries).

/// The part of `key` Redis Cluster hashes: the text between the first `{` and the first `}`
/// after it, when that is non-empty; otherwise the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(close) = key[open + 1..].find('}')
        && close > 0
    {
        return &key[open + 1..open + 1 + close];
    }
    key
}

/// The watermark hash of `group` for the stream `stream` (named without the prefix): under the
/// key prefix, and in the stream's hash slot. A stream key with a hash tag keeps it (the
/// watermark key starts with the stream key, so its first tag is the same); one without gets
/// its whole key as the tag, after the prefix. The one case this cannot cover is a key with
/// braces that do not form a tag (`a{}b`, `a}b`): on Redis Cluster its watermark may land in
/// another slot; a single Redis server does not care.
pub fn watermark_key(prefix: &str, stream: &str, group: &str) -> String {
    beside_stream(prefix, stream, &format!("outbox-watermark:{group}"))
}

/// The token key that marks one late entry (see `append_late.lua`) of `group` in `stream` as
/// appended, in the stream's hash slot like the watermark.
pub fn late_token_key(prefix: &str, stream: &str, group: &str, token: &str) -> String {
    beside_stream(prefix, stream, &format!("outbox-sent:{group}:{token}"))
}

/// A SCAN pattern for every watermark of `group`'s rows (`<group>`, `<group>/<p>`) under
/// `prefix`, whatever the stream; it also matches groups whose name starts the same (see
/// [`row_of_group`]).
pub fn watermark_pattern(prefix: &str, group: &str) -> String {
    format!(
        "{}*{WATERMARK_MARKER}{}*",
        glob_escape(prefix),
        glob_escape(group)
    )
}

/// A SCAN pattern for every late-entry token of `group`'s rows under `prefix`, whatever the
/// stream (with the same caveat as [`watermark_pattern`]).
pub fn late_token_pattern(prefix: &str, group: &str) -> String {
    format!(
        "{}*{TOKEN_MARKER}{}*",
        glob_escape(prefix),
        glob_escape(group)
    )
}

/// The group row a [`watermark_key`] belongs to.
pub fn watermark_row(key: &str) -> Option<&str> {
    key.rfind(WATERMARK_MARKER)
        .map(|at| &key[at + WATERMARK_MARKER.len()..])
}

/// The group row and the token of a [`late_token_key`] (a row's name has no `:`).
pub fn late_token_parts(key: &str) -> Option<(&str, &str)> {
    let at = key.rfind(TOKEN_MARKER)?;
    key[at + TOKEN_MARKER.len()..].split_once(':')
}

/// Whether `row` is a row of `group`: the group's own, or one of its partitions'.
pub fn row_of_group(row: &str, group: &str) -> bool {
    row.strip_prefix(group)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

const WATERMARK_MARKER: &str = ":outbox-watermark:";
const TOKEN_MARKER: &str = ":outbox-sent:";

/// `text` with Redis' glob characters (`*?[]\`) escaped, to match literally in a pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// A bookkeeping key named `<stream key>:<suffix>`, in the stream's hash slot.
fn beside_stream(prefix: &str, stream: &str, suffix: &str) -> String {
    let stream_key = format!("{prefix}{stream}");
    if hash_tag(&stream_key).len() < stream_key.len() {
        format!("{stream_key}:{suffix}")
    } else {
        format!("{prefix}{{{stream_key}}}:{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_shares_the_stream_hash_slot() {
        for (prefix, stream) in [
            ("app:", "events.orders.created"),
            ("", "events"),
            ("app:", "{orders}.events"),
            ("{tenant-1}:", "events"),
            ("", "{a}b{c}"),
            ("app:", "a{b"),
            ("", "a}b{c}"),
        ] {
            let stream_key = format!("{prefix}{stream}");
            for key in [
                watermark_key(prefix, stream, "notifications"),
                late_token_key(prefix, stream, "notifications", "m-1:0"),
            ] {
                assert_eq!(
                    hash_tag(&key),
                    hash_tag(&stream_key),
                    "{stream_key:?} vs {key:?}"
                );
                assert!(key.starts_with(prefix), "{key:?} is under the prefix");
            }
        }
    }

    #[test]
    fn patterns_escape_the_prefix_and_rows_and_tokens_come_back_from_their_keys() {
        assert_eq!(
            watermark_pattern("app[1]*:", "g"),
            "app\\[1\\]\\*:*:outbox-watermark:g*"
        );
        assert_eq!(late_token_pattern("", "g"), "*:outbox-sent:g*");
        for (stream, token) in [("events", "0193a1b2:0"), ("{o}.x", "r2:dead:0193a1b2:3")] {
            let key = late_token_key("app:", stream, "g/3", token);
            assert_eq!(late_token_parts(&key), Some(("g/3", token)));
            let key = watermark_key("app:", stream, "g/3");
            assert_eq!(watermark_row(&key), Some("g/3"));
        }
        assert!(row_of_group("g", "g") && row_of_group("g/12", "g"));
        assert!(!row_of_group("g2", "g") && !row_of_group("g2/1", "g"));
    }

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag("{user1000}.following"), "user1000");
        assert_eq!(hash_tag("foo{}{bar}"), "foo{}{bar}");
        assert_eq!(hash_tag("foo{{bar}}zap"), "{bar");
        assert_eq!(hash_tag("foo{bar}{zap}"), "bar");
        assert_eq!(hash_tag("plain"), "plain");
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn a_closing_brace_without_a_tag_cannot_be_wrapped() {
        let stream = "a{}b";
        assert_ne!(hash_tag(&watermark_key("", stream, "g")), hash_tag(stream));
    }
}
