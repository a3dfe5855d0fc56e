-- outbox.publish(topic, payload, key, headers) -> uuid: the same insert as the Rust
-- publish_in_tx, for publishers in any language. Call it inside the transaction that makes the
-- business change; on rollback the message is gone with it.
--
-- Checks mirror the Rust ones and give the same reasons; the table's CHECK constraints stay as
-- the last line of defence for hand-written INSERTs. The payload size limit defaults to 1 MiB of
-- JSON text and can be changed per database or session with the setting
-- outbox.max_payload_bytes (e.g. ALTER DATABASE app SET outbox.max_payload_bytes = '2097152').

-- UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits, version 7, variant 10.
-- gen_random_uuid() already carries variant 10 and version 4 (0100); setting bits 52 and 53
-- turns the version nibble into 0111.
CREATE FUNCTION outbox.uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $fn$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    placing substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$fn$;

CREATE FUNCTION outbox.publish(
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

    INSERT INTO outbox.messages (id, topic, key, payload, headers)
    VALUES (new_id, publish.topic, publish.key, publish.payload, coalesce(publish.headers, '{}'));
    RETURN new_id;
END
$fn$;

COMMENT ON FUNCTION outbox.publish(text, jsonb, text, jsonb) IS
    'Publish a message inside the current transaction; returns its UUIDv7 id. Same checks as the Rust publish_in_tx.';
