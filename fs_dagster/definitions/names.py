"""Rules for the names users give to feature sets, sources and columns.

Names end up in table names, checkpoint paths, Dagster asset keys and SQL, so each rule
here is what every one of those places accepts (after :func:`storage_name` or
:func:`sql_view_name` where a name needs it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "feature_set_name_problem",
    "identifier_problem",
    "source_name_problem",
    "spark_identifier",
    "sql_view_name",
    "storage_name",
    "view_name_collision",
]

_FEATURE_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_SOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FEATURE_SET_NAME = 40


def feature_set_name_problem(name: object) -> str | None:
    """Return why ``name`` cannot name a feature set, or ``None`` if it can.

    A feature set name has letters, digits, hyphens and underscores, starts with a letter
    and has at most 40 characters (``user-transactions``, ``my_streaming_agg_fs``).
    """
    if not isinstance(name, str) or not name:
        return "a feature set needs a non-empty name"
    if len(name) > MAX_FEATURE_SET_NAME:
        return f"'{name}' has {len(name)} characters; at most {MAX_FEATURE_SET_NAME} are allowed"
    if not _FEATURE_SET_NAME.match(name):
        return (
            f"'{name}' is not a valid name; use letters, digits, hyphens and underscores, "
            "starting with a letter (e.g. 'user-transactions' or 'user_transactions')"
        )
    return None


def source_name_problem(name: object) -> str | None:
    """Return why ``name`` cannot name a source, or ``None`` if it can.

    A source name has letters, digits, underscores and hyphens and does not start with a
    digit or a hyphen (``transactions``, ``sample-streaming-source``). SQL reads the
    source by :func:`sql_view_name` of it.
    """
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        return (
            f"source name {name!r} is not valid; use letters, digits, underscores and "
            "hyphens, starting with a letter or an underscore"
        )
    return None


def identifier_problem(name: object, what: str = "name") -> str | None:
    """Return why ``name`` is not a SQL identifier (letters, digits, underscores)."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        return (
            f"{what} {name!r} is not valid; use letters, digits and underscores, "
            "not starting with a digit"
        )
    return None


def storage_name(feature_set_name: str) -> str:
    """The name used for tables and directories of a feature set (lowercase, ``-`` → ``_``).

    ``user-spend`` and ``user_spend`` share one storage name, so two such feature sets
    cannot be defined together (``build_definitions`` rejects them).
    """
    return feature_set_name.replace("-", "_").lower()


def sql_view_name(source_name: str) -> str:
    """The name a transformation's SQL reads a source by (``-`` → ``_``).

    Example:
        >>> sql_view_name("sample-streaming-source")
        'sample_streaming_source'
    """
    return source_name.replace("-", "_")


def spark_identifier(name: str) -> str:
    """``name`` quoted for Spark SQL, so that dots or hyphens in it are not read as a
    struct field or an operator.

    Example:
        >>> spark_identifier("user-spend.sum_amount_1h")
        '`user-spend.sum_amount_1h`'
    """
    return "`" + name.replace("`", "``") + "`"


def view_name_collision(source_names: Iterable[str]) -> str | None:
    """Return why these sources cannot be read in one SQL query, or ``None`` if they can.

    Two sources collide when their :func:`sql_view_name` differ only in case, because
    Spark resolves view names case-insensitively.
    """
    seen: dict[str, str] = {}
    for name in source_names:
        view = sql_view_name(name).lower()
        other = seen.get(view)
        if other is not None and other != name:
            return (
                f"sources '{other}' and '{name}' would both be read in SQL as "
                f"'{sql_view_name(other)}' (view names ignore case); rename one of them"
            )
        seen[view] = name
    return None
