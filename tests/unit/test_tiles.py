"""Which tiles a window reads: the index over stored tiles agrees with the decomposition."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs_dagster.aggregation.tiles import (
    LADDER,
    TileIndex,
    decompose,
    read_spans,
    resolutions_for,
    window_bounds,
)

pytestmark = [pytest.mark.unit]

DAY = 86_400
WINDOWS = st.sampled_from([10, 60, 90, 600, 3_600, 5_400, DAY, 7 * DAY, 30 * DAY, 90 * DAY])


@st.composite
def stored_tiles(draw: st.DrawFn) -> tuple[list[int], set[tuple[int, int]], int]:
    """Windows, the tiles a key's events (around a read time) fill, and that read time."""
    windows = draw(st.lists(WINDOWS, min_size=1, max_size=4, unique=True))
    at = draw(st.integers(min_value=1_700_000_000, max_value=1_800_000_000))
    ages = draw(st.lists(st.integers(min_value=-5, max_value=100 * DAY), max_size=60))
    tiles = {(r, (at - age) // r * r) for age in ages for r in resolutions_for(windows)}
    return windows, tiles, at


@settings(max_examples=400, deadline=None)
@given(stored_tiles(), st.integers(min_value=0, max_value=999_999))
def test_index_finds_exactly_the_stored_tiles_of_the_decomposition(
    case: tuple[list[int], set[tuple[int, int]], int], micros: int
) -> None:
    windows, tiles, at = case
    resolutions = resolutions_for(windows)
    index = TileIndex(tiles, resolutions)
    for window in windows:
        start, end = window_bounds(window, at * 1_000_000 + micros)
        expected = {t for t in decompose(start, end, resolutions) if t in tiles}
        assert set(index.covering(start, end)) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.lists(WINDOWS, min_size=1, max_size=4, unique=True),
    st.integers(min_value=-2_000_000_000, max_value=2_000_000_000),
    st.integers(min_value=0, max_value=999_999),
    st.integers(min_value=0, max_value=999_999),
)
def test_spans_cached_by_the_second_are_those_of_the_exact_read_time(
    windows: list[int], second: int, first: int, then: int
) -> None:
    resolutions = resolutions_for(windows)
    expected: dict[int, tuple[int, int]] = {}
    for window in windows:
        start, end = window_bounds(window, second * 1_000_000 + then)
        for resolution, tile in decompose(start, end, resolutions):
            low, high = expected.get(resolution, (tile, tile))
            expected[resolution] = (min(low, tile), max(high, tile))
    # Reads in the second before (other spans) and earlier in the same second fill the
    # cache first.
    read_spans(tuple(windows), (second - 1) * 1_000_000 + first, resolutions)
    read_spans(tuple(windows), second * 1_000_000 + first, resolutions)
    spans = read_spans(tuple(windows), second * 1_000_000 + then, resolutions)
    assert {s.resolution: (s.first, s.last) for s in spans} == expected


def test_index_ignores_rungs_the_windows_do_not_use() -> None:
    # A 1-hour window keeps 1 s, 1 min and 1 h tiles; a stray day tile is never read.
    index = TileIndex({(DAY, 0), (3_600, 0), (60, 3_600)}, resolutions_for([3_600]))
    assert index.covering(0, DAY) == [(3_600, 0)]
    assert set(index.covering(0, 2 * 3_600)) == {(3_600, 0)}
    assert index.covering(60, 3_600 + 120) == [(60, 3_600)]
    assert LADDER[-1] == DAY
