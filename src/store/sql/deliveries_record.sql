-- deliveries_record: the first-pass failures of one batch (retrying, blocked or dead), in ONE
-- statement. Runs in the same transaction as consumer_groups_lease_check, and BEFORE the batch
-- is appended to Redis: a relay that crashes after this commit and re-reads the batch finds
-- these rows and leaves the messages to the retry path, so an older message that succeeds on
-- the second try can never be hidden behind the stream's watermark (DESIGN §6).
-- A dead row is recorded with its dead-letter copy pending ($10: the group has a dead-letter
-- stream); the relay clears the flag once the copy is appended, and appends pending copies
-- again after a crash in between.
-- next_attempt_at uses the database clock (delay in ms), like every due check.
INSERT INTO outbox.deliveries AS d
       (group_name, message_id, status, attempts, last_error, next_attempt_at,
        message_tx_id, message_seq, message_key, dead_letter_pending)
SELECT $1, f.message_id, f.status, f.attempts, f.last_error,
       CASE WHEN f.delay_ms IS NULL THEN NULL
            ELSE now() + make_interval(secs => f.delay_ms::double precision / 1000) END,
       f.tx_id_text::xid8, f.seq, f.message_key, f.status = 'dead' AND $10
  FROM UNNEST($2::uuid[], $3::text[], $4::int[], $5::text[], $6::bigint[], $7::text[],
              $8::bigint[], $9::text[])
       AS f (message_id, status, attempts, last_error, delay_ms, tx_id_text, seq, message_key)
    ON CONFLICT ON CONSTRAINT deliveries_pkey DO NOTHING
