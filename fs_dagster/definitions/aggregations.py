"""Declarations of event-time windowed aggregations.

Example:
    >>> (SparkSqlTransformation("SELECT user_id, amount, ts FROM tx")
    ...     .aggregate(Aggregation.avg("amount"))
    ...     .aggregate(Aggregation.boolean_or("is_remote").alias("had_remote"))
    ...     .by_windows("1 minute", "1 hour", "7 days"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import timedelta

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.names import identifier_problem

__all__ = [
    "BOOLEAN_FUNCTIONS",
    "MAX_WINDOW",
    "NUMERIC_FUNCTIONS",
    "AggregateSpec",
    "Aggregation",
    "Window",
    "parse_window",
]

MAX_WINDOW = timedelta(days=366)

#: Functions that need a numeric column.
NUMERIC_FUNCTIONS = frozenset(
    {
        "sum",
        "avg",
        "sample_variance",
        "sample_stdev",
        "population_variance",
        "population_stdev",
        "percentile",
    }
)
#: Functions that need a boolean column.
BOOLEAN_FUNCTIONS = frozenset({"boolean_or", "boolean_and"})


@dataclass(frozen=True)
class AggregateSpec:
    """One aggregate function over one column, before windows are applied.

    Attributes:
        function: ``sum``, ``count``, ``avg``, ``min``, ``max``, ``boolean_or``,
            ``boolean_and``, ``sample_variance``, ``sample_stdev``,
            ``population_variance``, ``population_stdev``, ``last_n``,
            ``last_distinct_n`` or ``percentile``.
        column: the transformation output column it aggregates.
        n: how many values ``last_n`` / ``last_distinct_n`` keep.
        p: the quantile of ``percentile``, in (0, 1).
        prefix: the alias given with :meth:`alias`, which replaces ``<agg>_<column>``.
    """

    function: str
    column: str
    n: int | None = None
    p: float | None = None
    prefix: str | None = None

    def alias(self, prefix: str) -> AggregateSpec:
        """Name the features ``<prefix>_<window>`` instead of ``<agg>_<column>_<window>``."""
        problem = identifier_problem(prefix, "alias")
        if problem:
            raise FeatureSetDefinitionError(None, "aggregate", problem)
        return replace(self, prefix=prefix)

    @property
    def function_label(self) -> str:
        """The aggregate's part of the feature name (``avg``, ``last_5``, ``p95``)."""
        if self.function == "last_n":
            return f"last_{self.n}"
        if self.function == "last_distinct_n":
            return f"last_distinct_{self.n}"
        if self.function == "percentile":
            assert self.p is not None
            return "p" + f"{self.p * 100:.10g}".replace(".", "_")
        return self.function

    def feature_name(self, window: Window) -> str:
        """The feature's name for ``window``."""
        if self.prefix:
            return f"{self.prefix}_{window.label}"
        return f"{self.function_label}_{self.column}_{window.label}"


def _column(function: str, column: object) -> str:
    problem = identifier_problem(column, "column")
    if problem:
        raise FeatureSetDefinitionError(None, "aggregate", f"Aggregation.{function}: {problem}")
    assert isinstance(column, str)
    return column


class Aggregation:
    """Factories of :class:`AggregateSpec`, one per aggregate function."""

    @staticmethod
    def sum(column: str) -> AggregateSpec:
        """Sum of the values (0 for an empty window)."""
        return AggregateSpec("sum", _column("sum", column))

    @staticmethod
    def count(column: str) -> AggregateSpec:
        """Number of non-null values (0 for an empty window)."""
        return AggregateSpec("count", _column("count", column))

    @staticmethod
    def avg(column: str) -> AggregateSpec:
        """Mean of the values."""
        return AggregateSpec("avg", _column("avg", column))

    @staticmethod
    def min(column: str) -> AggregateSpec:
        """Smallest value."""
        return AggregateSpec("min", _column("min", column))

    @staticmethod
    def max(column: str) -> AggregateSpec:
        """Largest value."""
        return AggregateSpec("max", _column("max", column))

    @staticmethod
    def boolean_or(column: str) -> AggregateSpec:
        """Whether any value is true."""
        return AggregateSpec("boolean_or", _column("boolean_or", column))

    @staticmethod
    def boolean_and(column: str) -> AggregateSpec:
        """Whether every value is true."""
        return AggregateSpec("boolean_and", _column("boolean_and", column))

    @staticmethod
    def sample_variance(column: str) -> AggregateSpec:
        """Sample variance (n - 1 in the denominator; null below two values)."""
        return AggregateSpec("sample_variance", _column("sample_variance", column))

    @staticmethod
    def sample_stdev(column: str) -> AggregateSpec:
        """Sample standard deviation."""
        return AggregateSpec("sample_stdev", _column("sample_stdev", column))

    @staticmethod
    def population_variance(column: str) -> AggregateSpec:
        """Population variance (n in the denominator)."""
        return AggregateSpec("population_variance", _column("population_variance", column))

    @staticmethod
    def population_stdev(column: str) -> AggregateSpec:
        """Population standard deviation."""
        return AggregateSpec("population_stdev", _column("population_stdev", column))

    @staticmethod
    def last_n(column: str, n: int) -> AggregateSpec:
        """The ``n`` most recent values by event time, newest first."""
        return AggregateSpec("last_n", _column("last_n", column), n=_count("last_n", n))

    @staticmethod
    def last_distinct_n(column: str, n: int) -> AggregateSpec:
        """The ``n`` most recent distinct values by event time, newest first."""
        return AggregateSpec(
            "last_distinct_n", _column("last_distinct_n", column), n=_count("last_distinct_n", n)
        )

    @staticmethod
    def percentile(column: str, p: float) -> AggregateSpec:
        """Approximate ``p`` quantile (``0 < p < 1``, or a percent such as 95).

        Computed from a DDSketch with 1% relative accuracy: the value returned is within
        1% of the exact quantile's value (see the README).
        """
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
            raise FeatureSetDefinitionError(
                None, "aggregate", f"percentile p={p!r} is not a number"
            )
        quantile = p / 100 if p >= 1 else float(p)
        if not 0 < quantile < 1:
            raise FeatureSetDefinitionError(
                None, "aggregate", f"percentile p={p!r} must be in (0, 1) or a percent in (1, 100)"
            )
        return AggregateSpec("percentile", _column("percentile", column), p=quantile)


def _count(function: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
        raise FeatureSetDefinitionError(
            None,
            "aggregate",
            f"Aggregation.{function}: n={n!r} must be a whole number from 1 to 1000",
        )
    return n


_WINDOW = re.compile(r"^\s*(\d+)\s*([a-zA-Z]+)\s*$")
_WINDOW_UNITS: dict[str, tuple[str, int]] = {
    **{u: ("s", 1) for u in ("s", "sec", "secs", "second", "seconds")},
    **{u: ("m", 60) for u in ("m", "min", "mins", "minute", "minutes")},
    **{u: ("h", 3600) for u in ("h", "hr", "hrs", "hour", "hours")},
    **{u: ("d", 86400) for u in ("d", "day", "days")},
    **{u: ("w", 604800) for u in ("w", "week", "weeks")},
}


@dataclass(frozen=True, order=True)
class Window:
    """A sliding window length and its short label (``"7d"``), in the unit written."""

    seconds: int
    label: str

    @property
    def duration(self) -> timedelta:
        """The window's length."""
        return timedelta(seconds=self.seconds)


def parse_window(text: object) -> Window:
    """Parse ``"30 seconds"``, ``"1 minute"``, ``"7 days"``, ``"2 weeks"``, ``"30s"``, ``"1h"``.

    Raises:
        ValueError: unparsable, zero, or longer than a year; the message says what is
            accepted.
    """
    match = _WINDOW.match(text) if isinstance(text, str) else None
    accepted = "use a whole number and a unit such as '30 seconds', '1 minute', '7d', '2w'"
    if match is None or match.group(2).lower() not in _WINDOW_UNITS:
        raise ValueError(f"window {text!r} is not a duration; {accepted}")
    amount = int(match.group(1))
    short, unit = _WINDOW_UNITS[match.group(2).lower()]
    if amount == 0:
        raise ValueError(f"window {text!r} is zero; a window lasts at least 1 second")
    window = Window(seconds=amount * unit, label=f"{amount}{short}")
    if window.duration > MAX_WINDOW:
        raise ValueError(f"window {text!r} is longer than {MAX_WINDOW.days} days")
    return window
