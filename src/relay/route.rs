//! Routes: which messages a consumer group handles, and how.
//!
//! A group's routes are tried in order; the first whose topic patterns match takes the message.
//! A message no route matches is skipped by that group (its cursor still moves past it).
//! Patterns are globs (`orders.*`, `users.signed_up`, `*`), matched against the whole topic;
//! `*` matches any run of characters, dots included. Each route has its own retry policy and
//! handler timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::handler::Handler;
use crate::retry::RetryPolicy;

/// How long one handler call may take unless the route says otherwise.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a route does with a message.
#[derive(Clone)]
pub enum Action {
    /// Append the message to the stream named by the template (no handler call: the stored
    /// JSON goes to Redis as it is).
    Forward {
        /// The stream's name, with the message's topic and key in it (`events.{topic}`).
        stream: StreamTemplate,
    },
    /// Consume the message without output.
    Drop,
    /// Call a handler (`http`, `exec`, or a custom [`Handler`]) and append what it returns.
    Call {
        /// What it is, for logs and errors: `http POST <url>`, `exec <program>` or the name
        /// given at registration.
        name: String,
        /// The handler.
        handler: Arc<dyn Handler>,
    },
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Forward { stream } => write!(f, "forward to {stream}"),
            Action::Drop => f.write_str("drop"),
            Action::Call { name, .. } => write!(f, "call {name}"),
        }
    }
}

impl PartialEq for Action {
    fn eq(&self, other: &Action) -> bool {
        match (self, other) {
            (Action::Forward { stream: a }, Action::Forward { stream: b }) => a == b,
            (Action::Drop, Action::Drop) => true,
            (Action::Call { handler: a, .. }, Action::Call { handler: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A route for a custom handler could not be made.
#[derive(Debug, thiserror::Error)]
#[error("topic pattern `{pattern}` is not a valid glob: {problem}")]
pub struct InvalidPattern {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Topic patterns → action, with the retry policy and timeout for the handler calls.
#[derive(Debug, Clone)]
pub struct Route {
    patterns: Vec<String>,
    matcher: GlobSet,
    /// What the route does with a matching message.
    pub action: Action,
    /// How failed handler calls are retried.
    pub retry: RetryPolicy,
    /// How long one handler call may take ([`DEFAULT_HANDLER_TIMEOUT`] unless set).
    pub timeout: Duration,
}

impl Route {
    /// Compiles `patterns`; the error names the first pattern that is not a valid glob.
    /// The retry policy and timeout start at their defaults.
    pub fn new(patterns: Vec<String>, action: Action) -> Result<Route, (usize, String)> {
        let mut builder = GlobSetBuilder::new();
        for (index, pattern) in patterns.iter().enumerate() {
            if pattern.is_empty() {
                return Err((index, "empty pattern".to_owned()));
            }
            let glob = Glob::new(pattern).map_err(|e| (index, e.kind().to_string()))?;
            builder.add(glob);
        }
        let matcher = builder.build().map_err(|e| (0, e.to_string()))?;
        Ok(Route {
            patterns,
            matcher,
            action,
            retry: RetryPolicy::default(),
            timeout: DEFAULT_HANDLER_TIMEOUT,
        })
    }

    /// A route calling a custom `handler` (named `name` in logs and errors) for the topics
    /// matching `patterns`, with the default retry policy and timeout.
    pub fn call(
        patterns: &[&str],
        name: impl Into<String>,
        handler: impl Handler,
    ) -> Result<Route, InvalidPattern> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let action = Action::Call {
            name: name.into(),
            handler: Arc::new(handler),
        };
        Route::new(patterns.clone(), action).map_err(|(index, problem)| InvalidPattern {
            pattern: patterns.get(index).cloned().unwrap_or_default(),
            problem,
        })
    }

    /// The same route with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Route {
        self.retry = retry;
        self
    }

    /// The same route with another handler timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Route {
        self.timeout = timeout;
        self
    }

    /// True when one of the route's patterns matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.matcher.is_match(topic)
    }

    /// The topic patterns (globs), as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// The first route of `routes` that takes `topic`.
pub fn route_for<'r>(routes: &'r [Route], topic: &str) -> Option<&'r Route> {
    routes.iter().find(|route| route.matches(topic))
}

/// A stream name with `{topic}` and `{key}` placeholders, e.g. `events.{topic}`.
/// A message without a key renders `{key}` as `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Topic,
    Key,
}

/// What a message without a key puts in place of `{key}`.
pub const MISSING_KEY: &str = "_";

impl StreamTemplate {
    /// Parses a template; errors name the problem (unknown placeholder, unclosed brace, empty).
    pub fn parse(template: &str) -> Result<StreamTemplate, String> {
        if template.is_empty() {
            return Err("stream name must not be empty".to_owned());
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
            parts.push(match &rest[open + 1..open + close] {
                "topic" => Part::Topic,
                "key" => Part::Key,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` in `{template}`; use {{topic}} or {{key}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched `}}` in `{template}`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(StreamTemplate { parts })
    }

    /// The stream name for one message.
    pub fn render(&self, topic: &str, key: Option<&str>) -> String {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => name.push_str(text),
                Part::Topic => name.push_str(topic),
                Part::Key => name.push_str(key.unwrap_or(MISSING_KEY)),
            }
        }
        name
    }

    /// True when the name does not depend on the message (no placeholders).
    pub fn is_fixed(&self) -> bool {
        self.parts
            .iter()
            .all(|part| matches!(part, Part::Literal(_)))
    }
}

impl fmt::Display for StreamTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::Topic => f.write_str("{topic}")?,
                Part::Key => f.write_str("{key}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(template: &str) -> Action {
        Action::Forward {
            stream: StreamTemplate::parse(template).unwrap(),
        }
    }

    #[test]
    fn first_matching_route_wins_and_unmatched_topics_have_none() {
        let routes = vec![
            Route::new(
                vec!["orders.*".into(), "users.signed_up".into()],
                forward("events.{topic}"),
            )
            .unwrap(),
            Route::new(vec!["*".into()], Action::Drop).unwrap(),
        ];
        assert_eq!(
            route_for(&routes, "orders.created").unwrap().patterns()[0],
            "orders.*"
        );
        assert_eq!(
            route_for(&routes, "orders.eu.created").unwrap().patterns()[0],
            "orders.*"
        );
        assert_eq!(
            route_for(&routes, "users.signed_up").unwrap().patterns()[0],
            "orders.*"
        );
        assert_eq!(
            route_for(&routes, "users.deleted").unwrap().action,
            Action::Drop
        );
        let only_orders = vec![Route::new(vec!["orders.*".into()], Action::Drop).unwrap()];
        assert!(route_for(&only_orders, "users.deleted").is_none());
        assert!(route_for(&only_orders, "orders").is_none());
    }

    #[test]
    fn bad_globs_name_the_pattern() {
        let error = Route::new(vec!["ok.*".into(), "bad[".into()], Action::Drop).unwrap_err();
        assert_eq!(error.0, 1);
        assert!(Route::new(vec!["".into()], Action::Drop).is_err());
    }

    #[test]
    fn templates_render_topic_and_key() {
        let template = StreamTemplate::parse("events.{topic}.{key}").unwrap();
        assert_eq!(
            template.render("orders.created", Some("o-1")),
            "events.orders.created.o-1"
        );
        assert_eq!(
            template.render("orders.created", None),
            "events.orders.created._"
        );
        assert_eq!(template.to_string(), "events.{topic}.{key}");
        assert!(StreamTemplate::parse("all-events").unwrap().is_fixed());
        assert!(!template.is_fixed());
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["", "events.{topc}", "events.{topic", "events.topic}"] {
            assert!(StreamTemplate::parse(bad).is_err(), "{bad:?}");
        }
    }
}
