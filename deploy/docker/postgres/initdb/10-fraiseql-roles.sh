#!/usr/bin/env bash
# First start of the metrics database (docker-entrypoint-initdb.d): the LOGIN users of the
# least-privilege roles (SPEC §6). The NOLOGIN group roles are created here exactly as
# `fraiseql-cli migrate` creates them (it tolerates existing ones) so that memberships can be
# granted before the migration runs; the migration then grants the tables to the groups.
# Passwords come from the environment as psql variables, never spliced into the SQL text.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v sink_password="${FRAISEQL_SINK_DB_PASSWORD:?}" \
    -v scheduler_password="${FRAISEQL_SCHEDULER_DB_PASSWORD:?}" \
    -v grafana_password="${FRAISEQL_GRAFANA_DB_PASSWORD:?}" <<'SQL'
CREATE ROLE fraiseql_maintainer NOLOGIN;
CREATE ROLE fraiseql_collector NOLOGIN;
CREATE ROLE fraiseql_analyst NOLOGIN;
CREATE ROLE fraiseql_scheduler NOLOGIN;
-- The sink writes rollups and table statistics.
CREATE ROLE fraiseql_sink_user LOGIN PASSWORD :'sink_password' IN ROLE fraiseql_collector;
-- The scheduler records analyses and runs retention (which drops partitions: maintainer).
CREATE ROLE fraiseql_scheduler_user LOGIN PASSWORD :'scheduler_password'
    IN ROLE fraiseql_scheduler, fraiseql_maintainer;
-- Grafana's PostgreSQL datasource only reads.
CREATE ROLE fraiseql_grafana LOGIN PASSWORD :'grafana_password' IN ROLE fraiseql_analyst;
SQL
