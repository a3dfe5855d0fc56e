-- messages_last_position: the highest position in the outbox, committed or not yet visible
-- (a backward walk of the primary key: one index probe).
SELECT m.tx_id::text AS tx_id_text, m.seq
  FROM outbox.messages m
 ORDER BY m.tx_id DESC, m.seq DESC
 LIMIT 1
