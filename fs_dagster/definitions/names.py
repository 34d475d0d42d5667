"""Rules for the names users give to feature sets, sources and columns.

Names end up in table names, checkpoint paths, Dagster asset keys and SQL, so each rule
here is what every one of those places accepts.
"""

from __future__ import annotations

import re

__all__ = [
    "feature_set_name_problem",
    "identifier_problem",
    "storage_name",
]

_FEATURE_SET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_FEATURE_SET_NAME = 40


def feature_set_name_problem(name: object) -> str | None:
    """Return why ``name`` cannot name a feature set, or ``None`` if it can.

    A feature set name has letters, digits and hyphens, starts with a letter and has at
    most 40 characters.
    """
    if not isinstance(name, str) or not name:
        return "a feature set needs a non-empty name"
    if len(name) > MAX_FEATURE_SET_NAME:
        return f"'{name}' has {len(name)} characters; at most {MAX_FEATURE_SET_NAME} are allowed"
    if not _FEATURE_SET_NAME.match(name):
        return (
            f"'{name}' is not a valid name; use letters, digits and hyphens, "
            "starting with a letter (e.g. 'user-transactions')"
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
    """The name used for tables and directories of a feature set (hyphens become ``_``).

    Feature set names cannot contain underscores, so this is one-to-one.
    """
    return feature_set_name.replace("-", "_").lower()
