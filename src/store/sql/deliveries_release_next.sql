-- deliveries_release_next: for each key whose parked message is now done or dead, the next
-- blocked message of that key (lowest position) becomes due now. Run in the transaction of
-- deliveries_settle, after it; a key that still has a retrying message stays parked.
UPDATE outbox.deliveries d
   SET status = 'retrying', next_attempt_at = now(), updated_at = now()
  FROM (SELECT DISTINCT ON (b.message_key) b.message_id
          FROM outbox.deliveries b
         WHERE b.group_name = $1 AND b.status = 'blocked' AND b.message_key = ANY($2::text[])
           AND NOT EXISTS (SELECT 1 FROM outbox.deliveries r
                            WHERE r.group_name = b.group_name AND r.message_key = b.message_key
                              AND r.status = 'retrying')
         ORDER BY b.message_key, b.message_tx_id, b.message_seq) next
 WHERE d.group_name = $1 AND d.message_id = next.message_id
RETURNING d.message_id
