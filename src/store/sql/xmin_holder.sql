-- xmin_holder: the session (or prepared transaction) whose open transaction is the snapshot
-- xmin, i.e. the one every relay waits for. pg_stat_activity and pg_prepared_xacts show
-- 32-bit xids, so the xid8 xmin is reduced modulo 2^32 to compare.
WITH snapshot AS (
    SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::numeric % 4294967296)::text AS xmin32
)
SELECT a.pid,
       coalesce(a.state, 'unknown') AS state,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age_seconds,
       coalesce(a.application_name, '') AS application_name,
       NULL::text AS prepared_gid
  FROM pg_stat_activity a, snapshot s
 WHERE a.backend_xid::text = s.xmin32
UNION ALL
SELECT NULL::integer,
       'prepared',
       extract(epoch FROM clock_timestamp() - p.prepared)::float8,
       '',
       p.gid
  FROM pg_prepared_xacts p, snapshot s
 WHERE p.transaction::text = s.xmin32
 LIMIT 1
