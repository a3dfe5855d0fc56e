-- group_members_list: the relays running partitioned groups ($1 NULL = every group), live
-- (heartbeat not expired) or expired within the hour, for `status` and `groups list`.
SELECT m.group_name, m.member, m.joined_at, m.expires_at, m.expires_at > now() AS alive
  FROM outbox.group_members m
 WHERE $1::text IS NULL OR m.group_name = $1
 ORDER BY m.group_name, m.member
