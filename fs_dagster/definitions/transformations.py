"""Row-level transformations: Spark SQL (optionally with pandas UDFs) or one pandas UDF."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

from fs_dagster.definitions.aggregations import AggregateSpec
from fs_dagster.definitions.names import identifier_problem
from fs_dagster.definitions.schema import Schema

__all__ = [
    "PandasUdf",
    "SparkSqlTransformation",
    "Transformation",
    "UdfTransformation",
    "pandas_udf",
    "sql_transformation_problem",
]


@dataclass(frozen=True)
class PandasUdf:
    """A pandas function with a declared output schema.

    Inside :class:`SparkSqlTransformation` it is a scalar function called by ``name`` in
    the SQL: it receives one ``pandas.Series`` per argument and returns a ``Series`` (one
    output column) or a ``DataFrame`` (several columns, seen in SQL as a struct).
    Inside :class:`UdfTransformation` it receives a whole ``pandas.DataFrame`` of source
    rows and returns a ``DataFrame`` with exactly the output schema's columns.
    """

    function: Callable[..., Any]
    output_schema: Schema
    name: str


def pandas_udf(
    output_schema: Schema, name: str | None = None
) -> Callable[[Callable[..., Any]], PandasUdf]:
    """Declare a pandas function and the schema of what it returns.

    Example:
        >>> @pandas_udf(output_schema=Schema([Column(name="cents", type=Type.long)]))
        ... def to_cents(amount: pd.Series) -> pd.Series:
        ...     return (amount * 100).round().astype("int64")
        >>> SparkSqlTransformation("SELECT user_id, to_cents(amount) AS cents, ts FROM tx",
        ...                        functions=[to_cents])  # doctest: +SKIP
    """

    def wrap(function: Callable[..., Any]) -> PandasUdf:
        if not isinstance(output_schema, Schema) or not output_schema.columns:
            raise TypeError(
                f"pandas_udf '{getattr(function, '__name__', function)}': output_schema must "
                "be a Schema with at least one Column"
            )
        udf_name = name or function.__name__
        problem = identifier_problem(udf_name, "function name")
        if problem:
            raise TypeError(f"pandas_udf: {problem}")
        return PandasUdf(function=function, output_schema=output_schema, name=udf_name)

    return wrap


class _Aggregatable:
    """``.aggregate(...)`` and ``.by_windows(...)``, shared by both transformations."""

    aggregations: tuple[AggregateSpec, ...]
    windows: tuple[str, ...]

    def aggregate(self, aggregation: AggregateSpec) -> Self:
        """Add an event-time aggregate (chainable); windows come from :meth:`by_windows`."""
        if not isinstance(aggregation, AggregateSpec):
            raise TypeError(
                f"aggregate() takes Aggregation.<fn>(column), got {type(aggregation).__name__}"
            )
        return replace(self, aggregations=(*self.aggregations, aggregation))  # type: ignore[type-var]

    def by_windows(self, *windows: str) -> Self:
        """Compute every aggregate over each of these sliding windows (``"1m"``, ``"7 days"``).

        One string may list several windows separated by commas, as in the JFrog ML API:
        ``by_windows("1 minute, 1 hour")`` is ``by_windows("1 minute", "1 hour")``.
        """
        listed = tuple(
            part.strip()
            for text in windows
            for part in (text.split(",") if isinstance(text, str) else [text])
        )
        return replace(self, windows=(*self.windows, *listed))  # type: ignore[type-var]

    @property
    def is_aggregated(self) -> bool:
        """Whether the transformation declares aggregations."""
        return bool(self.aggregations or self.windows)


@dataclass(frozen=True)
class SparkSqlTransformation(_Aggregatable):
    """A Spark SQL query over the feature set's sources, each read by its name.

    A source is read by its name with ``-`` turned into ``_``: ``FROM
    sample_streaming_source`` reads the source named ``sample-streaming-source``.

    Attributes:
        sql: one ``SELECT`` statement; it must produce the key and timestamp columns.
        functions: pandas UDFs the SQL calls by name.
        aggregations: event-time aggregates added with :meth:`aggregate`.
        windows: their windows, added with :meth:`by_windows`.
    """

    sql: str
    functions: Sequence[PandasUdf] = ()
    aggregations: tuple[AggregateSpec, ...] = ()
    windows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(self.functions))


@dataclass(frozen=True)
class UdfTransformation(_Aggregatable):
    """A whole-DataFrame pandas function applied to the feature set's one source.

    The function gets a ``pandas.DataFrame`` of source rows (value columns and, for Kafka,
    the metadata columns) and returns rows with exactly its ``output_schema``, which must
    include the key and timestamp columns.
    """

    function: PandasUdf
    aggregations: tuple[AggregateSpec, ...] = ()
    windows: tuple[str, ...] = ()


Transformation = SparkSqlTransformation | UdfTransformation


def sql_transformation_problem(transformation: SparkSqlTransformation) -> str | None:
    """Return why ``transformation`` cannot run, or ``None``: empty SQL, two UDFs one name.

    What only Spark can tell (syntax, columns) is checked when the SQL is analysed.
    """
    if not isinstance(transformation.sql, str) or not transformation.sql.strip():
        return "the SQL of SparkSqlTransformation is empty"
    udf_names = [f.name for f in transformation.functions]
    if len(set(udf_names)) != len(udf_names):
        return f"two functions share a name: {udf_names}"
    return None
