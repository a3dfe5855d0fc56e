-- outbox.group_status counts a partition's own messages: lag_messages of a partition row was
-- every message past its cursor, whatever their partition (the cursor moves over the others'
-- rows, but one that is behind counted them all: 8 partitions behind on 1,000 messages each
-- showed 8,000 each, and summed per group, 8 times the backlog). Now a partition counts the
-- messages of its partition among the (at most 10,001) past its cursor; beyond that cap the
-- estimate from positions is divided by the number of partitions. lag_seconds and
-- oldest_undelivered_at are its own oldest message's. Unpartitioned groups: unchanged.
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
       CASE WHEN g.partition IS NULL AND ahead.n <= 10000 THEN ahead.n
            WHEN g.partition IS NULL
                 THEN greatest(ahead.n, (SELECT l.seq FROM last_message l) - g.cursor_seq)
            WHEN ahead.n <= 10000 THEN own.n
            ELSE greatest(own.n,
                          ((SELECT l.seq FROM last_message l) - g.cursor_seq) / g.partitions)
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
 -- A partition's own among the same (at most 10,001) messages; no scan for an unpartitioned
 -- row (a one-time filter).
 CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE capped.mine) AS n,
               min(capped.created_at) FILTER (WHERE capped.mine) AS oldest
          FROM (SELECT outbox.partition_of(m.key, m.id, g.partitions) = g.partition AS mine,
                       m.created_at
                  FROM outbox.messages m
                 WHERE g.partition IS NOT NULL
                   AND (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
                 ORDER BY m.tx_id, m.seq
                 LIMIT 10001) AS capped
       ) AS own
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
                 -- A partition: its oldest message among those counted; the first message
                 -- past the cursor for an unpartitioned row, or for a partition with none of
                 -- its own among the counted when there are more past the cap.
                 CASE WHEN g.partition IS NOT NULL AND (own.n > 0 OR ahead.n <= 10000)
                      THEN own.oldest
                      ELSE (SELECT m.created_at
                              FROM outbox.messages m
                             WHERE (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
                             ORDER BY m.tx_id, m.seq
                             LIMIT 1)
                 END,
                 (SELECT min(m.created_at)
                    FROM outbox.deliveries d
                    JOIN outbox.messages m ON m.id = d.message_id
                   WHERE d.group_name = g.name AND d.status IN ('retrying', 'blocked'))
               ) AS created_at
       ) AS oldest
 WHERE NOT g.retired;

COMMENT ON VIEW outbox.group_status IS
    'Per consumer group (per partition of a partitioned group): cursor, lag (messages, seconds), lease, retrying/blocked/dead counts, and the open transaction it waits on.';
