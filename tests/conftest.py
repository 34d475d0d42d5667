"""Shared pytest configuration: service fixtures live in tests/fixtures/services.py."""

import os

import pytest

from tests import jvm_archive

pytest_plugins = ["tests.fixtures.services"]

#: Test files of one to four minutes each (``--durations``), started first: with two
#: xdist workers (``scripts/test.sh``) a long file started last runs alone at the end.
#: Longest first; every other file keeps its place after them.
LONGEST_FIRST = (
    "tests/dagster/test_dagster_dev.py",
    "tests/integration/test_crash_restart.py",
    "tests/integration/test_aggregation_behaviour.py",
    "tests/dagster/test_sensor_restarts_aggregation.py",
    "tests/integration/test_sinks.py",
    "tests/integration/test_aggregations.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Every JVM the tests start (the session's Spark too) loads classes from the archive
    ``scripts/test.sh`` records; see ``tests/jvm_archive.py``."""
    options = jvm_archive.java_options()
    if options:
        current = os.environ.get("JAVA_TOOL_OPTIONS", "")
        os.environ["JAVA_TOOL_OPTIONS"] = f"{current} {options}".strip()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the files of :data:`LONGEST_FIRST` first, in that order (a stable sort)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath

    def position(item: pytest.Item) -> int:
        return rank.get(item.path.relative_to(root).as_posix(), len(rank))

    items.sort(key=position)
