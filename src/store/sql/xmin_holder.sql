-- xmin_holder: the session (or prepared transaction) whose open transaction is the snapshot
-- xmin, i.e. the one every relay waits for: the operator view outbox.xmin_holder (migration
-- 0009), which outbox.group_status reads too.
SELECT h.pid,
       h.state,
       extract(epoch FROM clock_timestamp() - h.xact_start)::float8 AS age_seconds,
       h.application_name,
       h.prepared_gid
  FROM outbox.xmin_holder h
