#!/usr/bin/env bash
# Create .venv and install fs-dagster (with the test extra when asked), then fetch
# Spark's connector jars. Idempotent: a second run only checks.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   with the test tools (pytest, ruff, mypy, moto)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY' || { echo "fs-dagster needs Python 3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY
command -v java >/dev/null || { echo "fs-dagster needs Java 17 (java not found)" >&2; exit 1; }
command -v mvn >/dev/null || { echo "fs-dagster needs Maven to fetch jars (mvn not found)" >&2; exit 1; }

extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

stamp=".venv/.fs-dagster-installed${extra:+-test}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing fs-dagster${extra} into .venv"
  .venv/bin/pip install -q -e ".${extra}"
  touch "$stamp"
fi

echo "==> fetching Spark connector jars (Kafka, s3a, Delta)"
scripts/services.sh fetch spark
