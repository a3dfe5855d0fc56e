-- roles_grant_publisher: what an application role needs to publish, and nothing more.
-- Run by `outbox-relay grant publisher ROLE` (which puts the quoted role name in place of the
-- psql variable below) or by a DBA with `psql -v role=app_publisher -f roles_grant_publisher.sql`.
-- Idempotent: granting a privilege a role already has changes nothing. The role itself is
-- created by the DBA (roles are cluster-wide; this file never creates or drops one).
--
-- INSERT is granted on the columns a publish writes, not on the table: tx_id, seq and
-- created_at come from their defaults, so a publisher cannot forge a position (a tx_id below a
-- relay's cursor would never be delivered). seq is an identity column: inserting needs no
-- privilege on its sequence. No SELECT, UPDATE or DELETE on outbox.messages, no access to
-- outbox.consumer_groups or outbox.deliveries at all.
-- SELECT on outbox.schemas: publish_in_tx validates against the topic's latest schema and its
-- insert re-checks the stamp in the same statement; outbox.publish() reads the latest version.
-- EXECUTE on the functions a publish calls: outbox.publish() itself, the UUIDv7 generator it
-- uses, and the header check behind a CHECK constraint (functions are executable by PUBLIC by
-- default; granting keeps this working where a DBA revoked that).
GRANT USAGE ON SCHEMA outbox TO :"role";
GRANT INSERT (id, topic, key, schema_version, payload, headers) ON outbox.messages TO :"role";
GRANT SELECT ON outbox.schemas TO :"role";
GRANT EXECUTE ON FUNCTION outbox.publish(text, jsonb, text, jsonb), outbox.uuid_v7(),
    outbox.headers_are_strings(jsonb) TO :"role";
