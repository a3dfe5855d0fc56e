-- The outbox itself. A row exists if and only if the transaction that wrote it committed.
--
-- A message's position is (tx_id, seq): the id of the writing transaction, then the insertion
-- order. Relays read in position order and only below the snapshot xmin (DESIGN §3), which is
-- why the primary key leads with tx_id and not with seq: `seq` alone is assigned at INSERT time,
-- so a transaction that took a low seq may commit after one that took a higher one.

CREATE SCHEMA IF NOT EXISTS outbox;

-- Header maps are flat string -> string objects (traceparent, correlation_id, ...). A function,
-- because a CHECK constraint cannot hold a subquery.
CREATE FUNCTION outbox.headers_are_strings(headers jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $fn$
    SELECT jsonb_typeof(headers) = 'object'
       AND NOT EXISTS (SELECT 1 FROM jsonb_each(headers) AS h(name, value)
                        WHERE jsonb_typeof(h.value) <> 'string')
$fn$;

CREATE TABLE outbox.messages (
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq            bigint      NOT NULL GENERATED ALWAYS AS IDENTITY,
    id             uuid        NOT NULL,
    topic          text        NOT NULL,
    key            text            NULL,
    schema_version integer         NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),

    CONSTRAINT messages_pkey PRIMARY KEY (tx_id, seq),
    CONSTRAINT messages_id_key UNIQUE (id),
    CONSTRAINT messages_topic_valid
        CHECK (topic <> '' AND octet_length(topic) <= 255 AND topic !~ '[[:space:][:cntrl:]]'),
    CONSTRAINT messages_key_valid
        CHECK (key IS NULL OR (key <> '' AND octet_length(key) <= 1024)),
    CONSTRAINT messages_schema_version_positive
        CHECK (schema_version IS NULL OR schema_version > 0),
    CONSTRAINT messages_payload_is_document
        CHECK (jsonb_typeof(payload) IN ('object', 'array')),
    CONSTRAINT messages_headers_are_strings
        CHECK (outbox.headers_are_strings(headers))
);

COMMENT ON TABLE outbox.messages IS
    'Transactional outbox: written inside the application''s transaction, tailed by outbox-relay.';
COMMENT ON COLUMN outbox.messages.tx_id IS
    'Writing transaction (first half of the position); relays read only below the snapshot xmin.';
COMMENT ON COLUMN outbox.messages.seq IS
    'Insertion order (second half of the position); not commit order on its own.';
COMMENT ON COLUMN outbox.messages.key IS
    'Ordering key, e.g. an aggregate id: messages with one key are delivered in position order.';
