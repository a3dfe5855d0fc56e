-- deliveries_retry_now: `outbox-relay retry <message-id>`, through the SQL function operators
-- call from psql (migration 0009): a retrying or dead delivery of the message becomes due now,
-- attempts kept; a blocked one is reported with its status and left alone. $2 NULL = every group.
SELECT r.group_name, r.previous_status, r.retried AS changed
  FROM outbox.retry_message($1, $2) AS r
