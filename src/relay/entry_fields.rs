//! Which fields a group's stream entries carry (`[[groups]] entry_fields`, DESIGN §6): all of
//! them by default; a group whose consumers need less can leave the rest out, and every field
//! left out is work Redis does not do per entry. `payload` is always there.

use crate::sink::Fields;
use crate::store::OutboxRow;

/// One field of a stream entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryField {
    /// `id`: the message's id.
    Id,
    /// `topic`: the message's topic.
    Topic,
    /// `key`: the ordering key; left out when the message has none.
    Key,
    /// `payload`: the message's payload, or a handler output's, as JSON text; always there.
    Payload,
    /// `headers`: the message's headers as JSON text.
    Headers,
    /// `position`: `"<tx_id>:<seq>"`.
    Position,
    /// `schema_version`: left out when the message has none.
    SchemaVersion,
    /// `created_at`: when the message was inserted, RFC 3339 in UTC with microseconds.
    CreatedAt,
    /// `group`: the consumer group that appended the entry.
    Group,
    /// `traceparent`: the W3C trace context from the headers; left out when they have none.
    Traceparent,
}

impl EntryField {
    /// Every field, in the order entries carry them.
    pub const ALL: [EntryField; 10] = [
        EntryField::Id,
        EntryField::Topic,
        EntryField::Key,
        EntryField::Payload,
        EntryField::Headers,
        EntryField::Position,
        EntryField::SchemaVersion,
        EntryField::CreatedAt,
        EntryField::Group,
        EntryField::Traceparent,
    ];

    /// The field's name, in the entry and in `entry_fields`.
    pub fn name(self) -> &'static str {
        match self {
            EntryField::Id => "id",
            EntryField::Topic => "topic",
            EntryField::Key => "key",
            EntryField::Payload => "payload",
            EntryField::Headers => "headers",
            EntryField::Position => "position",
            EntryField::SchemaVersion => "schema_version",
            EntryField::CreatedAt => "created_at",
            EntryField::Group => "group",
            EntryField::Traceparent => "traceparent",
        }
    }

    /// The field called `name`; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<EntryField> {
        EntryField::ALL.into_iter().find(|f| f.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of [`EntryField`]s; [`EntryFields::default`] is all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFields(u16);

impl Default for EntryFields {
    fn default() -> Self {
        EntryFields::from_fields(EntryField::ALL)
    }
}

impl EntryFields {
    /// These fields and `payload`.
    pub fn from_fields(fields: impl IntoIterator<Item = EntryField>) -> EntryFields {
        let bits = fields.into_iter().fold(0, |bits, f| bits | f.bit());
        EntryFields(bits | EntryField::Payload.bit())
    }

    /// Whether `field` is in the set.
    pub fn contains(self, field: EntryField) -> bool {
        self.0 & field.bit() != 0
    }

    /// The names of the fields in the set, in entry order.
    pub fn names(self) -> Vec<&'static str> {
        EntryField::ALL
            .into_iter()
            .filter(|f| self.contains(*f))
            .map(EntryField::name)
            .collect()
    }

    /// The fields of `row`'s entry for `group` carrying `payload`: `id`, `topic`, `key` (when
    /// set), `payload` and `headers` (JSON text), `position`, `schema_version` (when set),
    /// `created_at` (RFC 3339), `group`, and `traceparent` when the headers carry one; those
    /// of them in the set.
    pub fn of(self, group: &str, row: &OutboxRow, payload: String) -> Fields {
        let has = |field| self.contains(field);
        let mut fields = Vec::with_capacity(10);
        if has(EntryField::Id) {
            fields.push(("id", row.id.to_string()));
        }
        if has(EntryField::Topic) {
            fields.push(("topic", row.topic.clone()));
        }
        if has(EntryField::Key)
            && let Some(key) = &row.key
        {
            fields.push(("key", key.clone()));
        }
        fields.push(("payload", payload));
        if has(EntryField::Headers) {
            fields.push(("headers", row.headers.clone()));
        }
        if has(EntryField::Position) {
            fields.push(("position", row.position.to_string()));
        }
        if has(EntryField::SchemaVersion)
            && let Some(version) = row.schema_version
        {
            fields.push(("schema_version", version.to_string()));
        }
        if has(EntryField::CreatedAt) {
            fields.push((
                "created_at",
                row.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ));
        }
        if has(EntryField::Group) {
            fields.push(("group", group.to_owned()));
        }
        if has(EntryField::Traceparent)
            && let Some(traceparent) = traceparent(&row.headers)
        {
            fields.push(("traceparent", traceparent));
        }
        fields
    }
}

/// The `traceparent` header, if any (parsing the headers only when the name occurs).
pub(super) fn traceparent(headers_json: &str) -> Option<String> {
    if !headers_json.contains("\"traceparent\"") {
        return None;
    }
    let headers: std::collections::HashMap<String, String> =
        serde_json::from_str(headers_json).ok()?;
    headers.get("traceparent").cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_payload_is_always_in() {
        for field in EntryField::ALL {
            assert_eq!(EntryField::parse(field.name()), Some(field));
        }
        assert_eq!(EntryField::parse("payloads"), None);
        assert_eq!(EntryFields::default().names().len(), 10);
        let trimmed = EntryFields::from_fields([EntryField::Position, EntryField::Id]);
        assert_eq!(trimmed.names(), ["id", "payload", "position"]);
        assert_eq!(EntryFields::from_fields([]).names(), ["payload"]);
    }
}
