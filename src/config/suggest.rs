//! "Did you mean …?": the known name nearest to a misspelled key or value, so a typo is
//! reported with its fix (`unknown handler `fowrard`; did you mean `forward`?`) instead of a
//! list to read through or a complaint about a neighbouring key.

/// The known name closest to `given`, when it is close enough to be a likely misspelling: at
/// most one edit (or a swap of neighbours) away for short names, a few for long ones, or
/// sharing a long common start (`max_payload` for `max_payload_bytes`).
pub(crate) fn closest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    known
        .iter()
        .filter(|name| !name.is_empty())
        .filter_map(|&name| {
            let edits = strsim::damerau_levenshtein(&given_lower, name);
            let similarity = strsim::jaro_winkler(&given_lower, name);
            let close = edits <= (name.chars().count() / 4).max(1) || similarity >= 0.85;
            close.then_some((edits, name))
        })
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, name)| name)
}

/// `` `a`, `b` or `c` ``.
pub(crate) fn one_of(known: &[&str]) -> String {
    let quoted: Vec<String> = known.iter().map(|name| format!("`{name}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The problem for a value that is none of `known`: `` unknown {what} `given`; did you mean
/// `x`? `` when one is near, else `` …; expected `a`, `b` or `c` ``.
pub(crate) fn unknown_value(what: &str, given: &str, known: &[&str]) -> String {
    match closest(given, known) {
        Some(near) => format!("unknown {what} `{given}`; did you mean `{near}`?"),
        None => format!("unknown {what} `{given}`; expected {}", one_of(known)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_name_for_typos_and_nothing_for_strangers() {
        let handlers = ["forward", "drop", "http", "exec"];
        assert_eq!(closest("fowrard", &handlers), Some("forward"));
        assert_eq!(closest("forwrd", &handlers), Some("forward"));
        assert_eq!(closest("Forward", &handlers), Some("forward"));
        assert_eq!(closest("htp", &handlers), Some("http"));
        assert_eq!(closest("shell", &handlers), None);
        assert_eq!(closest("", &handlers), None);
        let keys = ["max_payload_bytes"];
        assert_eq!(closest("max_payload", &keys), Some("max_payload_bytes"));
        assert_eq!(
            closest("batch_siz", &["batch_size", "wakeup"]),
            Some("batch_size")
        );
        assert_eq!(closest("kye", &["key", "strict", "none"]), Some("key"));
        assert_eq!(closest("random", &["key", "strict", "none"]), None);
        assert_eq!(closest("push", &["poll", "notify"]), None);
    }

    #[test]
    fn says_did_you_mean_or_lists_what_is_expected() {
        let handlers = ["forward", "drop", "http", "exec"];
        assert_eq!(
            unknown_value("handler", "fowrard", &handlers),
            "unknown handler `fowrard`; did you mean `forward`?"
        );
        assert_eq!(
            unknown_value("handler", "shell", &handlers),
            "unknown handler `shell`; expected `forward`, `drop`, `http` or `exec`"
        );
        assert_eq!(one_of(&["poll"]), "`poll`");
        assert_eq!(one_of(&["poll", "notify"]), "`poll` or `notify`");
    }
}
