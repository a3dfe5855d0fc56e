-- How far each consumer group has appended to each of its streams, kept in Postgres beside
-- the group's cursor and written by the same statement that moves it (DESIGN §6). Redis can
-- lose acknowledged appends (a restart without persistence or from an older snapshot, a
-- failover to a replica that lagged): when the watermark the relay reads from Redis is behind
-- the mark here, the relay re-appends the gap from the outbox before anything newer.
--
-- `mark` (and `first_mark`) is the entry identity the Redis watermark stores: `[r<generation>:]<tx_id>:<seq>[:<ordinal>]`,
-- fixed-width numbers, so in the C collation it sorts like the identity itself.
CREATE TABLE outbox.stream_marks (
    group_name text                  NOT NULL,
    stream     text                  NOT NULL,
    mark       text COLLATE "C"      NOT NULL,
    -- The first entry the group appended there: where a re-append starts when Redis lost
    -- the stream and its watermark altogether.
    first_mark text COLLATE "C"      NOT NULL,
    updated_at timestamptz           NOT NULL DEFAULT now(),

    CONSTRAINT stream_marks_pkey PRIMARY KEY (group_name, stream),
    CONSTRAINT stream_marks_group_fkey FOREIGN KEY (group_name)
        REFERENCES outbox.consumer_groups (name) ON DELETE CASCADE
);

COMMENT ON TABLE outbox.stream_marks IS
    'Per consumer group and stream: the last entry appended to Redis, moved with the cursor.';

-- A dead delivery whose dead-letter copy is not in the dead-letter stream yet: recorded with
-- the dead row, cleared once the copy is appended; the relay appends pending copies again
-- after a crash, a Redis failure or a dead-letter stream key of the wrong type.
ALTER TABLE outbox.deliveries
    ADD COLUMN dead_letter_pending boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN outbox.deliveries.dead_letter_pending IS
    'Dead, and its copy for the dead-letter stream is still to be appended.';
