-- Deliveries carry their message's position and ordering key, so the relay can answer "which
-- keys are parked in this group?" and "which blocked message of this key comes next?" from the
-- deliveries alone (an index range each), and operators see the order without a join.
--
--   first attempt fails ──▶ retrying ──(attempts exhausted / permanent error)──▶ dead
--                              │  └──(attempt succeeds)──▶ row deleted
--   key parked ──▶ blocked ──(earlier message of the key done or dead)──▶ retrying, due now
--
-- A row is written only for a message that did not go through first time; its absence means
-- "delivered" (or "not reached yet", when the message lies past the group's cursor).
ALTER TABLE outbox.deliveries
    ADD COLUMN message_tx_id xid8   NULL,
    ADD COLUMN message_seq   bigint NULL,
    ADD COLUMN message_key   text   NULL;

UPDATE outbox.deliveries d
   SET message_tx_id = m.tx_id, message_seq = m.seq, message_key = m.key
  FROM outbox.messages m
 WHERE m.id = d.message_id;

ALTER TABLE outbox.deliveries
    ALTER COLUMN message_tx_id SET NOT NULL,
    ALTER COLUMN message_seq SET NOT NULL,
    ADD CONSTRAINT deliveries_last_error_bounded CHECK (octet_length(last_error) <= 8192);

-- Parked keys of a group and the next blocked message of a key, in position order.
CREATE INDEX deliveries_parked_idx ON outbox.deliveries (group_name, message_key, message_tx_id, message_seq)
    WHERE status IN ('retrying', 'blocked');

COMMENT ON COLUMN outbox.deliveries.message_key IS
    'The message''s ordering key (copied from outbox.messages.key); NULL for unordered messages.';
COMMENT ON COLUMN outbox.deliveries.attempts IS
    'Failed attempts so far; 0 for a blocked message that has not been tried.';
