-- consumer_groups_slowest: the group whose cursor is furthest behind (prune's horizon), if any.
SELECT g.name, g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq
  FROM outbox.consumer_groups g
 WHERE NOT g.retired
 ORDER BY g.cursor_tx_id, g.cursor_seq
 LIMIT 1
