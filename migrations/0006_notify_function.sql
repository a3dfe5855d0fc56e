-- outbox.notify_new_messages(): the trigger function behind the opt-in `wakeup = "notify"`.
--
-- Only the function is created here; the trigger that calls it is installed and dropped by
-- `outbox-relay notify on|off` (or outbox.notify_trigger_install() / outbox.notify_trigger_drop()
-- below), because NOTIFY is not free: Postgres takes a cluster-wide lock at commit to queue the
-- notification, which serialises committing publishers (DESIGN §3; figures in README). Without
-- the trigger the relay polls, which costs publishers nothing.
--
-- The trigger is statement-level, and the payload is the publishing transaction's id: Postgres
-- folds identical notifications of one transaction into one, so a transaction publishing 100
-- messages in 100 statements still sends a single wake-up. The relay only uses a notification
-- to end an idle wait early, and the id to keep reading briskly until its cursor has passed that
-- transaction (an older open transaction may hold its messages back for a while); what to read
-- always comes from the cursor.
CREATE FUNCTION outbox.notify_new_messages() RETURNS trigger
LANGUAGE plpgsql
AS $fn$
BEGIN
    PERFORM pg_notify('outbox_messages', pg_current_xact_id()::text);
    RETURN NULL;
END
$fn$;

-- Installs the trigger (idempotent). Returns true when it was not installed before.
CREATE FUNCTION outbox.notify_trigger_install() RETURNS boolean
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t
                WHERE t.tgrelid = 'outbox.messages'::regclass AND t.tgname = 'messages_notify') THEN
        RETURN false;
    END IF;
    CREATE TRIGGER messages_notify
        AFTER INSERT ON outbox.messages
        FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_new_messages();
    RETURN true;
END
$fn$;

-- Drops the trigger (idempotent). Returns true when it was installed before.
CREATE FUNCTION outbox.notify_trigger_drop() RETURNS boolean
LANGUAGE plpgsql
AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = 'outbox.messages'::regclass AND t.tgname = 'messages_notify') THEN
        RETURN false;
    END IF;
    DROP TRIGGER messages_notify ON outbox.messages;
    RETURN true;
END
$fn$;
