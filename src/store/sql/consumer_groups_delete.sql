-- consumer_groups_delete: removes a group's row (its cursor and lease). Used by `demo` to
-- clean up after itself; operators get `groups reset` in step 4.
DELETE FROM outbox.consumer_groups g WHERE outbox.group_of(g.name) = $1
