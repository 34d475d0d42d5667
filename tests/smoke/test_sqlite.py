"""Smoke test: a SQLite file round-trips a row (stdlib sqlite3, no services)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest


@pytest.mark.unit
def test_sqlite_file_round_trips_a_row(tmp_path: Path) -> None:
    path = tmp_path / "smoke.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE features (entity TEXT PRIMARY KEY, value REAL, ts TEXT)")
        conn.execute(
            "INSERT INTO features VALUES (?, ?, ?)", ("user-1", 0.25, "2024-01-01T00:00:00Z")
        )

    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT entity, value, ts FROM features").fetchall()

    assert rows == [("user-1", 0.25, "2024-01-01T00:00:00Z")]
