-- Installing identity_bindings: one statement, by a superuser. Everything lives in schema
-- "identity", which the extension creates, owned by that superuser (it is not relocatable).
\set SHOW_CONTEXT never

-- The database must be UTF8: every event's hash is computed over the UTF-8 text of its payload.
-- In a database of another encoding the install is refused (0A000) and leaves nothing behind.
\set regress_database :DBNAME
CREATE DATABASE identity_latin1 ENCODING 'LATIN1' LOCALE 'C' TEMPLATE template0;
\c identity_latin1
CREATE EXTENSION identity_bindings;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS identity_schemas FROM pg_namespace WHERE nspname = 'identity';
-- 0.1.0 did not check. An install of it there is not updated: it stays 0.1.0.
CREATE EXTENSION identity_bindings VERSION '0.1.0';
ALTER EXTENSION identity_bindings UPDATE;
\echo :LAST_ERROR_SQLSTATE
SELECT extversion FROM pg_extension WHERE extname = 'identity_bindings';
-- SQL_ASCII, which takes any bytes and checks none, is refused as well.
CREATE DATABASE identity_sql_ascii ENCODING 'SQL_ASCII' LOCALE 'C' TEMPLATE template0;
\c identity_sql_ascii
CREATE EXTENSION identity_bindings;
\echo :LAST_ERROR_SQLSTATE
\c :regress_database
DROP DATABASE identity_latin1;
DROP DATABASE identity_sql_ascii;

-- Schema identity must be the superusers' own. CREATE EXTENSION takes over an existing schema of
-- that name, and a role that owns it, or may create objects in it, could have the SECURITY
-- DEFINER functions run its own code as the superuser who installed them. Such a schema is
-- refused (42501) and nothing is created in it.
CREATE DATABASE identity_taken;
\c identity_taken
CREATE ROLE identity_schema_squatter;
CREATE SCHEMA identity AUTHORIZATION identity_schema_squatter;
CREATE EXTENSION identity_bindings;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS objects_in_schema FROM pg_class WHERE relnamespace = 'identity'::regnamespace;
ALTER SCHEMA identity OWNER TO CURRENT_USER;
GRANT CREATE ON SCHEMA identity TO identity_schema_squatter, PUBLIC;
CREATE EXTENSION identity_bindings;
\echo :LAST_ERROR_SQLSTATE
-- A superuser's, with CREATE for no one else, it is accepted.
REVOKE CREATE ON SCHEMA identity FROM identity_schema_squatter, PUBLIC;
CREATE EXTENSION identity_bindings;
SELECT extversion FROM pg_extension WHERE extname = 'identity_bindings';
-- 0.1.0 did not check: an install of it in such a schema is not updated until the schema is fixed.
DROP EXTENSION identity_bindings;
ALTER SCHEMA identity OWNER TO identity_schema_squatter;
CREATE EXTENSION identity_bindings VERSION '0.1.0';
ALTER EXTENSION identity_bindings UPDATE;
\echo :LAST_ERROR_SQLSTATE
ALTER SCHEMA identity OWNER TO CURRENT_USER;
ALTER EXTENSION identity_bindings UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'identity_bindings';
\c :regress_database
DROP DATABASE identity_taken;
DROP ROLE identity_schema_squatter;

-- In a UTF8 database, where schema identity does not exist yet:
CREATE EXTENSION identity_bindings;

SELECT e.extname, e.extversion, n.nspname AS schema, e.extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'identity_bindings';

-- Four tables. pg_dump keeps the data of all of them (built-in providers come back with
-- CREATE EXTENSION, so only custom ones are dumped).
SELECT c.relname, coalesce(d.condition, '') AS dumped_rows
  FROM pg_class c
  LEFT JOIN (SELECT unnest(extconfig) AS relid, unnest(extcondition) AS condition
               FROM pg_extension WHERE extname = 'identity_bindings') d ON d.relid = c.oid
 WHERE c.relnamespace = 'identity'::regnamespace AND c.relkind = 'r'
 ORDER BY c.relname;

-- What every stored value must be, checked by the columns' types whoever writes the tables.
SELECT t.typname AS domain, format_type(t.typbasetype, t.typtypmod) AS over,
       pg_get_constraintdef(c.oid) AS rule
  FROM pg_type t JOIN pg_constraint c ON c.contypid = t.oid
 WHERE t.typnamespace = 'identity'::regnamespace AND t.typtype = 'd'
 ORDER BY t.typname;

-- Every text key compares byte for byte (COLLATE "C"), whatever the database's locale: a unique
-- index on it does not depend on the C library's collation data, which an operating system
-- upgrade can reorder.
SELECT i.indexrelid::regclass AS unique_index, a.attname AS "column", a.attcollation::regcollation AS collation
  FROM pg_index i
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
 WHERE i.indisunique AND a.attcollation <> 0
   AND i.indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'identity'::regnamespace)
 ORDER BY i.indexrelid::regclass::text, a.attname;

-- The built-in providers and the canonical form of their ids.
SELECT name, description FROM identity.providers ORDER BY name;

-- The functions. Every one that touches a table is SECURITY DEFINER with a pinned search_path.
SELECT p.proname AS function, pg_get_function_identity_arguments(p.oid) AS arguments,
       p.prosecdef AS security_definer, array_to_string(p.proconfig, ', ') AS settings
  FROM pg_proc p
 WHERE p.pronamespace = 'identity'::regnamespace
 ORDER BY p.proname;

-- Nothing is granted to PUBLIC: no table privilege, no EXECUTE. The DBA grants what each
-- application role needs (see privileges).
SELECT count(*) AS public_table_privileges
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = 'identity'::regnamespace AND a.grantee = 0;
SELECT count(*) AS public_execute_privileges
  FROM pg_proc p, aclexplode(p.proacl) a
 WHERE p.pronamespace = 'identity'::regnamespace AND a.grantee = 0;
SELECT has_schema_privilege('public', 'identity', 'USAGE') AS public_can_use_schema;
