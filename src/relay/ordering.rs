//! Ordering under failure (DESIGN §4): which later messages a failing message holds back.
//!
//! ```text
//!   key     a retrying message parks its key: later messages with that key become `blocked`
//!           rows, released one at a time in position order once it is done or dead; other
//!           keys (and unkeyed messages) flow on
//!   strict  the group stops at a retrying message: nothing after it is handled until it is
//!           done or dead
//!   none    every failure retries on its own; nothing waits
//! ```
//! A dead message never holds anything back. The cursor moves past parked messages because
//! their state is in `outbox.deliveries`; the in-memory [`Parked`] set mirrors those rows while
//! the relay holds the lease and is rebuilt from them on takeover.

use std::collections::HashSet;

use crate::store::{OutboxRow, ParkedKey};

/// A group's `ordering`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderingMode {
    /// `key` (default): a retrying message holds back the later messages of its key only.
    #[default]
    Key,
    /// `strict`: a retrying message holds back the whole group.
    Strict,
    /// `none`: nothing waits for a retrying message.
    None,
}

impl OrderingMode {
    /// The mode called `text` in `[[groups]] ordering`; `None` for an unknown name.
    pub fn parse(text: &str) -> Option<OrderingMode> {
        match text {
            "key" => Some(OrderingMode::Key),
            "strict" => Some(OrderingMode::Strict),
            "none" => Some(OrderingMode::None),
            _ => None,
        }
    }

    /// The mode's name in `[[groups]] ordering`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderingMode::Key => "key",
            OrderingMode::Strict => "strict",
            OrderingMode::None => "none",
        }
    }

    /// The chain a message belongs to: messages of one chain are handled one after another
    /// and a retrying one holds back the rest; different chains are independent.
    pub fn chain(self, index: usize, row: &OutboxRow) -> Chain {
        match (self, &row.key) {
            (OrderingMode::Strict, _) => Chain::Group,
            (OrderingMode::Key, Some(key)) => Chain::Key(key.clone()),
            _ => Chain::Own(index),
        }
    }
}

/// See [`OrderingMode::chain`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Chain {
    /// `strict`: the whole group is one chain.
    Group,
    /// `key`: the messages with this key.
    Key(String),
    /// Unordered: the message (by its index in the batch) alone.
    Own(usize),
}

/// What is parked in a group right now: the keys with a retrying or blocked message, and for
/// `strict`, whether anything is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parked {
    keys: HashSet<String>,
    any: bool,
}

impl Parked {
    /// The set as stored (see `store::deliveries_parked`).
    pub fn from_rows(rows: &[ParkedKey]) -> Parked {
        Parked {
            keys: rows.iter().filter_map(|row| row.key.clone()).collect(),
            any: !rows.is_empty(),
        }
    }

    /// True when a message of `chain` must wait.
    pub fn holds(&self, chain: &Chain) -> bool {
        match chain {
            Chain::Group => self.any,
            Chain::Key(key) => self.keys.contains(key),
            Chain::Own(_) => false,
        }
    }

    /// `chain` now has a retrying or blocked message.
    pub fn park(&mut self, chain: &Chain) {
        self.any = true;
        if let Chain::Key(key) = chain {
            self.keys.insert(key.clone());
        }
    }

    /// True when a `strict` group must not read past its cursor.
    pub fn halts_group(&self) -> bool {
        self.any
    }

    /// True when nothing is parked (no message has to look up its chain).
    pub fn is_empty(&self) -> bool {
        !self.any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Position;

    fn row(key: Option<&str>) -> OutboxRow {
        OutboxRow {
            position: Position::new(1, 1),
            id: uuid::Uuid::nil(),
            topic: "t".into(),
            key: key.map(Into::into),
            schema_version: None,
            payload: "{}".into(),
            headers: "{}".into(),
            created_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        }
    }

    #[test]
    fn chains_follow_the_mode() {
        let keyed = row(Some("a"));
        let unkeyed = row(None);
        assert_eq!(OrderingMode::Key.chain(3, &keyed), Chain::Key("a".into()));
        assert_eq!(OrderingMode::Key.chain(3, &unkeyed), Chain::Own(3));
        assert_eq!(OrderingMode::Strict.chain(3, &unkeyed), Chain::Group);
        assert_eq!(OrderingMode::None.chain(3, &keyed), Chain::Own(3));
    }

    #[test]
    fn a_parked_key_holds_only_itself() {
        let mut parked = Parked::from_rows(&[ParkedKey {
            key: Some("a".into()),
            due_in: None,
        }]);
        assert!(parked.holds(&Chain::Key("a".into())));
        assert!(!parked.holds(&Chain::Key("b".into())));
        assert!(!parked.holds(&Chain::Own(0)));
        assert!(parked.halts_group());
        parked.park(&Chain::Key("b".into()));
        assert!(parked.holds(&Chain::Key("b".into())));
        assert!(!Parked::default().halts_group());
    }
}
