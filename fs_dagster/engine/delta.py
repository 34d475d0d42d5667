"""The one idempotent Delta write every offline destination goes through.

Two ways to make a write safe to repeat:

- **append once per version** (streaming runs): the write carries Delta's ``txnAppId``
  and ``txnVersion``; Delta skips a transaction whose version that app id has already
  committed, so a micro-batch replayed after a crash lands once;
- **replace a range** (backfill and batch runs): the write overwrites exactly the rows
  matching a predicate (``replaceWhere``), so running the same range again gives the
  same table, with no duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame

__all__ = ["AppendOnce", "ReplaceRange", "WriteMode", "write_delta"]


@dataclass(frozen=True)
class AppendOnce:
    """Append, skipped by Delta if ``app_id`` already committed ``version``.

    Attributes:
        app_id: stable across restarts of one writer (the streaming query id plus the
            destination).
        version: grows with every write of that writer (the micro-batch id).
    """

    app_id: str
    version: int

    def __post_init__(self) -> None:
        if not self.app_id or self.app_id.startswith("None"):
            raise ValueError(f"a Delta append needs a stable app id, got {self.app_id!r}")


@dataclass(frozen=True)
class ReplaceRange:
    """Overwrite the rows matching ``predicate`` (a SQL condition) with the written rows.

    Every written row must match the predicate; Delta refuses the write otherwise.
    """

    predicate: str


WriteMode = AppendOnce | ReplaceRange


def write_delta(
    df: DataFrame,
    path: str,
    mode: WriteMode,
    *,
    partition_by: Sequence[str] = (),
    merge_schema: bool = False,
) -> None:
    """Write ``df`` to the Delta table at ``path`` (created if missing) idempotently."""
    writer = df.write.format("delta")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if isinstance(mode, AppendOnce):
        writer = (
            writer.mode("append").option("txnAppId", mode.app_id).option("txnVersion", mode.version)
        )
    else:
        writer = writer.mode("overwrite").option("replaceWhere", mode.predicate)
    writer.save(path)
