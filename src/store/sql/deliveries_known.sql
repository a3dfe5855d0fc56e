-- deliveries_known: which of these messages already have a delivery row in the group. Asked
-- only for messages at or below deliveries_recorded_through, i.e. when a relay re-reads a
-- batch whose failures a previous run recorded before it crashed.
SELECT d.message_id
  FROM outbox.deliveries d
 WHERE d.group_name = $1 AND d.message_id = ANY($2::uuid[])
