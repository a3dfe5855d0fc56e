-- deliveries_retry_now: `outbox-relay retry <message-id>`: a retrying or dead delivery of the
-- message becomes due now, its attempts kept (a dead one gets one more attempt before it is
-- dead again). A blocked delivery is left alone (it waits for the earlier message of its key)
-- and reported with its status, so the caller can say so. $2 NULL = every group.
WITH target AS (
    SELECT d.group_name, d.message_id, d.status
      FROM outbox.deliveries d
     WHERE d.message_id = $1 AND ($2::text IS NULL OR d.group_name = $2)
       FOR UPDATE
), changed AS (
    UPDATE outbox.deliveries d
       SET status = 'retrying', next_attempt_at = now(), updated_at = now()
      FROM target t
     WHERE d.group_name = t.group_name AND d.message_id = t.message_id
       AND t.status IN ('retrying', 'dead')
    RETURNING d.group_name
)
SELECT t.group_name, t.status AS previous_status,
       EXISTS (SELECT 1 FROM changed c WHERE c.group_name = t.group_name) AS changed
  FROM target t
 ORDER BY t.group_name
