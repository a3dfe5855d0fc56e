-- notify_trigger_install: `outbox-relay notify on`. The function (migration 0006) checks and
-- creates in one call, so running it twice is a no-op; true when it installed the trigger.
SELECT outbox.notify_trigger_install()
