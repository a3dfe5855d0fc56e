-- messages_end_position: where `groups reset --to-end` puts a cursor: just below the oldest
-- transaction that may still be running (the snapshot xmin), like a new group with
-- --from-now. Every message of a transaction that ended is passed over; those of transactions
-- still in flight are delivered when they commit.
SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text AS tx_id_text,
       9223372036854775807::bigint AS seq
