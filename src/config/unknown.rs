//! Unknown keys: every key of the merged layers that no section of [`RawConfig`] knows, all
//! of them in one report, each with its key path, the layer it came from and the nearest
//! known key.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key, so an operator fixing a file
//! met one mistake per run. Instead the raw types accept unknown keys and
//! [`serde_ignored`] reports every key the derived `Deserialize` impls skipped. The known keys
//! a suggestion is drawn from are read from those same impls ([`fields_of`]), so the list of
//! keys is written once, in `raw.rs`.

use figment::Figment;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::errors::from_layer;
use super::suggest::{closest, one_of};
use super::{
    ConfigErrors, RawConfig, RawGroup, RawHttp, RawPostgres, RawPublish, RawRedis, RawRegistry,
    RawRelay, RawRoute,
};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A [`RawConfig`] and the paths of the keys its deserialization skipped.
struct Collected {
    raw: RawConfig,
    unknown: Vec<Vec<Segment>>,
}

impl<'de> Deserialize<'de> for Collected {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut unknown = Vec::new();
        let raw = serde_ignored::deserialize(deserializer, |path| {
            let mut segments = Vec::new();
            push_segments(&path, &mut segments);
            unknown.push(segments);
        })?;
        Ok(Collected { raw, unknown })
    }
}

fn push_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            push_segments(parent, out);
            out.push(Segment::Index(*index));
        }
        Path::Map { parent, key } => {
            push_segments(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => push_segments(parent, out),
    }
}

/// Extracts the merged layers of `figment`: the raw configuration, and one problem per
/// unknown key (empty when there is none). `Err` when the layers cannot be read or a value
/// has the wrong type.
pub(super) fn extract(figment: &Figment) -> Result<(RawConfig, ConfigErrors), ConfigErrors> {
    let collected: Collected = figment.extract().map_err(ConfigErrors::from_figment)?;
    let mut errors = ConfigErrors::default();
    for path in &collected.unknown {
        let (key, message) = describe(path, source_of(figment, path));
        errors.push(&key, message);
    }
    Ok((collected.raw, errors))
}

/// `groups[0].routes[1].handlr`, the way every other problem names its key.
fn key_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) if text.is_empty() => text.push_str(key),
            Segment::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Segment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// The layer a key came from (` (from /etc/outbox-relay.toml)`), found through the deepest
/// table of its path figment can look up (it does not index into arrays).
fn source_of(figment: &Figment, path: &[Segment]) -> String {
    let tables: Vec<&str> = path
        .iter()
        .map_while(|segment| match segment {
            Segment::Key(key) => Some(key.as_str()),
            Segment::Index(_) => None,
        })
        .collect();
    figment
        .find_metadata(&tables.join("."))
        .map(from_layer)
        .unwrap_or_default()
}

/// The key path and the problem of one unknown key.
fn describe(path: &[Segment], source: String) -> (String, String) {
    let key = key_path(path);
    let (Some(Segment::Key(name)), parent) = (path.last(), &path[..path.len().saturating_sub(1)])
    else {
        return (key, format!("unexpected value{source}"));
    };
    let known = known_keys(parent);
    if let Some(near) = closest(name, known) {
        return (key, format!("unknown key{source}; did you mean `{near}`?"));
    }
    // A section's key written at the top level (`OUTBOX_BATCH_SIZE` for
    // `OUTBOX_RELAY__BATCH_SIZE`): point to the section.
    if parent.is_empty() {
        for (section, fields) in sections() {
            if let Some(near) = closest(name, fields) {
                return (
                    key,
                    format!(
                        "unknown key{source}; did you mean `{section}.{near}` (`[{section}] {near}` in the file, OUTBOX_{}__{} in the environment)?",
                        section.to_uppercase(),
                        near.to_uppercase()
                    ),
                );
            }
        }
    }
    if known.is_empty() {
        (key, format!("unknown key{source}"))
    } else {
        (
            key,
            format!("unknown key{source}; expected {}", one_of(known)),
        )
    }
}

/// The sections (tables) of the configuration and their keys.
fn sections() -> [(&'static str, &'static [&'static str]); 6] {
    [
        ("postgres", fields_of::<RawPostgres>()),
        ("publish", fields_of::<RawPublish>()),
        ("redis", fields_of::<RawRedis>()),
        ("relay", fields_of::<RawRelay>()),
        ("registry", fields_of::<RawRegistry>()),
        ("http", fields_of::<RawHttp>()),
    ]
}

/// The keys known in the table at `parent`.
fn known_keys(parent: &[Segment]) -> &'static [&'static str] {
    use Segment::{Index, Key};
    match parent {
        [] => fields_of::<RawConfig>(),
        [Key(section)] => sections()
            .into_iter()
            .find(|(name, _)| name == section)
            .map(|(_, fields)| fields)
            .unwrap_or_default(),
        [Key(groups), Index(_)] if groups == "groups" => fields_of::<RawGroup>(),
        [Key(groups), Index(_), Key(routes), Index(_)]
            if groups == "groups" && routes == "routes" =>
        {
            fields_of::<RawRoute>()
        }
        _ => &[],
    }
}

/// The field names a derived `Deserialize` of a struct passes to `deserialize_struct`.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields
}

/// A deserializer that only records the field list of the struct asked for, then stops.
struct FieldsProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("fields recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};

    use super::*;

    fn unknown(toml: &str) -> Vec<String> {
        let (_, errors) = extract(&Figment::from(Toml::string(toml))).unwrap();
        errors
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect()
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_path_and_the_nearest_known_key() {
        let found = unknown(
            "databse_url = \"postgres://h/db\"\n\
             [publish]\nmax_payload = 1\n\
             [relay]\nbatch_siz = 5\nzzz = 1\n\
             [[groups]]\nname = \"g\"\nordring = \"key\"\n\
             [[groups.routes]]\ntopics = [\"*\"]\nhandler = \"forward\"\nstraem = \"s\"\n\
             headers = { anything = \"goes\" }\n",
        );
        assert_eq!(
            found,
            [
                "databse_url: unknown key; did you mean `database_url`?",
                "groups[0].ordring: unknown key; did you mean `ordering`?",
                "groups[0].routes[0].straem: unknown key; did you mean `stream`?",
                "publish.max_payload: unknown key; did you mean `max_payload_bytes`?",
                "relay.batch_siz: unknown key; did you mean `batch_size`?",
                "relay.zzz: unknown key; expected `batch_size`, `wakeup`, `idle_poll_ms`, \
                 `lease_ttl_ms`, `max_backoff_ms`, `stall_report_interval_ms` or `shutdown_grace_ms`",
            ]
        );
    }

    #[test]
    fn a_section_key_at_the_top_level_points_to_its_section() {
        assert_eq!(
            unknown("batch_size = 5\n"),
            [
                "batch_size: unknown key; did you mean `relay.batch_size` (`[relay] batch_size` in the file, OUTBOX_RELAY__BATCH_SIZE in the environment)?"
            ]
        );
    }

    #[test]
    fn the_known_keys_come_from_the_raw_types() {
        assert!(fields_of::<RawConfig>().contains(&"database_url"));
        assert!(fields_of::<RawConfig>().contains(&"groups"));
        assert!(fields_of::<RawRoute>().contains(&"backoff_multiplier"));
        assert_eq!(fields_of::<RawHttp>(), ["listen"]);
    }
}
