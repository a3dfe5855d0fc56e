-- messages_position: where a message sits, as text (xid8 has no binary mapping in sqlx).
SELECT m.tx_id::text AS tx_id_text, m.seq
  FROM outbox.messages m
 WHERE m.id = $1
