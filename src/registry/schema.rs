//! [`CompiledSchema`]: a JSON Schema definition compiled once and shared, and the
//! [`fingerprint`] that identifies a definition's content.
//!
//! Compiled schemas are cached for the whole process by the fingerprint of the definition they
//! were compiled from: the same content compiles to the same validator whichever database or
//! topic it came from, so the cache can never hand out a validator for other content.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::json;

/// Validation errors kept per payload; a payload with more reports the first ones only.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Longest error message kept, in characters: messages quote the offending value, which can be
/// a megabyte of JSON.
const MAX_MESSAGE_CHARS: usize = 200;

/// One reason a payload does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaError {
    /// JSON pointer into the payload (`/lines/0/qty`); empty for the payload itself.
    pub path: String,
    /// What is wrong there, e.g. `"x" is not of type "integer"`.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(root): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// `errors` on one line, separated by `; `.
pub(crate) fn joined(errors: &[SchemaError]) -> String {
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// A definition compiled into a validator.
pub struct CompiledSchema {
    validator: jsonschema::Validator,
}

impl fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledSchema").finish_non_exhaustive()
    }
}

static COMPILED: LazyLock<RwLock<HashMap<String, Arc<CompiledSchema>>>> =
    LazyLock::new(Default::default);

impl CompiledSchema {
    /// Compiles `definition` (checked against its draft's meta-schema), or returns the
    /// validator already compiled for the same content. Remote `$ref`s are not fetched: they
    /// make the definition invalid.
    pub fn compile(definition: &Value) -> Result<Arc<CompiledSchema>, String> {
        let key = fingerprint(definition);
        if let Some(compiled) = COMPILED.read().expect("schema cache").get(&key) {
            return Ok(Arc::clone(compiled));
        }
        let validator = jsonschema::validator_for(definition).map_err(|e| e.to_string())?;
        let compiled = Arc::new(CompiledSchema { validator });
        COMPILED
            .write()
            .expect("schema cache")
            .insert(key, Arc::clone(&compiled));
        Ok(compiled)
    }

    /// Why `instance` does not match, at most [`MAX_REPORTED_ERRORS`] reasons; empty when it
    /// matches. Any nesting depth: a deep instance is validated on a stack sized for it.
    pub fn errors(&self, instance: &Value) -> Vec<SchemaError> {
        json::with_stack_for(json::depth(instance), || self.errors_here(instance))
    }

    /// Like [`errors`](Self::errors), for JSON text (parsed once) of any nesting depth.
    pub fn errors_in_text(&self, text: &str) -> Vec<SchemaError> {
        // The common case first: serde_json's own parse, which takes 128 levels of nesting,
        // so the validator's recursion fits on the current stack.
        if let Ok(instance) = serde_json::from_str::<Value>(text) {
            return self.errors_here(&instance);
        }
        match json::from_str::<Value>(text) {
            Ok(instance) => {
                let errors = self.errors(&instance);
                json::drop_value(instance);
                errors
            }
            Err(e) => vec![SchemaError {
                path: String::new(),
                message: format!("not JSON: {e}"),
            }],
        }
    }

    /// [`errors`](Self::errors) on the current stack.
    fn errors_here(&self, instance: &Value) -> Vec<SchemaError> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(MAX_REPORTED_ERRORS)
            .map(|error| SchemaError {
                path: error.instance_path().as_str().to_owned(),
                message: shortened(error.to_string()),
            })
            .collect()
    }
}

fn shortened(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message,
    }
}

/// SHA-256, in hex, of `definition`'s canonical JSON text: object keys sorted, no whitespace.
/// Two definitions that differ only in key order or spacing have the same fingerprint.
pub fn fingerprint(definition: &Value) -> String {
    let mut text = String::new();
    write_canonical(definition, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Writes `value` with object keys sorted explicitly, so the text does not depend on whether
/// some crate in the build turned on serde_json's `preserve_order`.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fingerprints_ignore_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"b": 2})));
        assert_eq!(fingerprint(&a).len(), 64);
        let mut text = String::new();
        write_canonical(&a, &mut text);
        assert_eq!(text, r#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
    }

    #[test]
    fn serde_json_here_sorts_object_keys() {
        // Not relied on (write_canonical sorts itself), but worth knowing if it changes: some
        // crate then enabled serde_json's preserve_order for the whole build.
        let value: Value = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(value.to_string(), r#"{"a":2,"b":1}"#);
    }

    #[test]
    fn errors_name_the_json_pointer_of_each_failure() {
        let schema = CompiledSchema::compile(&json!({
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}, "lines": {"type": "array",
                "items": {"type": "object", "properties": {"qty": {"type": "integer"}}}}}
        }))
        .unwrap();
        assert_eq!(schema.errors(&json!({"id": 1})), []);
        let errors = schema.errors(&json!({"lines": [{"qty": "two"}]}));
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&""), "{errors:?}");
        assert!(paths.contains(&"/lines/0/qty"), "{errors:?}");
        assert!(
            errors.iter().any(|e| e.message.contains("\"id\"")),
            "{errors:?}"
        );
        assert_eq!(schema.errors_in_text(r#"{"id": 2}"#), []);
    }

    #[test]
    fn invalid_definitions_do_not_compile() {
        assert!(CompiledSchema::compile(&json!({"type": "strin"})).is_err());
        assert!(CompiledSchema::compile(&json!({"properties": {"a": {"minimum": "x"}}})).is_err());
        assert!(CompiledSchema::compile(&json!({"$ref": "https://example.com/s.json"})).is_err());
    }

    #[test]
    fn long_messages_are_cut() {
        let schema = CompiledSchema::compile(&json!({"type": "array"})).unwrap();
        let errors = schema.errors(&json!({"x": "y".repeat(10_000)}));
        assert!(errors[0].message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }
}
