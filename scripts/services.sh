#!/usr/bin/env bash
# Local Kafka, Cassandra and S3 for fs-dagster: see scripts/services.py.
# Usage: scripts/services.sh fetch|start|stop|status|spark-jars [service ...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
  exec "$ROOT/.venv/bin/python" "$ROOT/scripts/services.py" "$@"
fi
exec python3 "$ROOT/scripts/services.py" "$@"
