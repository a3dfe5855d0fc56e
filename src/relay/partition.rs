//! Key partitions of a group (`[[groups]] partitions = N`): which partition a message belongs
//! to, and the name of each partition's row in `outbox.consumer_groups`.
//!
//! A message's partition is the first 4 bytes of SHA-256 of its key (of its id's text when it
//! has none), read as a big-endian unsigned number, modulo N — the same as the SQL function
//! `outbox.partition_of(key, id, N)`. All messages of a key are in one partition, so one relay
//! at a time handles them, in order.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::OutboxRow;

/// The partition (`0..partitions`) of a message with `key` (`None`: keyless) and `id`.
///
/// ```
/// # use outbox_relay::relay::partition_of;
/// assert_eq!(partition_of(Some("customer-42"), uuid::Uuid::nil(), 1), 0);
/// assert!(partition_of(Some("customer-42"), uuid::Uuid::nil(), 8) < 8);
/// ```
pub fn partition_of(key: Option<&str>, id: Uuid, partitions: u32) -> u32 {
    let digest = match key {
        Some(key) => Sha256::digest(key.as_bytes()),
        None => Sha256::digest(
            id.hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        ),
    };
    let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    first % partitions.max(1)
}

/// One partition of a group: its index and how many the group has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Which one, `0..count`.
    pub index: u32,
    /// How many the group has (at least 2: a group with one is not partitioned).
    pub count: u32,
}

impl Partition {
    /// Whether `row` belongs to this partition.
    pub fn owns(&self, row: &OutboxRow) -> bool {
        partition_of(row.key.as_deref(), row.id, self.count) == self.index
    }

    /// The name of this partition's row in `outbox.consumer_groups`: `<group>/<index>`.
    pub fn row_name(&self, group: &str) -> String {
        format!("{group}/{}", self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_is_sha256_of_the_key_or_the_id_text_modulo_n() {
        // sha256("abc") = ba7816bf…: 0xba7816bf = 3128432319.
        assert_eq!(
            partition_of(Some("abc"), Uuid::nil(), u32::MAX),
            3_128_432_319
        );
        assert_eq!(partition_of(Some("abc"), Uuid::nil(), 8), 3_128_432_319 % 8);
        let id = Uuid::parse_str("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            partition_of(None, id, 1000),
            partition_of(
                Some("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
                Uuid::nil(),
                1000
            )
        );
        assert_eq!(partition_of(Some("anything"), id, 1), 0);
    }

    #[test]
    fn keys_spread_over_the_partitions() {
        let mut counts = [0u32; 8];
        for k in 0..8000 {
            counts[partition_of(Some(&format!("key-{k}")), Uuid::nil(), 8) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
