-- roles_exists: whether role $1 exists, so granting to a missing role says "create it first"
-- instead of Postgres's bare "role does not exist" halfway through a script.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = $1)
