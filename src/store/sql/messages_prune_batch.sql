-- messages_prune_batch: one batch of `outbox-relay prune`. Looks at up to $4 messages after
-- $1:$2 in position order, at or below every group's cursor (the horizon: every group has
-- passed them), up to the first one written at or after $3 (the cut-off; prune deletes the old
-- prefix of the outbox and stops there, so each batch reads only what it looks at). Of those,
-- deletes the ones no delivery row references (a retrying, blocked or dead delivery keeps its
-- message; the foreign key would refuse anyway). $5 = true: a dry run, nothing deleted.
--
-- The groups' rows are locked FOR SHARE for the statement, so a replay cannot move a cursor
-- back below the horizon while a batch deletes; publishers are not blocked (inserts take no
-- lock a delete of other rows waits for).
WITH groups AS (
    SELECT g.cursor_tx_id, g.cursor_seq
      FROM outbox.consumer_groups g
     WHERE NOT g.retired
       FOR SHARE
), horizon AS (
    SELECT x.cursor_tx_id, x.cursor_seq
      FROM groups x
     ORDER BY x.cursor_tx_id, x.cursor_seq
     LIMIT 1
), looked_at AS (
    -- The window runs over the batch only (the LIMIT is inside), never over the whole range.
    SELECT b.tx_id, b.seq, b.id,
           bool_or(b.created_at >= $3) OVER (ORDER BY b.tx_id, b.seq) AS young_seen
      FROM (SELECT m.tx_id, m.seq, m.id, m.created_at
              FROM outbox.messages m
             WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
               -- Two scalar subqueries (not a join) so the horizon bounds the index range.
               AND (m.tx_id, m.seq) <= ((SELECT h.cursor_tx_id FROM horizon h),
                                        (SELECT h.cursor_seq FROM horizon h))
             ORDER BY m.tx_id, m.seq
             LIMIT $4) AS b
), old AS (
    SELECT l.tx_id, l.seq, l.id,
           EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.message_id = l.id) AS referenced
      FROM looked_at l
     WHERE NOT l.young_seen
), deleted AS (
    DELETE FROM outbox.messages m
     USING old o
     WHERE m.tx_id = o.tx_id AND m.seq = o.seq
       AND NOT o.referenced
       AND NOT $5
    RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS deleted,
       (SELECT count(*) FROM old o WHERE NOT o.referenced) AS deletable,
       (SELECT count(*) FROM old o WHERE o.referenced) AS referenced,
       (SELECT o.tx_id::text FROM old o ORDER BY o.tx_id DESC, o.seq DESC LIMIT 1) AS last_tx_id_text,
       (SELECT o.seq FROM old o ORDER BY o.tx_id DESC, o.seq DESC LIMIT 1) AS last_seq,
       (SELECT count(*) FROM looked_at) AS looked_at,
       EXISTS (SELECT 1 FROM looked_at l WHERE l.young_seen) AS reached_cutoff
