-- consumer_groups_names: every group's name, for the error that names a group which does not
-- exist (a mistyped `--group`) together with the ones that do. One small table, read whole.
SELECT DISTINCT outbox.group_of(g.name) AS group_name
  FROM outbox.consumer_groups g
 ORDER BY 1
