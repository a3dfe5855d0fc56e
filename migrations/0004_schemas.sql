-- The schema registry: versions per topic. A message names the version it was validated
-- against in outbox.messages.schema_version; relays decode through that version.
CREATE TABLE outbox.schemas (
    topic         text        NOT NULL,
    version       integer     NOT NULL,
    format        text        NOT NULL DEFAULT 'json-schema',
    compatibility text        NOT NULL DEFAULT 'backward',
    definition    jsonb       NOT NULL,
    fingerprint   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schemas_pkey PRIMARY KEY (topic, version),
    CONSTRAINT schemas_version_positive CHECK (version > 0),
    CONSTRAINT schemas_format_valid CHECK (format IN ('json-schema', 'avro')),
    CONSTRAINT schemas_compatibility_valid
        CHECK (compatibility IN ('none', 'backward', 'forward', 'full'))
);

COMMENT ON TABLE outbox.schemas IS
    'Schema registry: one row per (topic, version); compatibility is the mode it was registered under.';
