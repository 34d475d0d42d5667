"""Shared pytest configuration: service fixtures live in tests/fixtures/services.py."""

import os

import pytest

from tests import jvm_archive

pytest_plugins = ["tests.fixtures.services"]


def pytest_configure(config: pytest.Config) -> None:
    """Every JVM the tests start (the session's Spark too) loads classes from the archive
    ``scripts/test.sh`` records; see ``tests/jvm_archive.py``."""
    options = jvm_archive.java_options()
    if options:
        current = os.environ.get("JAVA_TOOL_OPTIONS", "")
        os.environ["JAVA_TOOL_OPTIONS"] = f"{current} {options}".strip()
