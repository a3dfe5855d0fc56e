//! [`ConfigErrors`]: every problem found in a configuration, each with the key it concerns.

use std::fmt;

/// Every problem found in a configuration, each with the key it concerns.
#[derive(Debug, Default, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The problems, in the order they were found (unknown keys first).
    pub problems: Vec<ConfigProblem>,
}

/// One configuration problem: the key (`publish.max_payload_bytes`, `--config`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: a key path (`groups[0].routes[1].topics[0]`), a flag or a file.
    pub key: String,
    /// What is wrong; it may run over several lines (a TOML syntax error's diagram).
    pub message: String,
}

impl ConfigErrors {
    pub(crate) fn one(key: &str, message: impl Into<String>) -> Self {
        let mut errors = ConfigErrors::default();
        errors.push(key, message);
        errors
    }

    pub(crate) fn push(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn from_figment(error: figment::Error) -> Self {
        let mut errors = ConfigErrors::default();
        for e in error {
            let file = e.metadata.as_ref().and_then(|m| match &m.source {
                Some(figment::Source::File(path)) => Some(path.display().to_string()),
                _ => None,
            });
            match (e.path.is_empty(), file) {
                // A file that is not TOML at all: the file is what is wrong.
                (true, Some(file)) => errors.push(&file, e.kind.to_string()),
                (true, None) => errors.push("(top level)", e.kind.to_string()),
                (false, _) => {
                    let source = e.metadata.as_ref().map(from_layer).unwrap_or_default();
                    errors.push(&e.path.join("."), format!("{}{source}", e.kind));
                }
            }
        }
        errors
    }

    /// Adds every problem of `other` after these.
    pub(crate) fn extend(&mut self, other: ConfigErrors) {
        self.problems.extend(other.problems);
    }
}

/// ` (from /etc/outbox-relay.toml)`, ` (from `OUTBOX_` environment variable(s))`: the layer a
/// value came from; nothing for text handed over in code (`Config::from_toml`).
pub(crate) fn from_layer(metadata: &figment::Metadata) -> String {
    use figment::Source;
    match &metadata.source {
        Some(Source::File(path)) => format!(" (from {})", path.display()),
        Some(Source::Custom(source)) => format!(" (from {source})"),
        Some(_) => String::new(),
        None if metadata.name.ends_with("source string") => String::new(),
        None => format!(" (from {})", metadata.name),
    }
}

/// One problem whose message fits on a line: `invalid configuration: key: message`. Several, or
/// a message of several lines (a TOML syntax error and its caret diagram): one problem a line,
/// a message's own lines indented under it, so the diagram keeps its shape.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [] => f.write_str("invalid configuration"),
            [one] if !one.message.contains('\n') => {
                write!(f, "invalid configuration: {}: {}", one.key, one.message)
            }
            problems => {
                match problems.len() {
                    1 => f.write_str("invalid configuration:")?,
                    n => write!(f, "invalid configuration ({n} problems):")?,
                }
                for problem in problems {
                    write!(f, "\n  {}:", problem.key)?;
                    let mut lines = problem.message.trim_end().lines();
                    if let Some(first) = lines.next() {
                        write!(f, " {first}")?;
                    }
                    for line in lines {
                        write!(f, "\n      {line}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_short_problem_is_one_line_and_several_are_one_a_line() {
        let one = ConfigErrors::one("relay.wakeup", "unknown value `x`");
        assert_eq!(
            one.to_string(),
            "invalid configuration: relay.wakeup: unknown value `x`"
        );
        let mut two = one.clone();
        two.push("redis.max_len", "must be at least 1");
        assert_eq!(
            two.to_string(),
            "invalid configuration (2 problems):\n  relay.wakeup: unknown value `x`\n  redis.max_len: must be at least 1"
        );
    }

    #[test]
    fn a_toml_syntax_error_keeps_its_caret_diagram_on_separate_lines() {
        use figment::Figment;
        use figment::providers::{Format, Toml};
        let error = Figment::from(Toml::string("[relay]\nbatch_size = \n"))
            .extract::<figment::value::Value>()
            .unwrap_err();
        let text = ConfigErrors::from_figment(error).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 4, "{text}");
        assert!(lines[1].contains("TOML parse error at line 2"), "{text}");
        let caret = lines.iter().position(|l| l.trim_end().ends_with('^'));
        let code = lines.iter().position(|l| l.contains("2 | batch_size ="));
        assert!(
            matches!((code, caret), (Some(c), Some(k)) if k == c + 1),
            "the caret under the line it points at:\n{text}"
        );
    }
}
