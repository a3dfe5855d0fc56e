-- consumer_groups_cursor_advance: moves a group's cursor forward after the sink said OK, and
-- renews the lease, and records how far the group has appended to each stream of the batches
-- it passes ($7 streams, $8 their last entry marks, $9 their first), all in ONE statement. Fenced by the
-- lease: a relay that lost it (owner or epoch changed) updates nothing, and then must stop and
-- re-read the cursor. A mark only ever grows (the marks sort as text in the C collation).
WITH moved AS (
    UPDATE outbox.consumer_groups g
       SET cursor_tx_id = $4::text::xid8,
           cursor_seq = $5,
           lease_expires_at = now() + make_interval(secs => $6::double precision / 1000),
           updated_at = now()
     WHERE g.name = $1 AND g.lease_owner = $2 AND g.lease_epoch = $3
       AND (g.cursor_tx_id, g.cursor_seq) < ($4::text::xid8, $5)
    RETURNING g.name
), marked AS (
    INSERT INTO outbox.stream_marks AS m (group_name, stream, mark, first_mark)
    SELECT moved.name, s.stream, s.mark, s.first_mark
      FROM moved, UNNEST($7::text[], $8::text[], $9::text[]) AS s (stream, mark, first_mark)
        ON CONFLICT ON CONSTRAINT stream_marks_pkey DO UPDATE
       SET mark = excluded.mark, updated_at = now()
     WHERE m.mark < excluded.mark
)
SELECT count(*) AS moved FROM moved
