"""Parsing human durations such as ``"30 seconds"``, ``"7d"`` or ``"2 weeks"``.

Used for windows, TTLs and allowed lateness, so that every duration a user writes is
read by one parser with one error message.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["format_short", "parse_duration"]

_UNIT_SECONDS: dict[str, int] = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_SHORT_UNITS: tuple[tuple[str, int], ...] = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))
_PATTERN = re.compile(r"^\s*(\d+)\s*([a-zA-Z]+)\s*$")

ACCEPTED = (
    "a whole number and a unit, such as '30 seconds', '1 minute', '7 days', '30s', '1h', '2w'"
)


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """Return the duration ``value`` stands for.

    Accepts a :class:`~datetime.timedelta`, a number of seconds, or a string of a whole
    number and a unit (seconds, minutes, hours, days, weeks, singular, plural or the
    short forms ``s``, ``m``, ``h``, ``d``, ``w``).

    Raises:
        ValueError: ``value`` is not a duration; the message says what is accepted.

    Example:
        >>> parse_duration("7d")
        datetime.timedelta(days=7)
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; expected {ACCEPTED}")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    match = _PATTERN.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a duration; expected {ACCEPTED}")
    amount, unit = int(match.group(1)), match.group(2).lower()
    if unit not in _UNIT_SECONDS:
        raise ValueError(f"{value!r} has an unknown unit '{unit}'; expected {ACCEPTED}")
    return timedelta(seconds=amount * _UNIT_SECONDS[unit])


def format_short(duration: timedelta) -> str:
    """Render ``duration`` in the largest short unit that divides it (``"1m"``, ``"7d"``).

    Example:
        >>> format_short(timedelta(hours=2))
        '2h'
    """
    seconds = int(duration.total_seconds())
    for suffix, unit in _SHORT_UNITS:
        if seconds and seconds % unit == 0:
            return f"{seconds // unit}{suffix}"
    return f"{seconds}s"
