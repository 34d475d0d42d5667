#!/usr/bin/env bash
# Set up and run the whole test suite: ruff, mypy, then pytest against real Kafka,
# Cassandra and S3 servers started on 127.0.0.1 by scripts/services.sh.
# Extra arguments go to pytest (e.g. scripts/test.sh -m unit for the fast tests alone).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh --test

echo "==> starting Kafka, Cassandra and S3 on 127.0.0.1"
scripts/services.sh start

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
