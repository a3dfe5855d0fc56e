-- schemas_list: every version of every topic (or of topic $1 when it is not NULL), for
-- `outbox-relay schema list`. Operators read it top to bottom: topic, then oldest version first.
SELECT s.topic, s.version, s.format, s.compatibility, s.definition, s.fingerprint, s.created_at
  FROM outbox.schemas s
 WHERE $1::text IS NULL OR s.topic = $1
 ORDER BY s.topic, s.version
