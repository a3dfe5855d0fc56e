//! An entry's identity for deduplication, as the watermark stores it.

use crate::position::Position;

use super::Entry;

/// An entry's identity for deduplication: the group's replay generation, the message's
/// position, and the output's ordinal among that message's entries in the stream. Ordered
/// like the tuple; stored as a fixed-width string that sorts the same way (see its `Display`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DedupeMark {
    /// The group's replay generation when the entry was appended (0 before any replay).
    pub replay_generation: i64,
    /// The message's position.
    pub position: Position,
    /// The entry's ordinal among that message's entries in the stream, from 0.
    pub ordinal: u32,
}

impl DedupeMark {
    /// The mark of `entry`, appended under `replay_generation`.
    pub fn of(replay_generation: i64, entry: &Entry) -> DedupeMark {
        DedupeMark {
            replay_generation,
            position: entry.position,
            ordinal: entry.ordinal,
        }
    }

    /// The mark its `Display` wrote, or `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<DedupeMark> {
        let (replay_generation, rest) = match text.strip_prefix('r') {
            Some(rest) => {
                let (generation, rest) = rest.split_once(':')?;
                (fixed_width(generation, 19)?, rest)
            }
            None => (0, text),
        };
        let mut parts = rest.split(':');
        let tx_id = fixed_width(parts.next()?, 20)?;
        let seq = fixed_width(parts.next()?, 19)?;
        let ordinal = match parts.next() {
            Some(ordinal) => fixed_width(ordinal, 10)?,
            None => 0,
        };
        if parts.next().is_some() || (replay_generation == 0 && text.starts_with('r')) {
            return None;
        }
        Some(DedupeMark {
            replay_generation,
            position: Position::new(tx_id, seq),
            ordinal,
        })
    }
}

/// `digits` as a number when it is exactly `width` decimal digits.
fn fixed_width<T: std::str::FromStr>(digits: &str, width: usize) -> Option<T> {
    (digits.len() == width && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// `[r<generation, 19 digits>:]<tx_id, 20 digits>:<seq, 19 digits>[:<ordinal, 10 digits>]`:
/// the generation only above 0 and the ordinal only above 0, so strings written before either
/// existed read the same. `r` sorts after every digit, so as strings too every mark of a newer
/// generation is above every mark of an older one.
impl std::fmt::Display for DedupeMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.replay_generation != 0 {
            write!(f, "r{:019}:", self.replay_generation)?;
        }
        write!(f, "{:020}:{:019}", self.position.tx_id, self.position.seq)?;
        if self.ordinal != 0 {
            write!(f, ":{:010}", self.ordinal)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(replay_generation: i64, tx_id: u64, seq: i64, ordinal: u32) -> DedupeMark {
        DedupeMark {
            replay_generation,
            position: Position::new(tx_id, seq),
            ordinal,
        }
    }

    #[test]
    fn marks_order_like_their_strings_and_read_back() {
        let marks = [
            mark(0, 9, 900, 0),
            mark(0, 10, 1, 0),
            mark(0, 10, 1, 1),
            mark(0, 10, 1, u32::MAX),
            mark(0, 10, 2, 0),
            mark(0, u64::MAX, i64::MAX, 0),
            mark(1, 0, 0, 0),
            mark(1, 9, 900, 3),
            mark(9, u64::MAX, i64::MAX, u32::MAX),
            mark(10, 0, 0, 0),
            mark(i64::MAX, 1, 1, 0),
        ];
        for (i, a) in marks.iter().enumerate() {
            assert_eq!(DedupeMark::parse(&a.to_string()), Some(*a), "{a}");
            for b in &marks[i + 1..] {
                assert!(a < b);
                assert!(a.to_string() < b.to_string(), "{a} < {b}");
            }
        }
        assert_eq!(
            mark(0, 752, 1, 0).to_string(),
            "00000000000000000752:0000000000000000001"
        );
        assert_eq!(
            mark(3, 752, 1, 2).to_string(),
            "r0000000000000000003:00000000000000000752:0000000000000000001:0000000002"
        );
        for bad in [
            "",
            "752:1",
            "00000000000000000752:000000000000000000x",
            "r0000000000000000000:00000000000000000752:0000000000000000001",
            "00000000000000000752:0000000000000000001:0000000002:0000000003",
            "00000000000000000752:0000000000000000001:2",
        ] {
            assert_eq!(DedupeMark::parse(bad), None, "{bad}");
        }
    }
}
