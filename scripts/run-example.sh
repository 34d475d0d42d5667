#!/usr/bin/env bash
# Set up and run the example project on the embedded defaults (file stream, SQLite
# online store, local offline store): opens the Dagster UI on http://127.0.0.1:3000.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh

export FS_DAGSTER_HOME="${FS_DAGSTER_HOME:-$ROOT/.fs_dagster}"
export DAGSTER_HOME="${DAGSTER_HOME:-$FS_DAGSTER_HOME/dagster_home}"
mkdir -p "$DAGSTER_HOME"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || : > "$DAGSTER_HOME/dagster.yaml"

# A first batch of demo events, so the online store fills as soon as ingestion starts;
# the demo_events schedule adds more every minute. (Loading the project also writes, the
# first time, the week of history user-spend is backfilled from: jobs/generator.py.)
.venv/bin/python -m jobs.generator --events 200

exec .venv/bin/dagster dev -m definitions -h "${FS_UI_HOST:-127.0.0.1}" -p "${FS_UI_PORT:-3000}"
