-- Operators at 3 a.m.: three views that answer "what is stuck and why", three functions that
-- fix it from psql with the same effect as the CLI (which calls them), and the replay
-- generation that lets a deliberate replay through the relay's duplicate filter.
--
-- Cost: every view reads outbox.messages through its primary key only (a range from a cursor,
-- capped, or a lookup by id), never a scan of the whole outbox, so they stay cheap on tables of
-- tens of millions of rows. EXPLAIN plans are checked in tests/it/inspect.rs.

-- A replay (or reset) bumps the group's replay generation. The relay reads it with its lease
-- and prefixes it to the positions its Redis watermark compares (and to its late-entry
-- tokens), so entries a replay sends again are appended, not dropped as duplicates, while a
-- crash inside the replay still adds nothing twice.
ALTER TABLE outbox.consumer_groups
    ADD COLUMN replay_generation bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT consumer_groups_replay_generation_nonnegative CHECK (replay_generation >= 0);

COMMENT ON COLUMN outbox.consumer_groups.replay_generation IS
    'Bumped by every replay/reset; makes the Redis duplicate filter accept re-sent entries.';

-- outbox.xmin_holder: the session (or prepared transaction) whose open transaction is the
-- snapshot xmin, i.e. the one every relay waits for; no row when none is open. Seeing other
-- roles' sessions needs pg_read_all_stats (or pg_monitor). pg_stat_activity and
-- pg_prepared_xacts show 32-bit xids, so the xid8 xmin is reduced modulo 2^32 to compare.
CREATE VIEW outbox.xmin_holder AS
WITH snapshot AS (
    SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::numeric % 4294967296)::text AS xmin32
)
SELECT h.pid, h.state, h.xact_start, h.application_name, h.prepared_gid
  FROM snapshot s
 CROSS JOIN LATERAL (
        SELECT a.pid, coalesce(a.state, 'unknown') AS state, a.xact_start,
               coalesce(a.application_name, '') AS application_name, NULL::text AS prepared_gid
          FROM pg_stat_activity a
         WHERE a.backend_xid::text = s.xmin32
        UNION ALL
        SELECT NULL::integer, 'prepared', p.prepared, '', p.gid
          FROM pg_prepared_xacts p
         WHERE p.transaction::text = s.xmin32
         LIMIT 1
       ) AS h;

COMMENT ON VIEW outbox.xmin_holder IS
    'The open (or prepared) transaction at the snapshot xmin, which every relay waits for.';

-- outbox.group_status: one row per group, for `outbox-relay status` and for psql.
--
--   lag_messages    messages past the cursor. Counted exactly up to 10,000 (an index-only range
--                   from the cursor); above that estimated from the positions (last seq minus
--                   the cursor's seq), and lag_estimated says so.
--   lag_seconds     age of the oldest undelivered message: the first past the cursor, or a
--                   retrying/blocked one of the group, whichever is older; 0 when none.
--   held_back       of the messages past the cursor, those committed at or above the snapshot
--                   xmin: they wait for an older open transaction (capped at 10,000 too).
--   waiting_on_*    that open transaction (pid, state, age; or a prepared transaction's gid),
--                   when something is held back: outbox.xmin_holder, above.
--   cursor_ahead    the cursor names a transaction id the server has not reached (a cursor from
--                   another cluster, after a dump/restore): the group would wait forever.
CREATE VIEW outbox.group_status AS
WITH snapshot AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
           pg_snapshot_xmax(pg_current_snapshot()) AS xmax
), last_message AS (
    SELECT m.seq
      FROM outbox.messages m
     ORDER BY m.tx_id DESC, m.seq DESC
     LIMIT 1
)
SELECT g.name AS group_name,
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
       g.updated_at
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
       ) AS oldest;

COMMENT ON VIEW outbox.group_status IS
    'Per consumer group: cursor, lag (messages, seconds), lease, retrying/blocked/dead counts, and the open transaction it waits on.';

-- outbox.stuck: every delivery that did not go through first time, with its message.
-- blocked_by names the earliest earlier message of the same key still parked in the group: the
-- one to look at (or retry, or discard once dead) to release a blocked message.
CREATE VIEW outbox.stuck AS
SELECT d.group_name,
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
       d.message_seq
  FROM outbox.deliveries d
  JOIN outbox.messages m ON m.id = d.message_id;

COMMENT ON VIEW outbox.stuck IS
    'Every retrying, blocked or dead delivery with its message: topic, key, payload, attempts, last_error, next_attempt_at.';

-- outbox.dead_letters: the dead deliveries, what an operator retries or discards.
CREATE VIEW outbox.dead_letters AS
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
       s.message_seq
  FROM outbox.stuck s
 WHERE s.status = 'dead';

COMMENT ON VIEW outbox.dead_letters IS
    'Dead deliveries (a permanent error or attempts exhausted), kept until retried or discarded.';

-- outbox.retry_message(message_id, group_name): a retrying or dead delivery of the message
-- becomes due now, attempts kept (a dead one gets one more attempt). A blocked delivery is left
-- alone: it waits for the earlier message of its key (see outbox.stuck.blocked_by). NULL group
-- = every group. One row per delivery found, saying what it was and whether it changed.
--   SELECT * FROM outbox.retry_message('0193...-...');
CREATE FUNCTION outbox.retry_message(message_id uuid, group_name text DEFAULT NULL)
RETURNS TABLE (group_name text, previous_status text, retried boolean)
LANGUAGE sql
AS $fn$
    WITH target AS (
        SELECT d.group_name, d.message_id, d.status
          FROM outbox.deliveries d
         WHERE d.message_id = retry_message.message_id
           AND (retry_message.group_name IS NULL OR d.group_name = retry_message.group_name)
           FOR UPDATE
    ), changed AS (
        UPDATE outbox.deliveries d
           SET status = 'retrying', next_attempt_at = now(), updated_at = now()
          FROM target t
         WHERE d.group_name = t.group_name AND d.message_id = t.message_id
           AND t.status IN ('retrying', 'dead')
        RETURNING d.group_name
    )
    SELECT t.group_name, t.status,
           EXISTS (SELECT 1 FROM changed c WHERE c.group_name = t.group_name)
      FROM target t
     ORDER BY t.group_name
$fn$;

-- What retry_dead and discard_dead return: one row per dead letter they changed.
CREATE TYPE outbox.dead_letter_change AS (
    group_name      text,
    message_id      uuid,
    topic           text,
    key             text,
    message_tx_id   xid8,
    message_seq     bigint,
    attempts        integer,
    last_error      text,
    first_failed_at timestamptz,
    updated_at      timestamptz
);

-- outbox.retry_dead(group_name, topic, since, message_id): the dead letters matching every
-- given filter (NULL = any) become due now, attempts kept: one more attempt each, then dead
-- again if it fails. Returns what it changed.
--   SELECT * FROM outbox.retry_dead(group_name => 'notifications');
CREATE FUNCTION outbox.retry_dead(
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
       AND (retry_dead.group_name IS NULL OR d.group_name = retry_dead.group_name)
       AND (retry_dead.topic IS NULL OR m.topic = retry_dead.topic)
       AND (retry_dead.since IS NULL OR d.first_failed_at >= retry_dead.since)
       AND (retry_dead.message_id IS NULL OR d.message_id = retry_dead.message_id)
    RETURNING d.group_name, d.message_id, m.topic, m.key, d.message_tx_id, d.message_seq,
              d.attempts, d.last_error, d.first_failed_at, d.updated_at
$fn$;

-- outbox.discard_dead(group_name, topic, since, message_id, all_matching): deletes the dead
-- letters matching every given filter; the group counts them as handled from then on (the
-- outbox row stays until prune). With no filter at all it refuses unless all_matching is true.
--   SELECT * FROM outbox.discard_dead(message_id => '0193...-...');
CREATE FUNCTION outbox.discard_dead(
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
       AND (discard_dead.group_name IS NULL OR d.group_name = discard_dead.group_name)
       AND (discard_dead.topic IS NULL OR m.topic = discard_dead.topic)
       AND (discard_dead.since IS NULL OR d.first_failed_at >= discard_dead.since)
       AND (discard_dead.message_id IS NULL OR d.message_id = discard_dead.message_id)
    RETURNING d.group_name, d.message_id, m.topic, m.key, d.message_tx_id, d.message_seq,
              d.attempts, d.last_error, d.first_failed_at, d.updated_at;
END
$fn$;
