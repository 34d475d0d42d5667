#!/usr/bin/env bash
# Set up and run the whole test suite: ruff, mypy, then pytest against real Kafka,
# Cassandra and S3 servers started on 127.0.0.1 by scripts/services.sh.
# Extra arguments go to pytest (e.g. scripts/test.sh -m unit for the fast tests alone).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step_started=$SECONDS
took() { echo "    ($1 took $((SECONDS - step_started)) s)"; step_started=$SECONDS; }

scripts/setup.sh --test
took "setup: virtualenv, packages and Spark jars"

echo "==> starting Kafka, Cassandra and S3 on 127.0.0.1"
scripts/services.sh start
took "services"

echo "==> JVM class archive for the tests' short-lived Spark drivers (tests/jvm_archive.py)"
.venv/bin/python -m tests.jvm_archive
took "JVM class archive"

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
took "ruff and mypy"

echo "==> pytest"
status=0
.venv/bin/python -m pytest "$@" || status=$?
took "pytest"
exit "$status"
