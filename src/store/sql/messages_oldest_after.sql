-- messages_oldest_after: the position of the first message after $1:$2 (NULL when none): where
-- the outbox resumes after a range prune may have removed.
SELECT m.tx_id::text AS tx_id_text, m.seq
  FROM outbox.messages m
 WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
 ORDER BY m.tx_id, m.seq
 LIMIT 1
