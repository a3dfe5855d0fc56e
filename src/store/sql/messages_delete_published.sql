-- messages_delete_published: deletes the messages with these ids ($1) and topics ($2) — what
-- `demo` published, so a group of the application routing `*` never forwards them. Both lists
-- must match: a caller names exactly the rows it wrote. A message some delivery row still
-- references (another group's retry or dead letter) is kept, and counted by the caller.
DELETE FROM outbox.messages m
 WHERE m.id = ANY($1::uuid[])
   AND m.topic = ANY($2::text[])
   AND NOT EXISTS (SELECT 1 FROM outbox.deliveries d WHERE d.message_id = m.id)
