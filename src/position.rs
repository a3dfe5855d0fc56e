//! A message's position in the outbox: `(tx_id, seq)`, printed as `"<tx_id>:<seq>"`.
//!
//! `tx_id` is the xid8 of the writing transaction and `seq` the insertion order. Positions
//! order lexicographically, which is the order relays deliver in (DESIGN §3). `Position::ZERO`
//! sorts before every message and is where a new consumer group starts.
//!
//! A cursor may also sit at the end of a transaction: after every message it wrote (where
//! `run --from-now` starts a group and `groups reset --to-end` puts one). Its `seq` is
//! `i64::MAX`, which no message has; it prints as `"<tx_id>:end"` and parses back from that.

use std::fmt;
use std::str::FromStr;

/// Where a message sits in the outbox. Ordered by `tx_id`, then `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The writing transaction's id (Postgres `xid8`, epoch-extended, never wraps).
    pub tx_id: u64,
    /// Insertion order within the outbox (`outbox.messages.seq`).
    pub seq: i64,
}

impl Position {
    /// Before every message.
    pub const ZERO: Position = Position { tx_id: 0, seq: 0 };

    /// The position of the message with this transaction id and `seq`.
    pub fn new(tx_id: u64, seq: i64) -> Self {
        Position { tx_id, seq }
    }

    /// After every message of transaction `tx_id` (and before every later transaction's).
    pub fn end_of(tx_id: u64) -> Self {
        Position {
            tx_id,
            seq: END_SEQ,
        }
    }

    /// True for [`Position::end_of`] a transaction.
    pub fn is_end_of_transaction(self) -> bool {
        self.seq == END_SEQ
    }
}

/// The `seq` of a position at the end of a transaction: above every message's.
const END_SEQ: i64 = i64::MAX;

/// `"<tx_id>:<seq>"`, or `"<tx_id>:end"` at the end of a transaction.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_end_of_transaction() {
            write!(f, "{}:end", self.tx_id)
        } else {
            write!(f, "{}:{}", self.tx_id, self.seq)
        }
    }
}

/// Serialized as its display form, `"<tx_id>:<seq>"` (tx ids can exceed JSON's safe integers).
impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A string that is not `"<tx_id>:<seq>"` with two non-negative integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a position; expected \"<tx_id>:<seq>\" (e.g. \"7421:15\") or \"<tx_id>:end\""
)]
pub struct ParsePositionError(String);

impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParsePositionError(s.to_owned());
        let (tx_id, seq) = s.split_once(':').ok_or_else(invalid)?;
        let tx_id = tx_id.parse::<u64>().map_err(|_| invalid())?;
        if seq == "end" {
            return Ok(Position::end_of(tx_id));
        }
        let seq = seq.parse::<i64>().map_err(|_| invalid())?;
        if seq < 0 {
            return Err(invalid());
        }
        Ok(Position { tx_id, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_transaction_then_sequence() {
        let late_commit_low_seq = Position::new(10, 1);
        let early_commit_high_seq = Position::new(9, 2);
        assert!(early_commit_high_seq < late_commit_low_seq);
        assert!(Position::new(10, 1) < Position::new(10, 2));
        assert!(Position::ZERO < Position::new(1, 0));
    }

    #[test]
    fn displays_and_parses_as_tx_colon_seq() {
        let p = Position::new(7421, 15);
        assert_eq!(p.to_string(), "7421:15");
        assert_eq!("7421:15".parse::<Position>(), Ok(p));
    }

    #[test]
    fn the_end_of_a_transaction_reads_as_end_and_parses_back() {
        let end = Position::end_of(72_802);
        assert_eq!(end, Position::new(72_802, i64::MAX));
        assert_eq!(end.to_string(), "72802:end");
        assert_eq!("72802:end".parse::<Position>(), Ok(end));
        assert!(Position::new(72_802, 1) < end && end < Position::new(72_803, 1));
    }

    #[test]
    fn rejects_malformed_positions() {
        for bad in [
            "", "7421", "7421:", ":15", "a:1", "1:-1", "1:2:3", "-1:2", "end:1", "1:END",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }
}
