//! Turns a batch of outbox rows into stream appends for one group: route each row (first
//! matching route), render the stream name, build the entry fields (DESIGN §6). Pure.

use std::collections::HashMap;

use super::route::{Handler, Route, route_for};
use crate::sink::{Entry, StreamAppend};
use crate::store::OutboxRow;

/// What one batch becomes: the appends, and how many rows no route took or `drop` consumed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dispatch {
    pub appends: Vec<StreamAppend>,
    pub forwarded: usize,
    pub unrouted: usize,
    pub dropped: usize,
}

/// Routes `rows` (in position order) for `group`; each stream's entries stay in position order.
pub fn dispatch(group: &str, routes: &[Route], rows: &[OutboxRow]) -> Dispatch {
    let mut dispatch = Dispatch::default();
    let mut by_stream: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let Some(route) = route_for(routes, &row.topic) else {
            dispatch.unrouted += 1;
            continue;
        };
        match &route.handler {
            Handler::Drop => dispatch.dropped += 1,
            Handler::Forward { stream } => {
                let stream = stream.render(&row.topic, row.key.as_deref());
                let index = *by_stream.entry(stream.clone()).or_insert_with(|| {
                    dispatch.appends.push(StreamAppend {
                        stream,
                        entries: Vec::new(),
                    });
                    dispatch.appends.len() - 1
                });
                dispatch.appends[index].entries.push(entry(group, row));
                dispatch.forwarded += 1;
            }
        }
    }
    dispatch
}

/// The fields of a message's stream entry: `id`, `topic`, `key` (when set), `payload` and
/// `headers` (JSON text), `position`, `schema_version` (when set), `created_at` (RFC 3339),
/// `group`, and `traceparent` when the headers carry one.
pub fn entry(group: &str, row: &OutboxRow) -> Entry {
    let mut fields = Vec::with_capacity(10);
    fields.push(("id", row.id.to_string()));
    fields.push(("topic", row.topic.clone()));
    if let Some(key) = &row.key {
        fields.push(("key", key.clone()));
    }
    fields.push(("payload", row.payload.clone()));
    fields.push(("headers", row.headers.clone()));
    fields.push(("position", row.position.to_string()));
    if let Some(version) = row.schema_version {
        fields.push(("schema_version", version.to_string()));
    }
    fields.push((
        "created_at",
        row.created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    ));
    fields.push(("group", group.to_owned()));
    if let Some(traceparent) = traceparent(&row.headers) {
        fields.push(("traceparent", traceparent));
    }
    Entry {
        position: row.position,
        fields,
    }
}

/// The `traceparent` header, if any (parsing the headers only when the name occurs).
fn traceparent(headers_json: &str) -> Option<String> {
    if !headers_json.contains("\"traceparent\"") {
        return None;
    }
    let headers: HashMap<String, String> = serde_json::from_str(headers_json).ok()?;
    headers.get("traceparent").cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;
    use crate::relay::route::StreamTemplate;

    fn row(seq: i64, topic: &str, key: Option<&str>) -> OutboxRow {
        OutboxRow {
            position: Position::new(100, seq),
            id: uuid::Uuid::nil(),
            topic: topic.into(),
            key: key.map(Into::into),
            schema_version: None,
            payload: r#"{"n": 1}"#.into(),
            headers: "{}".into(),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 123_000).unwrap(),
        }
    }

    fn routes() -> Vec<Route> {
        vec![
            Route::new(
                vec!["orders.*".into()],
                Handler::Forward {
                    stream: StreamTemplate::parse("events.{topic}").unwrap(),
                },
            )
            .unwrap(),
            Route::new(vec!["noise.*".into()], Handler::Drop).unwrap(),
        ]
    }

    #[test]
    fn groups_entries_by_stream_in_position_order() {
        let rows = [
            row(1, "orders.created", Some("a")),
            row(2, "users.deleted", None),
            row(3, "orders.paid", None),
            row(4, "orders.created", Some("b")),
            row(5, "noise.tick", None),
        ];
        let dispatch = dispatch("g", &routes(), &rows);
        assert_eq!(
            (dispatch.forwarded, dispatch.unrouted, dispatch.dropped),
            (3, 1, 1)
        );
        let streams: Vec<(&str, Vec<i64>)> = dispatch
            .appends
            .iter()
            .map(|a| {
                (
                    a.stream.as_str(),
                    a.entries.iter().map(|e| e.position.seq).collect(),
                )
            })
            .collect();
        assert_eq!(
            streams,
            [
                ("events.orders.created", vec![1, 4]),
                ("events.orders.paid", vec![3])
            ]
        );
    }

    #[test]
    fn entries_carry_the_design_fields() {
        let mut r = row(7, "orders.created", Some("order-1"));
        r.schema_version = Some(3);
        r.headers = r#"{"traceparent": "00-abc-def-01", "x": "y"}"#.into();
        let names: Vec<&str> = entry("notifications", &r)
            .fields
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "topic",
                "key",
                "payload",
                "headers",
                "position",
                "schema_version",
                "created_at",
                "group",
                "traceparent"
            ]
        );
        let fields: HashMap<&str, String> = entry("notifications", &r).fields.into_iter().collect();
        assert_eq!(fields["position"], "100:7");
        assert_eq!(fields["created_at"], "2023-11-14T22:13:20.000123Z");
        assert_eq!(fields["traceparent"], "00-abc-def-01");
        let plain: Vec<&str> = entry("g", &row(1, "t", None))
            .fields
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            plain,
            [
                "id",
                "topic",
                "payload",
                "headers",
                "position",
                "created_at",
                "group"
            ]
        );
    }
}
