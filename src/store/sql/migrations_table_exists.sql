-- migrations_table_exists: has our migrator ever run in this database?
SELECT to_regclass('outbox._sqlx_migrations') IS NOT NULL
