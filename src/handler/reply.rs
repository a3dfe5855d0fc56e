//! What a handler that runs elsewhere answers (an `http` webhook's 2xx body, an `exec`
//! program's stdout on exit 0): nothing, or JSON `{"outputs": [{"stream": "...", "payload":
//! {...}}]}`, each output one Redis entry. Both handlers parse it here, and quote it here when
//! it is not that.

use super::Output;

#[derive(serde::Deserialize)]
struct Reply {
    #[serde(default)]
    outputs: Vec<Output>,
}

/// The most of a reply quoted in an error.
const QUOTED_BYTES: usize = 300;

/// A reply: empty (or only whitespace) = no outputs; else JSON with an optional `outputs`
/// list, every output naming a stream. The error completes a sentence about the reply ("the
/// body …", "stdout …") and does not quote it (see [`quote`]).
pub(crate) fn parse_outputs(reply: &[u8]) -> Result<Vec<Output>, String> {
    if reply.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let reply: Reply = crate::json::from_slice(reply).map_err(|e| {
        format!("is not {{\"outputs\": [{{\"stream\": …, \"payload\": …}}]}} ({e})")
    })?;
    if let Some(empty) = reply.outputs.iter().find(|o| o.stream.is_empty()) {
        return Err(format!(
            "has an output with an empty stream name: {empty:?}"
        ));
    }
    Ok(reply.outputs)
}

/// The start of `reply` for an error: trimmed, at most [`QUOTED_BYTES`] (cut at a character
/// boundary, ` …` when cut), `(empty)` when there is nothing.
pub(crate) fn quote(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    let text = text.trim();
    if text.is_empty() {
        return "(empty)".to_owned();
    }
    let mut end = text.len().min(QUOTED_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        format!("{} …", &text[..end])
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_outputs() {
        assert_eq!(parse_outputs(b"").unwrap(), vec![]);
        assert_eq!(parse_outputs(b" \n").unwrap(), vec![]);
        assert_eq!(parse_outputs(b"{}").unwrap(), vec![]);
        assert_eq!(
            parse_outputs(br#"{"outputs": [{"stream": "s", "payload": {"a": 1}}]}"#).unwrap(),
            vec![Output::new("s", serde_json::json!({"a": 1}))]
        );
        assert!(parse_outputs(b"ok").is_err());
        assert!(parse_outputs(br#"{"outputs": [{"stream": "", "payload": {}}]}"#).is_err());
    }

    #[test]
    fn quoted_replies_are_short() {
        assert_eq!(quote(b"  "), "(empty)");
        assert!(quote("x".repeat(1000).as_bytes()).len() < 310);
        assert_eq!(quote("é".repeat(200).as_bytes()).chars().count(), 152);
    }
}
