-- messages_insert: one message, inside the caller's transaction.
-- The id (UUIDv7) is made by the caller, so nothing needs RETURNING; tx_id, seq and created_at
-- come from the column defaults, exactly as for outbox.publish() and the batch form. Empty
-- header maps travel as NULL and are stored as '{}'.
INSERT INTO outbox.messages (id, topic, key, payload, headers)
VALUES ($1, $2, $3, $4, COALESCE($5, '{}'))
