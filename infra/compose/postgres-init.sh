#!/usr/bin/env bash
# First start of the Compose PostgreSQL: the same roles and databases as the laptop stack
# (tx_platform/stack/_postgres.py): owner owns the warehouse and runs the migrations (the `migrate`
# service), pipeline writes rows only, analyst reads, Dagster and the registry own their databases,
# monitor (pg_monitor) is postgres_exporter's login. Passwords come from compose.env, never from this file.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres <<SQL
CREATE ROLE txp_owner LOGIN PASSWORD '${TXP_OWNER_PASSWORD}';
CREATE ROLE txp_pipeline LOGIN PASSWORD '${TXP_PIPELINE_PASSWORD}';
CREATE ROLE txp_analyst LOGIN PASSWORD '${TXP_ANALYST_PASSWORD}';
CREATE ROLE txp_dagster LOGIN PASSWORD '${TXP_DAGSTER_PASSWORD}';
CREATE ROLE txp_registry LOGIN PASSWORD '${TXP_REGISTRY_PASSWORD}';
CREATE ROLE txp_monitor LOGIN PASSWORD '${TXP_MONITOR_PASSWORD}';
GRANT pg_monitor TO txp_monitor;
CREATE DATABASE txp OWNER txp_owner;
CREATE DATABASE dagster OWNER txp_dagster;
CREATE DATABASE registry OWNER txp_registry;
REVOKE ALL ON DATABASE txp, dagster, registry FROM PUBLIC;
GRANT CONNECT ON DATABASE txp TO txp_pipeline, txp_analyst;
SQL
psql -v ON_ERROR_STOP=1 --username postgres --dbname txp <<SQL
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO txp_owner;
GRANT USAGE ON SCHEMA public TO txp_pipeline, txp_analyst;
-- what the migrations create: rows for the pipeline, reading for the analyst (schema_migrations is
-- the owner's: txp db migrate takes the pipeline's write grants on it away)
ALTER DEFAULT PRIVILEGES FOR ROLE txp_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO txp_pipeline;
ALTER DEFAULT PRIVILEGES FOR ROLE txp_owner IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO txp_pipeline;
ALTER DEFAULT PRIVILEGES FOR ROLE txp_owner IN SCHEMA public GRANT SELECT ON TABLES TO txp_analyst;
SQL
