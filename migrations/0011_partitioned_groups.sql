-- Partitioned consumer groups (Step 10): `[[groups]] partitions = N` splits a group by a
-- stable hash of each message's key (of its id when it has none) into N partitions, each with
-- its own row here — cursor, lease (owner, epoch, expiry), replay generation — named
-- `<group>/<partition>`, so every relay statement fenced by a row's lease works per partition
-- unchanged, and so do the delivery rows, the stream marks and the Redis watermarks (which are
-- per stream × row name: two relays appending to one stream never fence each other). An
-- unpartitioned group keeps its single row named after the group, as before.
ALTER TABLE outbox.consumer_groups
    ADD COLUMN partitions integer NOT NULL DEFAULT 1,
    ADD COLUMN partition  integer     NULL,
    ADD COLUMN retired    boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT consumer_groups_name_valid,
    ADD CONSTRAINT consumer_groups_name_valid CHECK (
        CASE WHEN partition IS NULL
             THEN name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$' AND partitions = 1
             ELSE name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[0-9]{1,4}$'
                  AND name = split_part(name, '/', 1) || '/' || partition
                  AND partitions BETWEEN 2 AND 1024
                  AND partition >= 0 AND partition < partitions
        END);

COMMENT ON COLUMN outbox.consumer_groups.partitions IS
    'How many partitions the group has (1: unpartitioned, this row is the whole group).';
COMMENT ON COLUMN outbox.consumer_groups.partition IS
    'The partition this row is (named <group>/<partition>); NULL for an unpartitioned group.';
COMMENT ON COLUMN outbox.consumer_groups.retired IS
    'Left behind by `groups repartition`: no relay takes it; revived (replay generation + 1) if the name is needed again.';

-- `outbox-relay groups repartition` does not delete the rows a new partition count leaves
-- out: it retires them. A row's name is also the name of its Redis watermarks, which hold
-- the highest lease epoch and entry mark written under it; a row deleted and created again
-- would start below them and be refused (or skip entries) there. A retired row keeps its epoch
-- and replay generation, and is revived with generation + 1 should the name come back.

-- outbox.group_of(row_name): the group a consumer_groups row (or a delivery's group_name)
-- belongs to: `orders/3` → `orders`, `orders` → `orders`.
CREATE FUNCTION outbox.group_of(row_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$ SELECT split_part(row_name, '/', 1) $fn$;

-- outbox.partition_of(key, id, partitions): the partition a message belongs to — the first
-- 4 bytes of SHA-256 of its key (of its id's text when it has none), as a big-endian unsigned
-- number, modulo the partition count. The relay computes the same in Rust.
--   SELECT outbox.partition_of(m.key, m.id, 8) FROM outbox.messages m WHERE ...
CREATE FUNCTION outbox.partition_of(key text, id uuid, partitions integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$
    SELECT (('x' || left(encode(sha256(convert_to(coalesce(key, id::text), 'UTF8')), 'hex'), 8))
              ::bit(32)::bigint % partitions)::integer
$fn$;

-- The relays running a partitioned group. Each member writes its row at start and every
-- lease_ttl/3 (expires_at = now() + lease_ttl), deletes it on a clean stop, and takes the
-- partitions assigned to it: partition p goes to the (p mod M)-th of the M live members in
-- name order. A member that stops heartbeating drops out after expires_at; its partitions go
-- to the others once their leases expire.
CREATE TABLE outbox.group_members (
    group_name text        NOT NULL,
    member     text        NOT NULL,
    joined_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,

    CONSTRAINT group_members_pkey PRIMARY KEY (group_name, member)
);

COMMENT ON TABLE outbox.group_members IS
    'Relays running a partitioned group, heartbeated; live while expires_at is in the future.';

-- outbox.group_status, one row per consumer_groups row as before: group_name is now the group
-- (each partition of a partitioned group is a row of its own, with `partition` set), and
-- `row_name` is the row's own name (`orders/3`).
CREATE OR REPLACE VIEW outbox.group_status AS
WITH snapshot AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
           pg_snapshot_xmax(pg_current_snapshot()) AS xmax
), last_message AS (
    SELECT m.seq
      FROM outbox.messages m
     ORDER BY m.tx_id DESC, m.seq DESC
     LIMIT 1
)
SELECT outbox.group_of(g.name) AS group_name,
       g.cursor_tx_id::text || ':' || g.cursor_seq AS cursor,
       g.cursor_tx_id,
       g.cursor_seq,
       g.paused,
       g.lease_owner,
       g.lease_epoch,
       g.lease_expires_at,
       g.replay_generation,
       CASE WHEN ahead.n <= 10000 THEN ahead.n
            ELSE greatest(ahead.n, (SELECT l.seq FROM last_message l) - g.cursor_seq)
       END AS lag_messages,
       ahead.n > 10000 AS lag_estimated,
       coalesce(extract(epoch FROM clock_timestamp() - oldest.created_at), 0)::float8 AS lag_seconds,
       oldest.created_at AS oldest_undelivered_at,
       held.n AS held_back,
       counts.retrying,
       counts.blocked,
       counts.dead,
       held.n > 0 AS waiting_on_transaction,
       CASE WHEN held.n > 0 THEN hd.pid END AS waiting_on_pid,
       CASE WHEN held.n > 0 THEN hd.state END AS waiting_on_state,
       CASE WHEN held.n > 0 THEN clock_timestamp() - hd.xact_start END AS waiting_on_age,
       CASE WHEN held.n > 0 THEN hd.prepared_gid END AS waiting_on_prepared_gid,
       g.cursor_tx_id >= s.xmax AS cursor_ahead,
       g.created_at,
       g.updated_at,
       g.partition,
       g.partitions,
       g.name AS row_name
  FROM outbox.consumer_groups g
 CROSS JOIN snapshot s
  LEFT JOIN outbox.xmin_holder hd ON true
 CROSS JOIN LATERAL (
        SELECT count(*) AS n
          FROM (SELECT 1
                  FROM outbox.messages m
                 WHERE (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
                 ORDER BY m.tx_id, m.seq
                 LIMIT 10001) AS capped
       ) AS ahead
 CROSS JOIN LATERAL (
        SELECT count(*) AS n
          FROM (SELECT 1
                  FROM outbox.messages m
                 WHERE (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
                   AND (m.tx_id, m.seq) >= (s.xmin, 0::bigint)
                 ORDER BY m.tx_id, m.seq
                 LIMIT 10000) AS capped
       ) AS held
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE d.status = 'retrying') AS retrying,
               count(*) FILTER (WHERE d.status = 'blocked') AS blocked,
               count(*) FILTER (WHERE d.status = 'dead') AS dead
          FROM outbox.deliveries d
         WHERE d.group_name = g.name
       ) AS counts
 CROSS JOIN LATERAL (
        SELECT least(
                 (SELECT m.created_at
                    FROM outbox.messages m
                   WHERE (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
                   ORDER BY m.tx_id, m.seq
                   LIMIT 1),
                 (SELECT min(m.created_at)
                    FROM outbox.deliveries d
                    JOIN outbox.messages m ON m.id = d.message_id
                   WHERE d.group_name = g.name AND d.status IN ('retrying', 'blocked'))
               ) AS created_at
       ) AS oldest
 WHERE NOT g.retired;

COMMENT ON VIEW outbox.group_status IS
    'Per consumer group (per partition of a partitioned group): cursor, lag (messages, seconds), lease, retrying/blocked/dead counts, and the open transaction it waits on.';

-- outbox.stuck and outbox.dead_letters: group_name is the group; `partition` says which of a
-- partitioned group's partitions holds the delivery (NULL when unpartitioned).
CREATE OR REPLACE VIEW outbox.stuck AS
SELECT outbox.group_of(d.group_name) AS group_name,
       d.message_id,
       d.status,
       d.message_tx_id::text || ':' || d.message_seq AS position,
       m.topic,
       m.key,
       m.payload,
       m.headers,
       m.schema_version,
       m.created_at,
       d.attempts,
       d.last_error,
       d.next_attempt_at,
       d.first_failed_at,
       d.updated_at,
       CASE WHEN d.status = 'blocked' AND d.message_key IS NOT NULL THEN (
            SELECT b.message_id
              FROM outbox.deliveries b
             WHERE b.group_name = d.group_name
               AND b.message_key = d.message_key
               AND b.status IN ('retrying', 'blocked')
               AND (b.message_tx_id, b.message_seq) < (d.message_tx_id, d.message_seq)
             ORDER BY b.message_tx_id, b.message_seq
             LIMIT 1)
       END AS blocked_by,
       d.message_tx_id,
       d.message_seq,
       nullif(split_part(d.group_name, '/', 2), '')::integer AS partition
  FROM outbox.deliveries d
  JOIN outbox.messages m ON m.id = d.message_id;

CREATE OR REPLACE VIEW outbox.dead_letters AS
SELECT s.group_name,
       s.message_id,
       s.position,
       s.topic,
       s.key,
       s.payload,
       s.headers,
       s.schema_version,
       s.created_at,
       s.attempts,
       s.last_error,
       s.first_failed_at,
       s.updated_at AS dead_since,
       s.message_tx_id,
       s.message_seq,
       s.partition
  FROM outbox.stuck s
 WHERE s.status = 'dead';

-- The operator functions take a group's name and act on all its partitions; what they return
-- names the group.
CREATE OR REPLACE FUNCTION outbox.retry_message(message_id uuid, group_name text DEFAULT NULL)
RETURNS TABLE (group_name text, previous_status text, retried boolean)
LANGUAGE sql
AS $fn$
    WITH target AS (
        SELECT d.group_name, d.message_id, d.status
          FROM outbox.deliveries d
         WHERE d.message_id = retry_message.message_id
           AND (retry_message.group_name IS NULL
                OR outbox.group_of(d.group_name) = retry_message.group_name)
           FOR UPDATE
    ), changed AS (
        UPDATE outbox.deliveries d
           SET status = 'retrying', next_attempt_at = now(), updated_at = now()
          FROM target t
         WHERE d.group_name = t.group_name AND d.message_id = t.message_id
           AND t.status IN ('retrying', 'dead')
        RETURNING d.group_name
    )
    SELECT outbox.group_of(t.group_name), t.status,
           EXISTS (SELECT 1 FROM changed c WHERE c.group_name = t.group_name)
      FROM target t
     ORDER BY t.group_name
$fn$;

CREATE OR REPLACE FUNCTION outbox.retry_dead(
    group_name text DEFAULT NULL,
    topic text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    message_id uuid DEFAULT NULL
)
RETURNS SETOF outbox.dead_letter_change
LANGUAGE sql
AS $fn$
    UPDATE outbox.deliveries d
       SET status = 'retrying', next_attempt_at = now(), updated_at = now()
      FROM outbox.messages m
     WHERE m.id = d.message_id
       AND d.status = 'dead'
       AND (retry_dead.group_name IS NULL OR outbox.group_of(d.group_name) = retry_dead.group_name)
       AND (retry_dead.topic IS NULL OR m.topic = retry_dead.topic)
       AND (retry_dead.since IS NULL OR d.first_failed_at >= retry_dead.since)
       AND (retry_dead.message_id IS NULL OR d.message_id = retry_dead.message_id)
    RETURNING outbox.group_of(d.group_name), d.message_id, m.topic, m.key, d.message_tx_id,
              d.message_seq, d.attempts, d.last_error, d.first_failed_at, d.updated_at
$fn$;

CREATE OR REPLACE FUNCTION outbox.discard_dead(
    group_name text DEFAULT NULL,
    topic text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    message_id uuid DEFAULT NULL,
    all_matching boolean DEFAULT false
)
RETURNS SETOF outbox.dead_letter_change
LANGUAGE plpgsql
AS $fn$
#variable_conflict use_column
BEGIN
    IF discard_dead.group_name IS NULL AND discard_dead.topic IS NULL
       AND discard_dead.since IS NULL AND discard_dead.message_id IS NULL
       AND NOT discard_dead.all_matching THEN
        RAISE EXCEPTION 'outbox.discard_dead: no filter given'
            USING HINT = 'name a group_name, topic, since or message_id, or pass all_matching => true',
                  ERRCODE = '22023';
    END IF;
    RETURN QUERY
    DELETE FROM outbox.deliveries d
     USING outbox.messages m
     WHERE m.id = d.message_id
       AND d.status = 'dead'
       AND (discard_dead.group_name IS NULL
            OR outbox.group_of(d.group_name) = discard_dead.group_name)
       AND (discard_dead.topic IS NULL OR m.topic = discard_dead.topic)
       AND (discard_dead.since IS NULL OR d.first_failed_at >= discard_dead.since)
       AND (discard_dead.message_id IS NULL OR d.message_id = discard_dead.message_id)
    RETURNING outbox.group_of(d.group_name), d.message_id, m.topic, m.key, d.message_tx_id,
              d.message_seq, d.attempts, d.last_error, d.first_failed_at, d.updated_at;
END
$fn$;
