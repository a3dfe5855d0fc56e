//! [`ConfigErrors`]: every problem found in a configuration, each with the key it concerns.

use std::fmt;

/// Every problem found in a configuration, each with the key it concerns.
#[derive(Debug, Default, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub problems: Vec<ConfigProblem>,
}

/// One configuration problem: the key (`publish.max_payload_bytes`, `--config`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
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
            let key = if e.path.is_empty() {
                "(top level)".to_owned()
            } else {
                e.path.join(".")
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            errors.push(&key, format!("{}{source}", e.kind));
        }
        errors
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration")?;
        for (i, problem) in self.problems.iter().enumerate() {
            let sep = if i == 0 { ": " } else { "; " };
            write!(f, "{sep}{}: {}", problem.key, problem.message)?;
        }
        Ok(())
    }
}
