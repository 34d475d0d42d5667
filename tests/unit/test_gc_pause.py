"""``without_gc``: the collector is paused while a writer's function runs, and comes back
as it was, whatever the function does and however many run at once."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from fs_dagster.engine.arrow_map import ArrowMap, without_gc

COUNTS = pa.schema([("enabled", pa.bool_())])


def _reporting(
    started: threading.Event | None = None, go: threading.Event | None = None
) -> ArrowMap:
    """A writer's function that reports whether the collector ran while it did."""

    def function(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for _ in batches:
            pass
        if started is not None and go is not None:
            started.set()
            assert go.wait(10)
        yield pa.RecordBatch.from_pydict({"enabled": [gc.isenabled()]}, schema=COUNTS)

    return function


def _run(function: ArrowMap) -> bool:
    out = list(function(iter([pa.RecordBatch.from_pydict({"x": [1]})])))
    return bool(out[0].column(0)[0].as_py())


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_paused_while_the_function_runs_and_back_after() -> None:
    assert _run(without_gc(_reporting())) is False
    assert gc.isenabled()


def test_back_after_the_function_fails() -> None:
    def failing(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        assert not gc.isenabled()
        raise RuntimeError("store down")
        yield  # pragma: no cover

    with pytest.raises(RuntimeError, match="store down"):
        list(without_gc(failing)(iter([])))
    assert gc.isenabled()


def test_left_off_when_it_was_off() -> None:
    gc.disable()
    assert _run(without_gc(_reporting())) is False
    assert not gc.isenabled()


def test_paused_until_the_last_of_concurrent_functions_ends() -> None:
    started, go = threading.Event(), threading.Event()
    results: list[bool] = []
    slow = threading.Thread(
        target=lambda: results.append(_run(without_gc(_reporting(started, go))))
    )
    slow.start()
    assert started.wait(10)
    # A second function ends while the first still runs: the collector stays paused.
    assert _run(without_gc(_reporting())) is False
    assert not gc.isenabled()
    go.set()
    slow.join(10)
    assert results == [False]
    assert gc.isenabled()
