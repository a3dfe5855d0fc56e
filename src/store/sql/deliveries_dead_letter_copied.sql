-- deliveries_dead_letter_copied: the dead-letter copies of these dead deliveries are in the
-- dead-letter stream now.
UPDATE outbox.deliveries d
   SET dead_letter_pending = false
 WHERE d.group_name = $1 AND d.message_id = ANY($2::uuid[]) AND d.dead_letter_pending
