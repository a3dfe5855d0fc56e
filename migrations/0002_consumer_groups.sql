-- One row per consumer group: where it has read to, whether it is paused, and who holds it.
--
-- The cursor is the position of the last message the group has passed; (0, 0) is "before
-- everything". Only the relay holding the lease moves it, and every update is fenced by
-- lease_owner (DESIGN §4). lease_epoch grows by one at every takeover so a relay that lost the
-- lease can be refused at the Redis side too (DESIGN §6).
CREATE TABLE outbox.consumer_groups (
    name             text        NOT NULL,
    cursor_tx_id     xid8        NOT NULL DEFAULT '0',
    cursor_seq       bigint      NOT NULL DEFAULT 0,
    paused           boolean     NOT NULL DEFAULT false,
    lease_owner      text            NULL,
    lease_epoch      bigint      NOT NULL DEFAULT 0,
    lease_expires_at timestamptz     NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT consumer_groups_pkey PRIMARY KEY (name),
    CONSTRAINT consumer_groups_name_valid CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$'),
    CONSTRAINT consumer_groups_cursor_seq_nonnegative CHECK (cursor_seq >= 0),
    CONSTRAINT consumer_groups_lease_epoch_nonnegative CHECK (lease_epoch >= 0),
    CONSTRAINT consumer_groups_lease_complete
        CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL))
);

COMMENT ON TABLE outbox.consumer_groups IS
    'Consumer groups: cursor (cursor_tx_id, cursor_seq), pause flag and the relay lease.';
