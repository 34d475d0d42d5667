"""Smoke test: the local Cassandra node stores and returns a row via prepared statements."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cassandra.cluster import Session

pytestmark = [pytest.mark.cassandra, pytest.mark.slow]


def test_prepared_insert_and_select_round_trip(
    cassandra_session: Session, cassandra_keyspace: str
) -> None:
    table = f"{cassandra_keyspace}.smoke_features"
    cassandra_session.execute(
        f"CREATE TABLE {table} (entity text PRIMARY KEY, value double, updated_at timestamp)"
    )
    updated_at = dt.datetime(2024, 1, 2, 3, 4, 5, 678000)  # ms precision, naive UTC
    insert = cassandra_session.prepare(
        f"INSERT INTO {table} (entity, value, updated_at) VALUES (?, ?, ?)"
    )
    cassandra_session.execute(insert, ("user-1", 0.5, updated_at))

    select = cassandra_session.prepare(
        f"SELECT entity, value, updated_at FROM {table} WHERE entity = ?"
    )
    row = cassandra_session.execute(select, ("user-1",)).one()

    assert row is not None
    assert (row.entity, row.value, row.updated_at) == ("user-1", 0.5, updated_at)
