"""Online stores: the latest feature vector per key, by event time."""

from fs_dagster.stores.online.base import OnlineColumn, OnlineStore, OnlineTable
from fs_dagster.stores.online.cassandra import CassandraOnlineStore
from fs_dagster.stores.online.sqlite import SqliteOnlineStore

__all__ = [
    "CassandraOnlineStore",
    "OnlineColumn",
    "OnlineStore",
    "OnlineTable",
    "SqliteOnlineStore",
]
