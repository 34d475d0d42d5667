"""``mapInArrow`` / ``mapInPandas`` whose Python function is built once, for jobs that
run every micro-batch.

``DataFrame.mapInArrow`` (and ``mapInPandas``) pickles its function, parses its schema,
builds the UDF in the JVM and hands it every column one call at a time, on every call:
15-25 ms of a 300-600 ms micro-batch on 2 cores. A writer that runs the same function
every batch builds it once with :func:`arrow_map_function` (:func:`pandas_map_function`)
and applies it with :func:`map_in_arrow` (:func:`map_in_pandas`). What changes from
batch to batch reaches the function as columns, not through its closure.

:func:`map_in_arrow` and :func:`map_in_pandas` call the one JVM method themselves, as
PySpark does; the online ingestion tests run them on the pinned PySpark. A writer's
function runs :func:`without_gc`, on the executors and in the driver
(:func:`map_in_driver`) alike.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.pandas.functions import pandas_udf
from pyspark.util import PythonEvalType

from fs_dagster.definitions.names import spark_identifier

__all__ = [
    "arrow_map_function",
    "map_in_arrow",
    "map_in_driver",
    "map_in_pandas",
    "pandas_map_function",
    "without_gc",
]

ArrowMap = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]
PandasMap = Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]


def _map_function(
    function: ArrowMap | PandasMap, schema_ddl: str, columns: Sequence[str], eval_type: int
) -> Column:
    udf: Any = pandas_udf(
        function,  # type: ignore[call-overload]
        returnType=schema_ddl,
        functionType=eval_type,
    )
    return udf(*[F.col(spark_identifier(c)) for c in columns])  # type: ignore[no-any-return]


def arrow_map_function(function: ArrowMap, schema_ddl: str, columns: Sequence[str]) -> Column:
    """``function`` as the UDF of a ``mapInArrow`` over DataFrames with ``columns``
    (in that order), returning rows of ``schema_ddl``."""
    return _map_function(function, schema_ddl, columns, PythonEvalType.SQL_MAP_ARROW_ITER_UDF)


def pandas_map_function(function: PandasMap, schema_ddl: str, columns: Sequence[str]) -> Column:
    """``function`` as the UDF of a ``mapInPandas`` over DataFrames with ``columns``
    (in that order), returning rows of ``schema_ddl``."""
    return _map_function(function, schema_ddl, columns, PythonEvalType.SQL_MAP_PANDAS_ITER_UDF)


def map_in_arrow(df: DataFrame, function: Column) -> DataFrame:
    """``df.mapInArrow`` of a function made by :func:`arrow_map_function` for exactly
    ``df``'s columns; no barrier, the default resource profile."""
    jdf: Any = df._jdf
    jc: Any = function._jc
    return DataFrame(jdf.mapInArrow(jc, False, None), df.sparkSession)


def map_in_driver(
    df: DataFrame, function: ArrowMap, constants: Mapping[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """The rows ``function`` returns over all of ``df``, brought to the driver as Arrow
    by one Spark job, as dicts: what collecting :func:`map_in_arrow` of the same function
    gives (one partition), without the round trip to the executors' Python workers.

    ``constants``: string columns of one value each, added to every row of ``df`` (what
    a ``select`` of literals would add, without planning it).
    """
    table = df.toArrow()
    for name, value in (constants or {}).items():
        table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    out = function(iter(table.to_batches()))
    return [row for batch in out for row in batch.to_pylist()]


def map_in_pandas(df: DataFrame, function: Column) -> DataFrame:
    """``df.mapInPandas`` of a function made by :func:`pandas_map_function` for exactly
    ``df``'s columns; no barrier, the default resource profile."""
    jdf: Any = df._jdf
    jc: Any = function._jc
    return DataFrame(jdf.mapInPandas(jc, False, None), df.sparkSession)


class _GcPause:
    """Cyclic garbage collection off while any :func:`without_gc` function runs in this
    process (the driver may run several writers' functions at once, on threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._was_enabled = False

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._was_enabled:
                gc.enable()


_GC_PAUSE = _GcPause()


def _pause_gc() -> None:
    # Module functions: a pickled function calls the worker's own pause, not a copy.
    _GC_PAUSE.enter()


def _resume_gc() -> None:
    _GC_PAUSE.leave()


def without_gc(function: ArrowMap) -> ArrowMap:
    """``function`` run with the cyclic garbage collector paused (in the executors' Python
    workers and in the driver alike).

    A writer's function makes a few small objects per row (the rows as dicts, the store's
    requests, the driver's futures); every 700 of them start a collection that walks the
    young objects, and up to every hundredth one the whole heap of a process that has
    imported PySpark, pandas and Arrow. Paused, merging 7,000 tiles into Cassandra took
    25% less CPU (0.31 against 0.42 s, medians, alternated in one process), a 3,750-event
    aggregated batch 1.34 against 1.45 s on the executors, a 500-event one 0.44 against
    0.49 s in the driver (``bench/README.md``, "Session 31"). What cycles the function
    leaves are collected once the collector runs again, after it.
    """

    def paused(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _pause_gc()
        try:
            yield from function(batches)
        finally:
            _resume_gc()

    return paused
