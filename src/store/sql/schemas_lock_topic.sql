-- schemas_lock_topic: serialises registrations of one topic until the end of the transaction.
-- A row lock (FOR UPDATE of the latest version) cannot cover a topic's first version, which has
-- no row yet; a transaction-scoped advisory lock on the topic's name does, and is released by
-- commit or rollback, so a crashed registration never leaves it held. hashtext collisions only
-- make two topics wait for each other, never break anything.
SELECT pg_advisory_xact_lock(hashtext('outbox.schemas:' || $1))
