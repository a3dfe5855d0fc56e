-- messages_first_since: `replay --from-time`: the first message, in position order, written at
-- or after $1 and not past the group's cursor ($2:$3). Walks the primary key from the start and
-- stops at the first match (there is no index on created_at: it would cost every publish).
SELECT m.tx_id::text AS tx_id_text, m.seq
  FROM outbox.messages m
 WHERE m.created_at >= $1
   AND (m.tx_id, m.seq) <= ($2::text::xid8, $3)
 ORDER BY m.tx_id, m.seq
 LIMIT 1
