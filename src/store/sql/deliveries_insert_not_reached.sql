-- deliveries_insert_not_reached: `groups repartition` hands the messages an old partition had
-- not reached to their new partition as delivery rows ($1 ids, $2 rows, $3 statuses):
-- `retrying` due now (attempt 1 is still to come), or `blocked` behind an earlier message of
-- the key, released in position order like any parked key.
INSERT INTO outbox.deliveries
       (group_name, message_id, status, attempts, last_error, next_attempt_at,
        message_tx_id, message_seq, message_key)
SELECT s.row_name, m.id, s.status, 0,
       'not reached by its partition when the group was repartitioned',
       CASE WHEN s.status = 'retrying' THEN now() END,
       m.tx_id, m.seq, m.key
  FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS s (message_id, row_name, status)
  JOIN outbox.messages m ON m.id = s.message_id
