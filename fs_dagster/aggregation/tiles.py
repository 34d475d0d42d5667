"""Tiles: the time grid partial aggregates are kept on, and which tiles a window reads.

Tiles are aligned intervals ``[start, start + resolution)`` in whole seconds since the
epoch (UTC), at the resolutions of :data:`LADDER` (each divides the next).

**Which events a window includes.** Read at time ``t`` (microseconds), window ``W`` with
edge resolution ``r = edge_resolution(W)`` covers event times in ``[S, E)`` where

- ``E`` = the end of the second containing ``t`` (``floor(t / 1 s) + 1 s``), so every
  event up to and including ``t``'s second is in, and
- ``S`` = ``E - W`` rounded *up* to a multiple of ``r``.

So the window is exact to the second at its recent end and its far end sits on an
``r``-tile boundary: it spans between ``W - r`` and ``W`` seconds, never more than ``W``.
``r`` is the finest rung that divides ``W`` into at most :data:`MAX_EDGE_TILES` tiles
(1 s for windows up to 24 minutes, 1 min up to a day, 1 h up to 60 days, 1 day above).
``[S, E)`` is read as the fewest aligned tiles of the ladder that cover it exactly.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "LADDER",
    "MAX_EDGE_TILES",
    "TileIndex",
    "TileRange",
    "decompose",
    "edge_resolution",
    "read_ranges",
    "read_spans",
    "resolutions_for",
    "retention_seconds",
    "window_bounds",
]

#: Tile resolutions in seconds: 1 s, 1 min, 1 h, 1 day.
LADDER: tuple[int, ...] = (1, 60, 3600, 86400)
#: A window's far edge is aligned to the finest rung giving at most this many tiles.
MAX_EDGE_TILES = 1440


def edge_resolution(window_seconds: int) -> int:
    """The rung a window's far edge is aligned to (its imprecision is below one of these)."""
    for resolution in LADDER:
        if window_seconds % resolution == 0 and window_seconds // resolution <= MAX_EDGE_TILES:
            return resolution
    for resolution in reversed(LADDER):
        if window_seconds % resolution == 0:
            return resolution
    return 1


def resolutions_for(window_seconds: Iterable[int]) -> tuple[int, ...]:
    """The rungs whose tiles must be kept for these windows (all up to the longest)."""
    longest = max(window_seconds)
    return tuple(r for r in LADDER if r <= longest)


def window_bounds(window_seconds: int, at_micros: int) -> tuple[int, int]:
    """``(S, E)`` in seconds: the event times ``[S, E)`` window ``W`` covers at ``t``."""
    end = at_micros // 1_000_000 + 1
    resolution = edge_resolution(window_seconds)
    start = -((-(end - window_seconds)) // resolution) * resolution  # ceil to the rung
    return start, end


def decompose(start: int, end: int, resolutions: Sequence[int] = LADDER) -> list[tuple[int, int]]:
    """The fewest aligned tiles ``(resolution, tile_start)`` that cover ``[start, end)``.

    Greedy: from ``start``, take the largest rung aligned at the cursor that fits.
    """
    tiles: list[tuple[int, int]] = []
    cursor = start
    ordered = sorted(resolutions, reverse=True)
    while cursor < end:
        for resolution in ordered:
            if cursor % resolution == 0 and cursor + resolution <= end:
                tiles.append((resolution, cursor))
                cursor += resolution
                break
        else:  # pragma: no cover - 1 s is always in the ladder
            raise ValueError(f"no rung fits at {cursor}")
    return tiles


@lru_cache(maxsize=64)
def rung_parents(resolutions: tuple[int, ...]) -> Mapping[int, int | None]:
    """Each rung of ``resolutions``, finest first, with the next coarser one (``None``
    for the coarsest); computed once per ladder (a read indexes hundreds of keys' tiles
    over the same rungs)."""
    ordered = sorted(resolutions)
    return {r: next((c for c in ordered if c > r), None) for r in ordered}


class TileIndex:
    """The tiles stored for one key, to find those :func:`decompose` picks for a window.

    ``decompose`` lists every tile of a window, stored or not: hundreds of lookups for a
    long window with a fine edge, most of them misses for a sparse key. The index instead
    looks only at stored tiles: a tile ``(r, s)`` is one of the window's exactly when it
    lies inside ``[S, E)`` and its parent at the next coarser kept rung does not (rungs
    nest, so no coarser ancestor does either): the same tiles, found by bisection.
    """

    def __init__(self, tiles: Iterable[tuple[int, int]], resolutions: Sequence[int]) -> None:
        self._parent = rung_parents(tuple(resolutions))
        starts: dict[int, list[int]] = {r: [] for r in self._parent}
        for resolution, start in tiles:
            if resolution in starts:  # a rung the windows no longer use is never read
                starts[resolution].append(start)
        self._starts = {r: sorted(s) for r, s in starts.items() if s}

    def covering(self, start: int, end: int) -> list[tuple[int, int]]:
        """The stored tiles among ``decompose(start, end)``'s, as ``(resolution, start)``."""
        found: list[tuple[int, int]] = []
        for resolution, starts in self._starts.items():
            parent = self._parent[resolution]
            low = bisect_left(starts, start)
            high = bisect_right(starts, end - resolution)
            for tile in starts[low:high]:
                if parent is not None:
                    outer = tile - tile % parent
                    if outer >= start and outer + parent <= end:
                        continue  # the coarser tile covers it
                found.append((resolution, tile))
        return found


@dataclass(frozen=True)
class TileRange:
    """Tiles of one resolution to read: ``first <= tile_start <= last``."""

    resolution: int
    first: int
    last: int


def read_ranges(
    windows: Sequence[int], at_micros: int, resolutions: Sequence[int]
) -> tuple[dict[int, list[tuple[int, int]]], list[TileRange]]:
    """For each window, its tiles at ``at_micros``; and per resolution the range to read."""
    per_window: dict[int, list[tuple[int, int]]] = {}
    bounds: dict[int, tuple[int, int]] = {}
    for window in windows:
        start, end = window_bounds(window, at_micros)
        tiles = decompose(start, end, resolutions)
        per_window[window] = tiles
        for resolution, tile in tiles:
            low, high = bounds.get(resolution, (tile, tile))
            bounds[resolution] = (min(low, tile), max(high, tile))
    ranges = [TileRange(r, low, high) for r, (low, high) in sorted(bounds.items())]
    return per_window, ranges


def read_spans(
    windows: tuple[int, ...], at_micros: int, resolutions: tuple[int, ...]
) -> tuple[TileRange, ...]:
    """Per resolution, the range of tiles a read at ``at_micros`` needs.

    Cached by the second of ``at_micros``, the only part of it windows depend on (see
    :func:`window_bounds`): an online read asks twice (is any of them expired? then which
    to read), and reads in the same second (every read "now" of a busy server, a batch
    of keys, a replay's step) share it. Working it out lists every tile of every window,
    a sixth of a one-key read's time.
    """
    return _read_spans(windows, at_micros // 1_000_000, resolutions)


@lru_cache(maxsize=64)
def _read_spans(
    windows: tuple[int, ...], second: int, resolutions: tuple[int, ...]
) -> tuple[TileRange, ...]:
    return tuple(read_ranges(windows, second * 1_000_000, resolutions)[1])


def retention_seconds(resolution: int, windows: Sequence[int], lateness_seconds: int) -> int:
    """How long tiles of ``resolution`` must be kept (by tile start, behind the newest event).

    A tile serves the far edge of windows whose edge rung is at most its resolution (up
    to the window's age), and the recent end of every window down from the next coarser
    rung; late events may still update it for ``lateness_seconds``.
    """
    coarser = [r for r in LADDER if r > resolution]
    recent = coarser[0] if coarser else resolution
    far = max((w for w in windows if edge_resolution(w) <= resolution), default=0)
    return max(recent, far) + resolution + lateness_seconds
