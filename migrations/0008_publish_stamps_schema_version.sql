-- outbox.publish() stamps schema_version with the topic's latest registered version, like the
-- Rust publish_in_tx. Same signature, same checks and messages as 0005 (CREATE OR REPLACE keeps
-- grants and callers intact); only the stamp is new.
--
-- What it cannot do: validate the payload against that version. Postgres has no JSON Schema
-- validator, so a row published through SQL is validated by the relay, which decodes every row
-- through the version it names and dead-letters a row that does not match (outbox.deliveries,
-- status 'dead', with the failing JSON paths in last_error). Publish through the Rust library
-- to have a bad payload refused inside the transaction instead.

CREATE OR REPLACE FUNCTION outbox.publish(
    topic   text,
    payload jsonb,
    key     text  DEFAULT NULL,
    headers jsonb DEFAULT '{}'
) RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    max_payload_bytes bigint := coalesce(
        nullif(current_setting('outbox.max_payload_bytes', true), '')::bigint, 1048576);
    payload_bytes bigint;
    bad_header text;
    new_id uuid := outbox.uuid_v7();
    latest_version integer;
BEGIN
    IF publish.topic IS NULL OR publish.topic = '' THEN
        RAISE EXCEPTION 'outbox.publish: topic must not be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(publish.topic) > 255 THEN
        RAISE EXCEPTION 'outbox.publish: topic is % bytes long, the limit is 255',
            octet_length(publish.topic) USING ERRCODE = '22023';
    END IF;
    IF publish.topic ~ '[[:space:][:cntrl:]]' THEN
        RAISE EXCEPTION 'outbox.publish: topic % contains whitespace or a control character',
            quote_literal(publish.topic) USING ERRCODE = '22023';
    END IF;
    IF publish.key = '' THEN
        RAISE EXCEPTION 'outbox.publish: key must be NULL or non-empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(publish.key) > 1024 THEN
        RAISE EXCEPTION 'outbox.publish: key is % bytes long, the limit is 1024',
            octet_length(publish.key) USING ERRCODE = '22023';
    END IF;
    IF publish.payload IS NULL OR jsonb_typeof(publish.payload) NOT IN ('object', 'array') THEN
        RAISE EXCEPTION 'outbox.publish: payload must be a JSON object or array, not %',
            coalesce(jsonb_typeof(publish.payload), 'SQL NULL') USING ERRCODE = '22023';
    END IF;
    payload_bytes := octet_length(publish.payload::text);
    IF payload_bytes > max_payload_bytes THEN
        RAISE EXCEPTION 'outbox.publish: payload is % bytes of JSON, the limit is % (setting outbox.max_payload_bytes)',
            payload_bytes, max_payload_bytes USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(coalesce(publish.headers, '{}')) <> 'object' THEN
        RAISE EXCEPTION 'outbox.publish: headers must be a JSON object of strings, not %',
            jsonb_typeof(publish.headers) USING ERRCODE = '22023';
    END IF;
    SELECT h.name INTO bad_header
      FROM jsonb_each(coalesce(publish.headers, '{}')) AS h(name, value)
     WHERE jsonb_typeof(h.value) <> 'string'
     LIMIT 1;
    IF bad_header IS NOT NULL THEN
        RAISE EXCEPTION 'outbox.publish: header % must have a string value', quote_literal(bad_header)
            USING ERRCODE = '22023';
    END IF;

    -- The topic's latest registered version (NULL without one): one backwards probe of the
    -- primary key. Postgres cannot validate JSON Schema, so the payload is NOT checked against
    -- it here; the relay validates the row against this version and dead-letters it if it
    -- does not match.
    SELECT s.version INTO latest_version
      FROM outbox.schemas s
     WHERE s.topic = publish.topic
     ORDER BY s.version DESC
     LIMIT 1;

    INSERT INTO outbox.messages (id, topic, key, schema_version, payload, headers)
    VALUES (new_id, publish.topic, publish.key, latest_version, publish.payload,
            coalesce(publish.headers, '{}'));
    RETURN new_id;
END
$fn$;

COMMENT ON FUNCTION outbox.publish(text, jsonb, text, jsonb) IS
    'Publish a message inside the current transaction; returns its UUIDv7 id. Same checks as the Rust publish_in_tx, and stamps schema_version = the topic''s latest registered version; the payload is not validated against it here (Postgres cannot run JSON Schema): the relay validates it and dead-letters a row that does not match.';
