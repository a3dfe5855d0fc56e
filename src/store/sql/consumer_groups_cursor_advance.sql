-- consumer_groups_cursor_advance: moves a group's cursor forward after the sink said OK, and
-- renews the lease in the same statement. Fenced by the lease: a relay that lost it (owner or
-- epoch changed) updates nothing, and then must stop and re-read the cursor.
UPDATE outbox.consumer_groups g
   SET cursor_tx_id = $4::text::xid8,
       cursor_seq = $5,
       lease_expires_at = now() + make_interval(secs => $6::double precision / 1000),
       updated_at = now()
 WHERE g.name = $1 AND g.lease_owner = $2 AND g.lease_epoch = $3
   AND (g.cursor_tx_id, g.cursor_seq) < ($4::text::xid8, $5)
