//! JSON of any nesting depth Postgres accepts.
//!
//! Postgres bounds jsonb nesting only by its `max_stack_depth` (measured on Postgres 15 at the
//! default 2 MB: 13,090 levels of objects, 14,543 of arrays; more when an operator raises it).
//! serde_json stops parsing at 128 levels, and a [`serde_json::Value`] recurses on the native
//! stack when it is dropped, cloned, printed or validated (measured in a debug build: about
//! 840 bytes a level to drop, 680 to serialize, 2.5 KiB to validate against a recursive
//! schema), so a few thousand levels overflow a 2 MiB thread. Everything here keeps that from
//! happening:
//!
//! ```text
//!  text ──from_str──▶ T          shallow (≤ 128 levels): serde_json as usual, nothing added
//!                                deeper: limit off, the stack grows as the parser descends
//!  Value ──to_string / serialize──▶ text  the stack grows as the serializer descends
//!  Value ──drop_value──▶ ()      no recursion at all
//!  f(&Value) ──with_stack_for(depth(v), f)   f runs on a stack sized for the value's depth
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// Nesting serde_json parses without help (its recursion limit); values within it need no
/// special stack.
pub const SHALLOW_DEPTH: usize = 128;

/// Stack reserved per nesting level for [`with_stack_for`]: about three times what the
/// jsonschema validator was measured to use per level of a recursive schema in a debug build.
/// Only the pages actually touched are ever committed.
const STACK_PER_LEVEL: usize = 8 * 1024;

/// Stack kept free below a callback besides the per-level share.
const STACK_BASE: usize = 256 * 1024;

/// Free stack below which [`to_string`] and [`serialize`] move to a new stack segment, and the
/// size of each segment (serde_stacker's defaults, which [`from_str`] uses).
const RED_ZONE: usize = 64 * 1024;
const SEGMENT: usize = 2 * 1024 * 1024;

/// Parses `text` into `T` at any nesting depth. Text within [`SHALLOW_DEPTH`] is parsed by
/// serde_json exactly as `serde_json::from_str` does; deeper text is parsed again with the
/// recursion limit off, on a stack that grows as needed. A deep [`Value`] in the result should
/// go to [`drop_value`].
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    // Every failure is re-checked without the limit: the second parse tells the true reason.
    serde_json::from_str(text).or_else(|_| from_unbounded(serde_json::Deserializer::from_str(text)))
}

/// [`from_str`] for bytes (an HTTP body), which must be UTF-8.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
        .or_else(|_| from_unbounded(serde_json::Deserializer::from_slice(bytes)))
}

fn from_unbounded<'de, R, T>(
    mut deserializer: serde_json::Deserializer<R>,
) -> Result<T, serde_json::Error>
where
    R: serde_json::de::Read<'de>,
    T: DeserializeOwned,
{
    deserializer.disable_recursion_limit();
    // serde_stacker starts a new 2 MB stack segment whenever less than 64 KB is left.
    let value = T::deserialize(serde_stacker::Deserializer::new(&mut deserializer))?;
    deserializer.end()?;
    Ok(value)
}

/// `value` as compact JSON text (what `value.to_string()` gives), at any nesting depth.
pub fn to_string(value: &Value) -> String {
    let mut out = Vec::new();
    Deep(value)
        .serialize(&mut serde_json::Serializer::new(&mut out))
        .expect("a Value always serializes to a Vec");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Serializes `value` at any nesting depth, for `#[serde(serialize_with = "...")]` on a
/// [`Value`] field of a type that is serialized elsewhere (an HTTP body, a table).
pub fn serialize<S: Serializer>(value: &Value, serializer: S) -> Result<S::Ok, S::Error> {
    Deep(value).serialize(serializer)
}

/// A [`Value`] that serializes each nesting level on a stack with room for it. (serde_stacker's
/// `Serializer` adapter grows the stack for sequences only, not for the maps a `Value` object
/// serializes as.)
struct Deep<'a>(&'a Value);

impl Serialize for Deep<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        stacker::maybe_grow(RED_ZONE, SEGMENT, || match self.0 {
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Deep(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    out.serialize_entry(key, &Deep(value))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        })
    }
}

/// Drops `value` without recursion, however deep it nests.
pub fn drop_value(value: Value) {
    if !matches!(value, Value::Array(_) | Value::Object(_)) {
        return;
    }
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items),
            Value::Object(map) => pending.extend(map.into_values()),
            _ => {}
        }
    }
}

/// How many arrays and objects nest in `value` at its deepest: 0 for a scalar, 1 for `{}` or
/// `[1, 2]`, 2 for `{"a": [1]}`. Computed without recursion.
pub fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, above)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(above + 1);
        pending.extend(children.map(|child| (child, above + 1)));
    }
    deepest
}

/// Runs `f` (which recurses once or a few times per nesting level of a value `depth` deep, as
/// a JSON Schema validator does) on a stack with room for it: the current one when the value
/// is shallow or enough is left, a fresh one otherwise.
pub fn with_stack_for<R>(depth: usize, f: impl FnOnce() -> R) -> R {
    if depth <= SHALLOW_DEPTH {
        return f();
    }
    let needed = STACK_BASE.saturating_add(depth.saturating_mul(STACK_PER_LEVEL));
    stacker::maybe_grow(needed, needed, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Wrapped<'a> {
        #[serde(serialize_with = "serialize")]
        payload: &'a Value,
    }

    fn nested_objects(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    /// Runs `f` on a thread with a 1 MiB stack: small enough that recursion over a few
    /// thousand levels would overflow it.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn shallow_text_parses_as_serde_json_does() {
        let value: Value = from_str(r#"{"b": [1, 2.5, null], "a": "x"}"#).unwrap();
        assert_eq!(value, json!({"a": "x", "b": [1, 2.5, null]}));
        assert_eq!(depth(&value), 2);
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!([])), 1);
    }

    #[test]
    fn deep_text_round_trips_without_overflowing_a_small_stack() {
        on_small_stack(|| {
            let text = nested_objects(20_000);
            assert!(serde_json::from_str::<Value>(&text).is_err());
            let value: Value = from_str(&text).unwrap();
            assert_eq!(depth(&value), 20_000);
            assert_eq!(to_string(&value), text);
            // Indented, a deep value is quadratic text: 3,000 levels still overflow 1 MiB.
            let arrays = format!("{}{}", "[".repeat(3_000), "]".repeat(3_000));
            let arrays: Value = from_str(&arrays).unwrap();
            assert_eq!(depth(&arrays), 3_000);
            let pretty = serde_json::to_string_pretty(&Wrapped { payload: &arrays }).unwrap();
            assert!(
                pretty.starts_with("{\n  \"payload\": [\n    ["),
                "{}",
                &pretty[..40]
            );
            drop_value(arrays);
            drop_value(value);
        });
    }

    #[test]
    fn errors_in_deep_text_are_the_true_ones() {
        on_small_stack(|| {
            let text = nested_objects(5_000).replacen("1", "tru", 1);
            let error = from_str::<Value>(&text).unwrap_err().to_string();
            assert!(error.starts_with("expected ident"), "{error}");
            let error = from_str::<Value>(&format!("{} x", nested_objects(300)))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("trailing characters"), "{error}");
            let value: Value = from_slice(nested_objects(300).as_bytes()).unwrap();
            assert_eq!(depth(&value), 300);
        });
    }

    #[test]
    fn recursion_gets_a_stack_sized_for_the_depth() {
        fn count(value: &Value) -> usize {
            match value {
                Value::Object(map) => 1 + map.values().map(count).sum::<usize>(),
                _ => 0,
            }
        }
        on_small_stack(|| {
            let value: Value = from_str(&nested_objects(10_000)).unwrap();
            assert_eq!(with_stack_for(depth(&value), || count(&value)), 10_000);
            drop_value(value);
        });
    }
}
