-- deliveries_settle: the results of retried messages, in ONE statement: a done message's row
-- is deleted (status NULL), a failed one is rescheduled (retrying, delay in ms on the database
-- clock) or dead. Runs in a transaction after consumer_groups_lease_check, after the outputs
-- were appended (late appends are deduplicated per message, so a crash before this commit
-- makes the next attempt add nothing). Only rows still retrying are touched: an operator's
-- discard in between wins. A dead row whose dead-letter copy could not be appended keeps it
-- pending ($7).
WITH settled AS (
    SELECT s.message_id, s.status, s.attempts, s.last_error, s.delay_ms, s.copy_pending
      FROM UNNEST($2::uuid[], $3::text[], $4::int[], $5::text[], $6::bigint[], $7::boolean[])
           AS s (message_id, status, attempts, last_error, delay_ms, copy_pending)
), done AS (
    DELETE FROM outbox.deliveries d
     USING settled s
     WHERE d.group_name = $1 AND d.message_id = s.message_id AND s.status IS NULL
       AND d.status = 'retrying'
    RETURNING d.message_id
), failed AS (
    UPDATE outbox.deliveries d
       SET status = s.status,
           attempts = s.attempts,
           last_error = s.last_error,
           dead_letter_pending = s.status = 'dead' AND s.copy_pending,
           next_attempt_at = CASE WHEN s.delay_ms IS NULL THEN NULL
               ELSE now() + make_interval(secs => s.delay_ms::double precision / 1000) END,
           updated_at = now()
      FROM settled s
     WHERE d.group_name = $1 AND d.message_id = s.message_id AND s.status IS NOT NULL
       AND d.status = 'retrying'
    RETURNING d.message_id
)
SELECT (SELECT count(*) FROM done) AS done, (SELECT count(*) FROM failed) AS failed
