#!/usr/bin/env bash
# Install (if missing) and start a local PostgreSQL server with a test database,
# then print the SQLAlchemy URL of that database on stdout.
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version="$(ls /usr/lib/postgresql | sort -n | tail -1)"
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 || true
for _ in $(seq 1 30); do
    if su postgres -c "pg_isready -q -h 127.0.0.1"; then break; fi
    sleep 1
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='pipeline_manager'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE pipeline_manager LOGIN SUPERUSER PASSWORD 'pipeline_manager'\"" >&2
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='pipeline_manager_test'\"" | grep -q 1 \
    || su postgres -c "createdb -O pipeline_manager pipeline_manager_test" >&2
# The postgres transport's tests write their sink tables into a database of their own.
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='pipeline_manager_sinks'\"" | grep -q 1 \
    || su postgres -c "createdb -O pipeline_manager pipeline_manager_sinks" >&2
echo "postgresql+psycopg://pipeline_manager:pipeline_manager@127.0.0.1:5432/pipeline_manager_test"
