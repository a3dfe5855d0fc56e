//! Compatibility between two versions of a topic's JSON Schema: pure rules, no I/O.
//!
//! One check, [`reader_accepts_writer`], answers "can a consumer built for `reader` read every
//! message written against `writer`?". The modes are that check in one or both directions:
//!
//! ```text
//!  backward: reader = new, writer = old   (new consumers read old messages)
//!  forward:  reader = old, writer = new   (old consumers read new messages)
//!  full:     both                          none: no check
//! ```
//!
//! The rules look at `type`, `enum`, `required`, `properties`, `additionalProperties: false`
//! and `items`, recursing into the properties both versions declare and into `items`. They do
//! not follow `$ref` or combine `allOf`/`anyOf`/`oneOf`: those parts are not compared. A new
//! version is compared with the latest version only, never with older ones.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// A topic's compatibility mode, chosen when a version is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    /// Any new version is accepted.
    None,
    /// New consumers can read messages written against the previous version (default).
    #[default]
    Backward,
    /// Consumers of the previous version can read messages written against the new one.
    Forward,
    /// Both backward and forward.
    Full,
}

impl Compatibility {
    /// The name stored in `outbox.schemas.compatibility` and used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "none",
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
        }
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compatibility {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "none" => Ok(Compatibility::None),
            "backward" => Ok(Compatibility::Backward),
            "forward" => Ok(Compatibility::Forward),
            "full" => Ok(Compatibility::Full),
            other => Err(format!(
                "unknown compatibility mode `{other}`; expected none, backward, forward or full"
            )),
        }
    }
}

/// One way in which `reader` may fail to read data written against `writer`. Paths are JSON
/// pointers into the schema, e.g. `/properties/total`.
#[derive(Debug, Clone, PartialEq)]
pub enum Mismatch {
    /// The reader requires a property that the writer does not require.
    RequiredNotGuaranteed {
        /// The property, e.g. `/properties/total`.
        path: String,
        /// The writer declares the property (as optional); false: it does not mention it.
        writer_declares: bool,
    },
    /// The writer allows a type the reader does not accept.
    TypeNotAccepted {
        /// The (sub)schema whose `type` differs; empty for the root.
        path: String,
        /// The types the reader accepts.
        reader: TypeSet,
        /// The types the writer allows.
        writer: TypeSet,
    },
    /// The reader has an `enum` and the writer may write values outside it: `missing` are the
    /// writer's values the reader lacks; `None` when the writer has no `enum` at all.
    EnumNotCovered {
        /// The (sub)schema with the reader's `enum`; empty for the root.
        path: String,
        /// The writer's values the reader's `enum` lacks; `None`: the writer has no `enum`.
        missing: Option<Vec<Value>>,
    },
    /// The reader has `additionalProperties: false` and does not declare a property the writer
    /// declares.
    UndeclaredProperty {
        /// The writer's property the reader does not declare, e.g. `/properties/note`.
        path: String,
    },
}

/// Which rule a [`Violation`] broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A property required by the reader must be required by the writer.
    Required,
    /// The reader's `type` must include every type of the writer's.
    Type,
    /// A reader's `enum` must include every value of the writer's `enum`.
    Enum,
    /// With `additionalProperties: false`, the reader must declare every writer property.
    ClosedProperties,
}

/// A broken rule, phrased from the point of view of the change from the old version to the
/// new one, e.g. "backward: `/properties/total` changes type from integer to string".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// `backward` or `forward`: the direction that broke (full checks both).
    pub direction: Compatibility,
    /// The rule the change breaks.
    pub rule: Rule,
    /// JSON pointer into the schema.
    pub path: String,
    /// What the change does, without the direction.
    pub change: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.direction, self.change)
    }
}

/// Every rule the change from `old` to `new` breaks under `mode`; empty when compatible.
pub fn check(mode: Compatibility, old: &Value, new: &Value) -> Vec<Violation> {
    let backward = || {
        reader_accepts_writer(new, old)
            .into_iter()
            .map(|m| phrase(Compatibility::Backward, m))
    };
    let forward = || {
        reader_accepts_writer(old, new)
            .into_iter()
            .map(|m| phrase(Compatibility::Forward, m))
    };
    match mode {
        Compatibility::None => Vec::new(),
        Compatibility::Backward => backward().collect(),
        Compatibility::Forward => forward().collect(),
        Compatibility::Full => backward().chain(forward()).collect(),
    }
}

/// Every way in which a consumer built for `reader` could fail on data valid under `writer`.
pub fn reader_accepts_writer(reader: &Value, writer: &Value) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    compare(reader, writer, "", &mut mismatches);
    mismatches
}

/// The JSON types a schema allows; `None` when it has no `type` (any type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSet(Option<BTreeSet<String>>);

impl TypeSet {
    fn of(schema: &Map<String, Value>) -> TypeSet {
        match schema.get("type") {
            Some(Value::String(one)) => TypeSet(Some(BTreeSet::from([one.clone()]))),
            Some(Value::Array(many)) => TypeSet(Some(
                many.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
            )),
            _ => TypeSet(None),
        }
    }

    /// Whether every value of `writer` is accepted here (an integer is a number).
    fn includes(&self, writer: &TypeSet) -> bool {
        match (&self.0, &writer.0) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(reader), Some(writer)) => writer
                .iter()
                .all(|t| reader.contains(t) || (t == "integer" && reader.contains("number"))),
        }
    }
}

impl fmt::Display for TypeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("any"),
            Some(types) => {
                let names: Vec<&str> = types.iter().map(String::as_str).collect();
                f.write_str(&names.join(" | "))
            }
        }
    }
}

fn compare(reader: &Value, writer: &Value, path: &str, out: &mut Vec<Mismatch>) {
    // Boolean schemas and other non-objects carry none of the compared keywords.
    let (Some(reader), Some(writer)) = (reader.as_object(), writer.as_object()) else {
        return;
    };
    compare_types(reader, writer, path, out);
    compare_enums(reader, writer, path, out);
    compare_required(reader, writer, path, out);
    compare_closed(reader, writer, path, out);
    let empty = Map::new();
    let reader_properties = properties(reader).unwrap_or(&empty);
    let writer_properties = properties(writer).unwrap_or(&empty);
    for (name, reader_property) in reader_properties {
        if let Some(writer_property) = writer_properties.get(name) {
            let at = property_path(path, name);
            compare(reader_property, writer_property, &at, out);
        }
    }
    if let (Some(reader_items), Some(writer_items)) = (reader.get("items"), writer.get("items")) {
        compare(reader_items, writer_items, &format!("{path}/items"), out);
    }
}

fn compare_types(
    reader: &Map<String, Value>,
    writer: &Map<String, Value>,
    path: &str,
    out: &mut Vec<Mismatch>,
) {
    let (reader, writer) = (TypeSet::of(reader), TypeSet::of(writer));
    if !reader.includes(&writer) {
        out.push(Mismatch::TypeNotAccepted {
            path: path.to_owned(),
            reader,
            writer,
        });
    }
}

fn compare_enums(
    reader: &Map<String, Value>,
    writer: &Map<String, Value>,
    path: &str,
    out: &mut Vec<Mismatch>,
) {
    let Some(Value::Array(reader_values)) = reader.get("enum") else {
        return;
    };
    let missing = match writer.get("enum") {
        Some(Value::Array(writer_values)) => {
            let missing: Vec<Value> = writer_values
                .iter()
                .filter(|v| !reader_values.contains(v))
                .cloned()
                .collect();
            if missing.is_empty() {
                return;
            }
            Some(missing)
        }
        _ => None,
    };
    out.push(Mismatch::EnumNotCovered {
        path: path.to_owned(),
        missing,
    });
}

fn compare_required(
    reader: &Map<String, Value>,
    writer: &Map<String, Value>,
    path: &str,
    out: &mut Vec<Mismatch>,
) {
    let writer_required = required(writer);
    let writer_properties = properties(writer);
    for name in required(reader) {
        if !writer_required.contains(&name) {
            out.push(Mismatch::RequiredNotGuaranteed {
                path: property_path(path, name),
                writer_declares: writer_properties.is_some_and(|p| p.contains_key(name)),
            });
        }
    }
}

fn compare_closed(
    reader: &Map<String, Value>,
    writer: &Map<String, Value>,
    path: &str,
    out: &mut Vec<Mismatch>,
) {
    if reader.get("additionalProperties") != Some(&Value::Bool(false)) {
        return;
    }
    let reader_properties = properties(reader);
    for name in properties(writer).into_iter().flat_map(Map::keys) {
        if !reader_properties.is_some_and(|p| p.contains_key(name)) {
            out.push(Mismatch::UndeclaredProperty {
                path: property_path(path, name),
            });
        }
    }
}

fn properties(schema: &Map<String, Value>) -> Option<&Map<String, Value>> {
    schema.get("properties").and_then(Value::as_object)
}

fn required(schema: &Map<String, Value>) -> Vec<&str> {
    match schema.get("required") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// `path/properties/name`, with `~` and `/` escaped as RFC 6901 says.
fn property_path(path: &str, name: &str) -> String {
    format!(
        "{path}/properties/{}",
        name.replace('~', "~0").replace('/', "~1")
    )
}

/// States `mismatch` as what the change from old to new does. In `Backward` the reader is the
/// new version; in `Forward` it is the old one.
fn phrase(direction: Compatibility, mismatch: Mismatch) -> Violation {
    let backward = direction == Compatibility::Backward;
    let (rule, path, change) = match mismatch {
        Mismatch::RequiredNotGuaranteed {
            path,
            writer_declares,
        } => {
            let change = match (backward, writer_declares) {
                (true, false) => format!("adds required property `{}`", shown(&path)),
                (true, true) => format!("makes optional property `{}` required", shown(&path)),
                (false, true) => format!("makes required property `{}` optional", shown(&path)),
                (false, false) => format!("removes required property `{}`", shown(&path)),
            };
            (Rule::Required, path, change)
        }
        Mismatch::TypeNotAccepted {
            path,
            reader,
            writer,
        } => {
            let (old, new) = if backward {
                (writer, reader)
            } else {
                (reader, writer)
            };
            let change = format!("`{}` changes type from {old} to {new}", shown(&path));
            (Rule::Type, path, change)
        }
        Mismatch::EnumNotCovered { path, missing } => {
            let change = match (backward, missing) {
                (true, Some(values)) => {
                    format!(
                        "removes enum value {} from `{}`",
                        values_list(&values),
                        shown(&path)
                    )
                }
                (true, None) => format!("adds an enum to `{}`, which had none", shown(&path)),
                (false, Some(values)) => {
                    format!(
                        "adds enum value {} to `{}`",
                        values_list(&values),
                        shown(&path)
                    )
                }
                (false, None) => format!("removes the enum of `{}`", shown(&path)),
            };
            (Rule::Enum, path, change)
        }
        Mismatch::UndeclaredProperty { path } => {
            let change = if backward {
                format!(
                    "removes property `{}` while additionalProperties is false",
                    shown(&path)
                )
            } else {
                format!(
                    "adds property `{}` while additionalProperties was false",
                    shown(&path)
                )
            };
            (Rule::ClosedProperties, path, change)
        }
    };
    Violation {
        direction,
        rule,
        path,
        change,
    }
}

/// The root's JSON pointer is the empty string (`/` would be the property named ""): name it.
fn shown(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

fn values_list(values: &[Value]) -> String {
    let texts: Vec<String> = values.iter().map(Value::to_string).collect();
    texts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(extra: Value) -> Value {
        let mut schema = json!({
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "integer"},
                "status": {"type": "string", "enum": ["new", "paid"]}
            }
        });
        merge(&mut schema, extra);
        schema
    }

    /// Deep-merges `extra` into `base` (objects merge, anything else replaces).
    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(base), Value::Object(extra)) => {
                for (k, v) in extra {
                    merge(base.entry(k).or_insert(Value::Null), v);
                }
            }
            (base, extra) => *base = extra,
        }
    }

    fn texts(violations: &[Violation]) -> Vec<String> {
        violations.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn adding_an_optional_property_is_compatible_in_every_mode() {
        let old = order(json!({}));
        let new = order(json!({"properties": {"note": {"type": "string"}}}));
        for mode in [
            Compatibility::Backward,
            Compatibility::Forward,
            Compatibility::Full,
        ] {
            assert_eq!(check(mode, &old, &new), [], "{mode}");
        }
    }

    #[test]
    fn backward_refuses_a_new_required_property() {
        let old = order(json!({}));
        let new = order(
            json!({"required": ["id", "total"], "properties": {"total": {"type": "integer"}}}),
        );
        let violations = check(Compatibility::Backward, &old, &new);
        assert_eq!(
            texts(&violations),
            ["backward: adds required property `/properties/total`"]
        );
        assert_eq!(violations[0].rule, Rule::Required);
        assert_eq!(violations[0].path, "/properties/total");
        // Old consumers ignore the new property: forward is fine.
        assert_eq!(check(Compatibility::Forward, &old, &new), []);
    }

    #[test]
    fn making_an_optional_property_required_or_optional_is_named() {
        let optional = order(json!({}));
        let required = order(json!({"required": ["id", "status"]}));
        assert_eq!(
            texts(&check(Compatibility::Backward, &optional, &required)),
            ["backward: makes optional property `/properties/status` required"]
        );
        assert_eq!(
            texts(&check(Compatibility::Forward, &required, &optional)),
            ["forward: makes required property `/properties/status` optional"]
        );
        let without = json!({"type": "object"});
        assert_eq!(
            texts(&check(Compatibility::Forward, &order(json!({})), &without)),
            ["forward: removes required property `/properties/id`"]
        );
    }

    #[test]
    fn type_changes_are_refused_but_widening_integer_to_number_is_backward() {
        let old = order(json!({}));
        let string = order(json!({"properties": {"id": {"type": "string"}}}));
        assert_eq!(
            texts(&check(Compatibility::Backward, &old, &string)),
            ["backward: `/properties/id` changes type from integer to string"]
        );
        let number = order(json!({"properties": {"id": {"type": "number"}}}));
        assert_eq!(check(Compatibility::Backward, &old, &number), []);
        let violations = check(Compatibility::Forward, &old, &number);
        assert_eq!(
            texts(&violations),
            ["forward: `/properties/id` changes type from integer to number"]
        );
        assert_eq!(violations[0].rule, Rule::Type);
        let nullable = order(json!({"properties": {"id": {"type": ["integer", "null"]}}}));
        assert_eq!(check(Compatibility::Backward, &old, &nullable), []);
        assert_eq!(
            texts(&check(Compatibility::Forward, &old, &nullable)),
            ["forward: `/properties/id` changes type from integer to integer | null"]
        );
    }

    #[test]
    fn a_reader_type_where_the_writer_had_none_is_a_type_change_from_any() {
        let old = json!({"properties": {"x": {}}});
        let new = json!({"properties": {"x": {"type": "string"}}});
        assert_eq!(
            texts(&check(Compatibility::Backward, &old, &new)),
            ["backward: `/properties/x` changes type from any to string"]
        );
        assert_eq!(check(Compatibility::Forward, &old, &new), []);
    }

    #[test]
    fn removing_an_enum_value_is_not_backward_adding_one_is_not_forward() {
        let old = order(json!({}));
        let fewer = order(json!({"properties": {"status": {"enum": ["new"]}}}));
        let violations = check(Compatibility::Backward, &old, &fewer);
        assert_eq!(
            texts(&violations),
            ["backward: removes enum value \"paid\" from `/properties/status`"]
        );
        assert_eq!(violations[0].rule, Rule::Enum);
        assert_eq!(check(Compatibility::Forward, &old, &fewer), []);

        let more = order(json!({"properties": {"status": {"enum": ["new", "paid", "void"]}}}));
        assert_eq!(check(Compatibility::Backward, &old, &more), []);
        assert_eq!(
            texts(&check(Compatibility::Forward, &old, &more)),
            ["forward: adds enum value \"void\" to `/properties/status`"]
        );
    }

    #[test]
    fn adding_or_removing_a_whole_enum_is_named() {
        let open = json!({"properties": {"s": {"type": "string"}}});
        let closed = json!({"properties": {"s": {"type": "string", "enum": ["a"]}}});
        assert_eq!(
            texts(&check(Compatibility::Backward, &open, &closed)),
            ["backward: adds an enum to `/properties/s`, which had none"]
        );
        assert_eq!(
            texts(&check(Compatibility::Forward, &closed, &open)),
            ["forward: removes the enum of `/properties/s`"]
        );
    }

    #[test]
    fn closed_objects_refuse_properties_they_do_not_declare() {
        let old = order(json!({}));
        let closed = json!({
            "type": "object",
            "required": ["id"],
            "additionalProperties": false,
            "properties": {"id": {"type": "integer"}}
        });
        let violations = check(Compatibility::Backward, &old, &closed);
        assert_eq!(
            texts(&violations),
            ["backward: removes property `/properties/status` while additionalProperties is false"]
        );
        assert_eq!(violations[0].rule, Rule::ClosedProperties);

        let wider = json!({
            "type": "object",
            "required": ["id"],
            "additionalProperties": false,
            "properties": {"id": {"type": "integer"}, "note": {"type": "string"}}
        });
        assert_eq!(
            texts(&check(Compatibility::Forward, &closed, &wider)),
            ["forward: adds property `/properties/note` while additionalProperties was false"]
        );
    }

    #[test]
    fn rules_recurse_into_nested_objects_and_items() {
        let old = json!({"type": "object", "properties": {
            "customer": {"type": "object", "properties": {"name": {"type": "string"}}},
            "lines": {"type": "array", "items": {"type": "object", "required": ["sku"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}}
        }});
        let new = json!({"type": "object", "properties": {
            "customer": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            "lines": {"type": "array", "items": {"type": "object", "required": ["sku"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "string"}}}}
        }});
        assert_eq!(
            texts(&check(Compatibility::Backward, &old, &new)),
            [
                "backward: makes optional property `/properties/customer/properties/name` required",
                "backward: `/properties/lines/items/properties/qty` changes type from integer to string",
            ]
        );
    }

    #[test]
    fn full_reports_both_directions_and_none_reports_nothing() {
        let old = order(json!({}));
        let new = order(json!({"properties": {"status": {"enum": ["new", "void"]}}}));
        assert_eq!(
            texts(&check(Compatibility::Full, &old, &new)),
            [
                "backward: removes enum value \"paid\" from `/properties/status`",
                "forward: adds enum value \"void\" to `/properties/status`",
            ]
        );
        assert_eq!(check(Compatibility::None, &old, &new), []);
    }

    #[test]
    fn property_names_are_escaped_as_json_pointers() {
        let old = json!({"properties": {"a/b~c": {"type": "integer"}}});
        let new = json!({"properties": {"a/b~c": {"type": "string"}}});
        assert_eq!(
            check(Compatibility::Backward, &old, &new)[0].path,
            "/properties/a~1b~0c"
        );
    }

    #[test]
    fn modes_round_trip_through_their_names() {
        for mode in [
            Compatibility::None,
            Compatibility::Backward,
            Compatibility::Forward,
            Compatibility::Full,
        ] {
            assert_eq!(mode.as_str().parse::<Compatibility>(), Ok(mode));
        }
        assert!("sideways".parse::<Compatibility>().is_err());
    }
}
