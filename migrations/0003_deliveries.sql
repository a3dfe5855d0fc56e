-- Per (group, message) delivery state, only for messages that did not go through first time.
-- "Retry counts stored in the row" means this row: a restarted relay resumes from here.
--
--   retrying --(attempts exhausted / permanent error)--> dead
--   blocked  --(earlier message of the key done/dead)--> retrying or gone
--
-- The foreign key to outbox.messages keeps prune honest: a message a delivery row still refers
-- to cannot be deleted.
CREATE TABLE outbox.deliveries (
    group_name      text        NOT NULL,
    message_id      uuid        NOT NULL,
    status          text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text            NULL,
    next_attempt_at timestamptz     NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT deliveries_pkey PRIMARY KEY (group_name, message_id),
    CONSTRAINT deliveries_group_fkey FOREIGN KEY (group_name)
        REFERENCES outbox.consumer_groups (name) ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT deliveries_message_fkey FOREIGN KEY (message_id)
        REFERENCES outbox.messages (id),
    CONSTRAINT deliveries_status_valid CHECK (status IN ('retrying', 'blocked', 'dead')),
    CONSTRAINT deliveries_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT deliveries_retrying_is_scheduled
        CHECK (status <> 'retrying' OR next_attempt_at IS NOT NULL)
);

-- Due retries of a group, soonest first.
CREATE INDEX deliveries_due_idx ON outbox.deliveries (group_name, next_attempt_at)
    WHERE status = 'retrying';
-- The foreign key's reverse lookup (prune, message deletes).
CREATE INDEX deliveries_message_idx ON outbox.deliveries (message_id);

COMMENT ON TABLE outbox.deliveries IS
    'Retry state per (group, message) for messages that did not go through first time.';
