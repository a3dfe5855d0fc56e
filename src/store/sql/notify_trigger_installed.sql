-- notify_trigger_installed: whether outbox.messages sends wake-ups (for `status` and for a
-- relay configured with wakeup = "notify", which warns when nobody will notify it).
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = 'outbox.messages'::regclass AND t.tgname = 'messages_notify'
)
