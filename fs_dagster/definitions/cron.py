"""Validation of the five-field cron expressions used for offline scheduling.

Dagster only reports a bad cron string when the schedule is evaluated; checking it here
makes the error appear at definition time, next to the feature set that declared it.
"""

from __future__ import annotations

import re

__all__ = ["cron_problem"]

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_FIELDS: tuple[tuple[str, int, int, list[str]], ...] = (
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day of month", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ALIASES = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
_ITEM = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?$")


def cron_problem(expression: str) -> str | None:
    """Return why ``expression`` is not a valid cron schedule, or ``None`` if it is.

    Example:
        >>> cron_problem("*/30 * * * *") is None
        True
        >>> cron_problem("61 * * * *")
        "minute field '61': 61 is outside 0-59"
    """
    if not isinstance(expression, str):
        return f"expected a cron string, got {type(expression).__name__}"
    text = expression.strip().lower()
    if text in _ALIASES:
        return None
    parts = text.split()
    if len(parts) != 5:
        return (
            f"'{expression}' has {len(parts)} fields; a cron schedule has 5 "
            "(minute hour day-of-month month day-of-week), e.g. '*/30 * * * *'"
        )
    for part, (label, low, high, names) in zip(parts, _FIELDS, strict=True):
        problem = _field_problem(part, low, high, names)
        if problem:
            return f"{label} field '{part}': {problem}"
    return None


def _field_problem(part: str, low: int, high: int, names: list[str]) -> str | None:
    for item in part.split(","):
        match = _ITEM.match(item)
        if match is None:
            return f"'{item}' is not a value, range, list or step"
        base, step = match.group(1), match.group(2)
        if step is not None and int(step) == 0:
            return "a step of 0 never fires"
        if base == "*":
            continue
        bounds = base.split("-")
        values: list[int] = []
        for bound in bounds:
            value = _value(bound, low, names)
            if value is None:
                return f"'{bound}' is not a number" + (" or a name" if names else "")
            if not low <= value <= high:
                return f"{value} is outside {low}-{high}"
            values.append(value)
        if len(values) == 2 and values[0] > values[1]:
            return f"range {base} runs backwards"
    return None


def _value(token: str, low: int, names: list[str]) -> int | None:
    if token.isdigit():
        return int(token)
    if token in names:
        return names.index(token) + low
    return None
