//! Checks of `[[groups]]` and their `[[groups.routes]]`: names, ordering, handlers and their
//! settings, retry policies. Every problem is reported with its key path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::check::positive_ms;
use super::suggest::{closest, one_of, unknown_value};
use super::{
    ConfigErrors, DEFAULT_MAX_IN_FLIGHT, GroupConfig, MAX_IN_FLIGHT_LIMIT, MAX_PARTITIONS,
    RawGroup, RawRoute,
};
use crate::handler::exec::ExecHandler;
use crate::handler::http::HttpHandler;
use crate::relay::entry_fields::{EntryField, EntryFields};
use crate::relay::ordering::OrderingMode;
use crate::relay::route::{Action, DEFAULT_HANDLER_TIMEOUT, Route, StreamTemplate};
use crate::retry::RetryPolicy;

pub(super) fn check_groups(raw: &[RawGroup], errors: &mut ConfigErrors) -> Vec<GroupConfig> {
    let mut seen = HashSet::new();
    let mut groups = Vec::new();
    for (g, group) in raw.iter().enumerate() {
        let at = format!("groups[{g}]");
        if !valid_group_name(&group.name) {
            errors.push(
                &format!("{at}.name"),
                format!(
                    "`{}` is not a group name: use 1-100 letters, digits, `_`, `.`, `-`, starting with a letter or digit",
                    group.name
                ),
            );
        } else if !seen.insert(group.name.as_str()) {
            errors.push(
                &format!("{at}.name"),
                format!("group `{}` is configured twice", group.name),
            );
        }
        if group.routes.is_empty() {
            errors.push(
                &format!("{at}.routes"),
                "a group needs at least one [[groups.routes]]",
            );
        }
        let ordering = match group.ordering.as_deref() {
            None => OrderingMode::default(),
            Some(text) => OrderingMode::parse(text).unwrap_or_else(|| {
                errors.push(
                    &format!("{at}.ordering"),
                    unknown_value("value", text, &["key", "strict", "none"]),
                );
                OrderingMode::default()
            }),
        };
        if let Some(stream) = &group.dead_letter_stream
            && let Err(problem) = StreamTemplate::parse(stream).and_then(|t| {
                t.is_fixed()
                    .then_some(())
                    .ok_or_else(|| "a fixed stream name, without placeholders".to_owned())
            })
        {
            errors.push(&format!("{at}.dead_letter_stream"), problem);
        }
        let routes = group
            .routes
            .iter()
            .enumerate()
            .filter_map(|(r, route)| check_route(route, &format!("{at}.routes[{r}]"), errors))
            .collect();
        let entry_fields = check_entry_fields(group.entry_fields.as_deref(), &at, errors);
        let max_in_flight = match group.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(n @ 1..=MAX_IN_FLIGHT_LIMIT) => n as usize,
            Some(n) => {
                errors.push(
                    &format!("{at}.max_in_flight"),
                    format!("{n} is out of range: between 1 and {MAX_IN_FLIGHT_LIMIT}"),
                );
                DEFAULT_MAX_IN_FLIGHT
            }
        };
        let partitions = match group.partitions {
            None => 1,
            Some(n @ 1..=MAX_PARTITIONS) => n as u32,
            Some(n) => {
                errors.push(
                    &format!("{at}.partitions"),
                    format!("{n} is out of range: between 1 and {MAX_PARTITIONS}"),
                );
                1
            }
        };
        groups.push(GroupConfig {
            name: group.name.clone(),
            partitions,
            routes,
            ordering,
            dead_letter_stream: group.dead_letter_stream.clone(),
            entry_fields,
            max_in_flight,
        });
    }
    groups
}

/// `entry_fields`: known names, each once, `payload` among them; unset = all.
fn check_entry_fields(
    names: Option<&[String]>,
    at: &str,
    errors: &mut ConfigErrors,
) -> EntryFields {
    let Some(names) = names else {
        return EntryFields::default();
    };
    let mut fields = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match EntryField::parse(name) {
            Some(field) if fields.contains(&field) => errors.push(
                &format!("{at}.entry_fields[{i}]"),
                format!("`{name}` is listed twice"),
            ),
            Some(field) => fields.push(field),
            None => {
                let known = EntryFields::default().names();
                let message = match closest(name, &known) {
                    Some(near) => format!("unknown field `{name}`; did you mean `{near}`?"),
                    None => format!(
                        "unknown field `{name}`; expected some of {}",
                        known.join(", ")
                    ),
                };
                errors.push(&format!("{at}.entry_fields[{i}]"), message)
            }
        }
    }
    if !fields.contains(&EntryField::Payload) {
        errors.push(
            &format!("{at}.entry_fields"),
            "must include `payload` (an entry without its payload says nothing)",
        );
    }
    EntryFields::from_fields(fields)
}

/// The built-in handlers a route may name.
const HANDLERS: [&str; 4] = ["forward", "drop", "http", "exec"];

fn check_route(raw: &RawRoute, at: &str, errors: &mut ConfigErrors) -> Option<Route> {
    if raw.topics.is_empty() {
        errors.push(
            &format!("{at}.topics"),
            "needs at least one topic pattern, e.g. [\"orders.*\"]",
        );
    }
    // Every pattern on its own, whatever else is wrong with the route: one run shows them all.
    let mut globs_valid = !raw.topics.is_empty();
    for (index, pattern) in raw.topics.iter().enumerate() {
        if let Err((_, problem)) = Route::new(vec![pattern.clone()], Action::Drop) {
            errors.push(
                &format!("{at}.topics[{index}]"),
                format!("not a valid glob: {problem}"),
            );
            globs_valid = false;
        }
    }
    let timeout = positive_ms(raw.timeout_ms, &format!("{at}.timeout_ms"), errors)
        .unwrap_or(DEFAULT_HANDLER_TIMEOUT);
    let retry = check_retry(raw, at, errors);
    let action = check_action(raw, at, timeout, errors)?;
    if !globs_valid {
        return None;
    }
    match Route::new(raw.topics.clone(), action) {
        Ok(route) => Some(route.with_retry(retry?).with_timeout(timeout)),
        Err((index, problem)) => {
            errors.push(
                &format!("{at}.topics[{index}]"),
                format!("not a valid glob: {problem}"),
            );
            None
        }
    }
}

/// The keys each handler takes besides `topics`, `handler` and the retry and timeout keys.
fn misplaced_keys(raw: &RawRoute, handler: &str) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if handler != "forward" && raw.stream.is_some() {
        keys.push("stream");
    }
    if handler != "http" && raw.url.is_some() {
        keys.push("url");
    }
    if handler != "http" && !raw.headers.is_empty() {
        keys.push("headers");
    }
    if handler != "exec" && raw.command.is_some() {
        keys.push("command");
    }
    keys
}

fn check_action(
    raw: &RawRoute,
    at: &str,
    timeout: Duration,
    errors: &mut ConfigErrors,
) -> Option<Action> {
    let handler = raw.handler.as_str();
    if handler.is_empty() {
        errors.push(
            &format!("{at}.handler"),
            format!("missing; expected {}", one_of(&HANDLERS)),
        );
        return None;
    }
    // A misspelled handler is that, not a route whose other keys are misplaced.
    if !HANDLERS.contains(&handler) {
        errors.push(
            &format!("{at}.handler"),
            unknown_value("handler", handler, &HANDLERS),
        );
        return None;
    }
    let misplaced = misplaced_keys(raw, handler);
    for key in &misplaced {
        errors.push(
            &format!("{at}.{key}"),
            format!("handler `{handler}` does not use `{key}`; remove it"),
        );
    }
    if !misplaced.is_empty() {
        return None;
    }
    match handler {
        "forward" => {
            let Some(stream) = &raw.stream else {
                errors.push(
                    &format!("{at}.stream"),
                    "handler `forward` needs a stream, e.g. \"events.{topic}\"",
                );
                return None;
            };
            StreamTemplate::parse(stream)
                .map(|stream| Action::Forward { stream })
                .map_err(|problem| errors.push(&format!("{at}.stream"), problem))
                .ok()
        }
        "drop" => Some(Action::Drop),
        "http" => {
            let Some(url) = &raw.url else {
                errors.push(
                    &format!("{at}.url"),
                    "handler `http` needs a url, e.g. \"http://127.0.0.1:8080/hooks/orders\"",
                );
                return None;
            };
            let headers = raw.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            match HttpHandler::new(url, headers, timeout) {
                Ok(handler) => Some(Action::Call {
                    // The name shows up in logs and errors: the URL redacted (no password,
                    // no query value).
                    name: format!("http POST {}", handler.url()),
                    handler: Arc::new(handler),
                }),
                Err(problem) => {
                    errors.push(&format!("{at}.url"), problem.to_string());
                    None
                }
            }
        }
        "exec" => {
            let Some(command) = &raw.command else {
                errors.push(
                    &format!("{at}.command"),
                    "handler `exec` needs a command, e.g. [\"/usr/local/bin/notify\", \"--channel\", \"orders\"]",
                );
                return None;
            };
            match ExecHandler::new(command) {
                Ok(handler) => Some(Action::Call {
                    // The name shows up in logs and errors: the program, never an argument.
                    name: format!("exec {}", handler.program().display()),
                    handler: Arc::new(handler),
                }),
                Err(problem) => {
                    errors.push(&format!("{at}.command"), problem.to_string());
                    None
                }
            }
        }
        other => unreachable!("handler `{other}` was checked against HANDLERS above"),
    }
}

fn check_retry(raw: &RawRoute, at: &str, errors: &mut ConfigErrors) -> Option<RetryPolicy> {
    let mut retry = RetryPolicy::default();
    let before = errors.problems.len();
    match raw.max_attempts {
        Some(0) => errors.push(&format!("{at}.max_attempts"), "must be at least 1"),
        Some(n) => retry.max_attempts = n,
        None => {}
    }
    if let Some(initial) = positive_ms(
        raw.backoff_initial_ms,
        &format!("{at}.backoff_initial_ms"),
        errors,
    ) {
        retry.initial = initial;
    }
    if let Some(max) = positive_ms(raw.backoff_max_ms, &format!("{at}.backoff_max_ms"), errors) {
        retry.max = max;
    }
    if retry.max < retry.initial {
        errors.push(
            &format!("{at}.backoff_max_ms"),
            format!(
                "must be at least backoff_initial_ms ({} ms)",
                retry.initial.as_millis()
            ),
        );
    }
    match raw.backoff_multiplier {
        Some(m) if !(1.0..=100.0).contains(&m) => errors.push(
            &format!("{at}.backoff_multiplier"),
            "must be between 1.0 and 100.0",
        ),
        Some(m) => retry.multiplier = m,
        None => {}
    }
    (errors.problems.len() == before).then_some(retry)
}

/// The same rule as the `consumer_groups_name_valid` constraint.
fn valid_group_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 100
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
// figment's Jail closures return its large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use crate::config::{Config, ConfigErrors};

    /// One group `g` with one route whose keys are `route`.
    fn checked(route: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml(&format!(
            "database_url = \"postgres://h/db\"\n[[groups]]\nname = \"g\"\n[[groups.routes]]\ntopics = [\"*\"]\n{route}\n"
        ))
    }

    /// The `key: message` lines of the problems `route` has.
    fn problems(route: &str) -> Vec<String> {
        checked(route)
            .err()
            .map(|errors| {
                errors
                    .problems
                    .iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn exec_routes_run_an_absolute_program_or_one_found_on_path() {
        let config =
            checked("handler = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"cat\"]").unwrap();
        assert_eq!(
            format!("{:?}", config.groups[0].routes[0].action),
            "call exec /bin/sh",
            "named by the program alone"
        );
        // Under figment's Jail lock: the tests that clear the environment (PATH with it) run
        // in parallel with this one otherwise.
        figment::Jail::expect_with(|jail| {
            jail.set_env("PATH", "/usr/bin:/bin");
            let config =
                checked("handler = \"exec\"\ncommand = [\"sh\", \"--token=s3cret\"]").unwrap();
            let name = format!("{:?}", config.groups[0].routes[0].action);
            assert!(name.starts_with("call exec /"), "resolved on PATH: {name}");
            assert!(name.ends_with("/sh") && !name.contains("s3cret"), "{name}");
            Ok(())
        });
    }

    #[test]
    fn exec_routes_need_a_runnable_command_and_no_keys_of_other_handlers() {
        let at = "groups[0].routes[0]";
        assert_eq!(
            problems("handler = \"exec\""),
            [format!(
                "{at}.command: handler `exec` needs a command, e.g. [\"/usr/local/bin/notify\", \"--channel\", \"orders\"]"
            )]
        );
        let empty = problems("handler = \"exec\"\ncommand = []");
        assert!(
            empty[0].starts_with(&format!("{at}.command: needs the program")),
            "{empty:?}"
        );
        for (command, message) in [
            ("[\"\"]", "the program is empty"),
            (
                "[\"hooks/notify.sh\", \"s3cret\"]",
                "`hooks/notify.sh` is a relative path: give an absolute one",
            ),
            (
                "[\"no-such-program-anywhere\"]",
                "`no-such-program-anywhere` is not an executable file in any absolute directory of PATH",
            ),
            (
                "[\"/nonexistent/notify\", \"s3cret\"]",
                "cannot run `/nonexistent/notify`: No such file or directory",
            ),
            (
                "[\"/bin/sh\", \"s3cret\\u0000\"]",
                "argument 1 holds a NUL byte",
            ),
        ] {
            let found = problems(&format!("handler = \"exec\"\ncommand = {command}"));
            assert_eq!(found.len(), 1, "{command}: {found:?}");
            assert!(
                found[0].starts_with(&format!("{at}.command: {message}")),
                "{command}: {found:?}"
            );
            assert!(!found[0].contains("s3cret"), "never an argument: {found:?}");
        }
        assert_eq!(
            problems(
                "handler = \"exec\"\ncommand = [\"/bin/sh\"]\nurl = \"http://h/\"\nheaders = { a = \"b\" }\nstream = \"s\""
            ),
            [
                format!("{at}.stream: handler `exec` does not use `stream`; remove it"),
                format!("{at}.url: handler `exec` does not use `url`; remove it"),
                format!("{at}.headers: handler `exec` does not use `headers`; remove it"),
            ]
        );
        for (handler, keys) in [
            ("forward", "stream = \"s\""),
            ("http", "url = \"http://h/\""),
            ("drop", ""),
        ] {
            assert_eq!(
                problems(&format!(
                    "handler = \"{handler}\"\n{keys}\ncommand = [\"/bin/sh\"]"
                )),
                [format!(
                    "{at}.command: handler `{handler}` does not use `command`; remove it"
                )]
            );
        }
        let unknown = problems("handler = \"shell\"");
        assert!(
            unknown[0].ends_with("expected `forward`, `drop`, `http` or `exec`"),
            "{unknown:?}"
        );
    }

    #[test]
    fn a_misspelled_handler_is_named_with_the_one_it_probably_meant() {
        let at = "groups[0].routes[0]";
        assert_eq!(
            problems("handler = \"fowrard\"\nstream = \"events.{topic}\""),
            [format!(
                "{at}.handler: unknown handler `fowrard`; did you mean `forward`?"
            )]
        );
        assert_eq!(
            problems("handler = \"\""),
            [format!(
                "{at}.handler: missing; expected `forward`, `drop`, `http` or `exec`"
            )]
        );
    }

    #[test]
    fn every_bad_glob_is_reported_beside_the_routes_other_problems() {
        let at = "groups[0].routes[0]";
        let found: Vec<String> = Config::from_toml(
            "database_url = \"postgres://h/db\"\n[[groups]]\nname = \"g\"\n[[groups.routes]]\n\
             topics = [\"ok.*\", \"bad[\", \"also{bad\"]\nhandler = \"fowrard\"\nmax_attempts = 0\n",
        )
        .unwrap_err()
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect();
        let keys: Vec<&str> = found
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                format!("{at}.topics[1]"),
                format!("{at}.topics[2]"),
                format!("{at}.max_attempts"),
                format!("{at}.handler"),
            ],
            "{found:?}"
        );
        assert!(found[0].contains("not a valid glob"), "{found:?}");
        // A route whose only problem is its glob.
        let only_the_glob = Config::from_toml(
            "database_url = \"postgres://h/db\"\n[[groups]]\nname = \"g\"\n[[groups.routes]]\n\
             topics = [\"bad[\"]\nhandler = \"drop\"\n",
        )
        .unwrap_err();
        assert_eq!(only_the_glob.problems.len(), 1, "{only_the_glob}");
    }

    #[test]
    fn misspelled_values_get_a_suggestion() {
        let config = |toml: &str| {
            Config::from_toml(&format!("database_url = \"postgres://h/db\"\n{toml}"))
                .unwrap_err()
                .to_string()
        };
        let text = config(
            "[relay]\nwakeup = \"notfy\"\n[registry]\nunregistered = \"rejct\"\n[[groups]]\nname = \"g\"\nordering = \"stict\"\nentry_fields = [\"payload\", \"topc\"]\n[[groups.routes]]\ntopics = [\"*\"]\nhandler = \"drop\"\n",
        );
        for expected in [
            "relay.wakeup: unknown value `notfy`; did you mean `notify`?",
            "registry.unregistered: unknown value `rejct`; did you mean `reject`?",
            "groups[0].ordering: unknown value `stict`; did you mean `strict`?",
            "groups[0].entry_fields[1]: unknown field `topc`; did you mean `topic`?",
        ] {
            assert!(text.contains(expected), "{expected}\n{text}");
        }
        let text = config("[relay]\nwakeup = \"push\"\n");
        assert!(
            text.contains("unknown value `push`; expected `poll` or `notify`"),
            "{text}"
        );
    }
}
