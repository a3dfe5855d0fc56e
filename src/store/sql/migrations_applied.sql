-- migrations_applied: versions our migrator has recorded (outbox._sqlx_migrations).
-- Only run after migrations_table_exists said yes: naming a missing table fails at parse time.
SELECT m.version
  FROM outbox._sqlx_migrations m
 WHERE m.success
 ORDER BY m.version
