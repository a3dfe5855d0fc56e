-- group_members_heartbeat: member $2 of group $1 says it is alive for $3 ms more (its row is
-- created on the first beat), and learns who else is: every live member, in name order (the
-- order partitions are assigned in). Rows expired for an hour go (members that died).
WITH beat AS (
    INSERT INTO outbox.group_members AS m (group_name, member, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => $3::double precision / 1000))
        ON CONFLICT ON CONSTRAINT group_members_pkey DO UPDATE
       SET expires_at = excluded.expires_at
    RETURNING m.member
), gone AS (
    DELETE FROM outbox.group_members m
     WHERE m.group_name = $1 AND m.expires_at < now() - interval '1 hour'
)
SELECT m.member
  FROM outbox.group_members m
 WHERE m.group_name = $1 AND m.member <> $2 AND m.expires_at > now()
 UNION
SELECT b.member FROM beat b
 ORDER BY 1
