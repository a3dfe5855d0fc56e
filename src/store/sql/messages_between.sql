-- messages_between: the messages in a position range (from, through], in position order, for
-- re-appending what Redis lost. The range lies below what the group already appended, so
-- every transaction in it has ended: no snapshot check is needed.
SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.messages m
 WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
   AND (m.tx_id, m.seq) <= ($3::text::xid8, $4)
 ORDER BY m.tx_id, m.seq
 LIMIT $5
