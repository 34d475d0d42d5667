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

# The JVM class archive needs neither the servers nor the linters: it is recorded while
# they run (a local Spark ingestion, about a minute on 2 cores).
echo "==> JVM class archive for the tests' short-lived Spark drivers (tests/jvm_archive.py), in the background"
archive_log="$(mktemp)"
.venv/bin/python -m tests.jvm_archive >"$archive_log" 2>&1 &
archive_pid=$!
trap 'kill "$archive_pid" 2>/dev/null || true' EXIT

echo "==> starting Kafka, Cassandra and S3 on 127.0.0.1"
scripts/services.sh start
took "services"

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
took "ruff and mypy"

archive_status=0
wait "$archive_pid" || archive_status=$?
trap - EXIT
cat "$archive_log"
rm -f "$archive_log"
if [ "$archive_status" -ne 0 ]; then
    echo "recording the JVM class archive failed (exit $archive_status)" >&2
    exit "$archive_status"
fi
took "JVM class archive (what was left of it)"

# Two pytest workers (pytest-xdist), a test file at a time each: alone, the suite leaves
# the cores idle almost half of the time (drivers starting, sensors ticking, services
# answering). FS_TEST_WORKERS sets another count; 0 runs everything in this process.
workers="${FS_TEST_WORKERS:-2}"
echo "==> pytest ($workers workers)"
status=0
if [ "$workers" = "0" ]; then
    .venv/bin/python -m pytest --durations=15 "$@" || status=$?
else
    .venv/bin/python -m pytest -n "$workers" --dist loadfile --durations=15 "$@" || status=$?
fi
took "pytest"
exit "$status"
