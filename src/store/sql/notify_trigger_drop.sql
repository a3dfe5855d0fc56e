-- notify_trigger_drop: `outbox-relay notify off`; true when a trigger was dropped.
SELECT outbox.notify_trigger_drop()
