//! Membership of partitioned groups: each relay process running a group split into N
//! partitions heartbeats a row in `outbox.group_members` (every `lease_ttl / 3`, at most a
//! second apart, alive for `lease_ttl`), reads who else is alive, and runs the partitions assigned to it: partition p
//! goes to the (p mod M)-th of the M live members in name order, which spreads them evenly.
//!
//! ```text
//!   heartbeat ──▶ live members [a, b, c] ──▶ assigned to b: {1, 4, 7} ──watch──▶ partition workers
//! ```
//!
//! The assignment only says which partitions a member may take: the lease still decides who
//! holds one. A worker whose partition is no longer assigned finishes its work in flight,
//! commits it and releases the lease (see `GroupWorker::step`); the member it went to takes it
//! at its next try. Members that disagree for a moment (one heartbeat apart) cost a wait,
//! never an overlap. A member that dies stops heartbeating: after `lease_ttl` the others stop
//! counting it, and take its partitions once their leases expire.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::partition::Partition;
use crate::store;

/// The partitions of a group assigned to this member, as of its last heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Assigned {
    /// Assigned partition indexes, ascending.
    pub partitions: Vec<u32>,
    /// How many members were alive.
    pub members: usize,
}

impl Assigned {
    /// The partitions of `count` that `members` (live, in name order) assign to `me`; none
    /// when `me` is not among them.
    fn of(members: &[String], me: &str, count: u32) -> Assigned {
        let Some(mine) = members.iter().position(|m| m == me) else {
            return Assigned::default();
        };
        let partitions = (0..count)
            .filter(|p| *p as usize % members.len() == mine)
            .collect();
        Assigned {
            partitions,
            members: members.len(),
        }
    }
}

/// A partition worker's place: its partition, and what its member is assigned.
pub(super) struct Seat {
    pub partition: Partition,
    pub assigned: watch::Receiver<Assigned>,
}

impl Seat {
    /// Whether this member may hold the partition now.
    pub fn is_assigned(&self) -> bool {
        self.assigned
            .borrow()
            .partitions
            .contains(&self.partition.index)
    }
}

/// One member's heartbeat for one partitioned group.
pub(super) struct Membership {
    pool: PgPool,
    group: String,
    member: String,
    partitions: u32,
    lease_ttl: Duration,
    assigned: watch::Sender<Assigned>,
}

impl Membership {
    /// The membership of `member` in `group` (split into `partitions`), and the receiver its
    /// partition workers watch (nothing assigned until the first heartbeat).
    pub fn new(
        pool: PgPool,
        group: &str,
        member: &str,
        partitions: u32,
        lease_ttl: Duration,
    ) -> (Membership, watch::Receiver<Assigned>) {
        let (assigned, receiver) = watch::channel(Assigned::default());
        let membership = Membership {
            pool,
            group: group.to_owned(),
            member: member.to_owned(),
            partitions,
            lease_ttl,
            assigned,
        };
        (membership, receiver)
    }

    /// Heartbeats until `shutdown`; the caller then calls [`Membership::leave`] once the
    /// workers released their leases.
    pub async fn run(&self, shutdown: CancellationToken) {
        // At most a second apart whatever the lease: the members running a group learn of one
        // that joins at their next heartbeat, and until then it has nothing to run (with the
        // default 10 s lease, every 3.3 s left a joining relay idle for most of a short drain).
        let interval = heartbeat_interval(self.lease_ttl);
        loop {
            self.beat().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// One heartbeat: writes this member's row, reads the live members, publishes what is
    /// assigned to this member when it changed. A failed heartbeat keeps the last assignment
    /// (the leases say whether it still holds: they cannot be renewed either).
    async fn beat(&self) {
        let members = match store::group_members_heartbeat(
            &self.pool,
            &self.group,
            &self.member,
            self.lease_ttl,
        )
        .await
        {
            Ok(members) => members,
            Err(error) => {
                tracing::warn!(group = %self.group, member = %self.member, error = %crate::telemetry::error_text(&error),
                    "group membership heartbeat failed; retrying");
                return;
            }
        };
        let assigned = Assigned::of(&members, &self.member, self.partitions);
        self.assigned.send_if_modified(|current| {
            if *current == assigned {
                return false;
            }
            tracing::info!(group = %self.group, member = %self.member, members = assigned.members,
                partitions = ?assigned.partitions, of = self.partitions,
                "partitions assigned to this relay");
            *current = assigned;
            true
        });
    }

    /// Leaves the group (a clean stop): the others take its partitions at their next
    /// heartbeat. Best effort: the row expires anyway.
    pub async fn leave(&self) {
        if let Err(error) = store::group_members_leave(&self.pool, &self.group, &self.member).await
        {
            tracing::warn!(group = %self.group, member = %self.member, error = %crate::telemetry::error_text(&error),
                "could not leave the group; its membership expires after lease_ttl_ms");
        }
    }
}

/// How often a member heartbeats: `lease_ttl / 3`, between 10 ms and 1 s.
fn heartbeat_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn partitions_go_round_robin_over_the_live_members_in_name_order() {
        let members = names(&["a", "b", "c"]);
        assert_eq!(Assigned::of(&members, "a", 8).partitions, [0, 3, 6]);
        assert_eq!(Assigned::of(&members, "b", 8).partitions, [1, 4, 7]);
        assert_eq!(Assigned::of(&members, "c", 8).partitions, [2, 5]);
        assert_eq!(Assigned::of(&members, "z", 8), Assigned::default());
        let alone = Assigned::of(&names(&["b"]), "b", 4);
        assert_eq!((alone.partitions, alone.members), (vec![0, 1, 2, 3], 1));
    }

    #[test]
    fn heartbeats_are_a_third_of_the_lease_and_at_most_a_second_apart() {
        let ms = Duration::from_millis;
        assert_eq!(heartbeat_interval(ms(900)), ms(300));
        assert_eq!(heartbeat_interval(ms(10_000)), ms(1_000));
        assert_eq!(heartbeat_interval(ms(15)), ms(10));
    }
}
