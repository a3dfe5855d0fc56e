-- roles_grant_relay: what `outbox-relay run` needs, and nothing more.
-- Run by `outbox-relay grant relay ROLE` (which puts the quoted role name in place of the
-- psql variable below) or by a DBA with `psql -v role=outbox_relay -f roles_grant_relay.sql`.
-- Idempotent; the role itself is created by the DBA.
--
-- outbox.messages: SELECT only (the relay tails it; it never writes or deletes a message).
-- outbox.consumer_groups: INSERT (a group's row on its first run), UPDATE (cursor, lease),
--   no DELETE (removing a group is an operator's act).
-- outbox.deliveries: the retry state; a settled delivery's row is deleted.
-- outbox.stream_marks: how far each group appended to each stream (moved with the cursor).
-- outbox.group_members: a partitioned group's relays heartbeat and leave here.
-- outbox.schemas: SELECT, to decode every row through the version it names.
-- outbox._sqlx_migrations: SELECT, so `run` can refuse a schema `migrate` has not brought up
--   to date (and `config check --connect` report it).
-- The operator views (outbox.group_status, outbox.stuck, outbox.dead_letters,
--   outbox.xmin_holder): SELECT, for the relay's lag gauges, its stall report, and for
--   `status`, `stuck` and `dead list` run as this role. The repair functions (outbox.retry_message, retry_dead, discard_dead) run with the caller's rights and
--   touch only outbox.deliveries, so `retry` and `dead retry|discard` work as this role too.
-- Nothing here creates or drops objects or deletes messages: `migrate`, `notify on|off`,
-- `schema register` and `prune` run as the owner of the outbox schema (the role that ran
-- `migrate`).
-- The stall report reads pg_stat_activity; to see other roles' sessions there (pid, state,
-- age of the transaction holding xmin back), a DBA may add: GRANT pg_read_all_stats TO <role>.
GRANT USAGE ON SCHEMA outbox TO :"role";
GRANT SELECT ON outbox.messages TO :"role";
GRANT SELECT, INSERT, UPDATE ON outbox.consumer_groups TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox.deliveries TO :"role";
GRANT SELECT, INSERT, UPDATE ON outbox.stream_marks TO :"role";
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox.group_members TO :"role";
GRANT SELECT ON outbox.schemas TO :"role";
GRANT SELECT ON outbox._sqlx_migrations TO :"role";
GRANT SELECT ON outbox.group_status, outbox.stuck, outbox.dead_letters, outbox.xmin_holder TO :"role";
