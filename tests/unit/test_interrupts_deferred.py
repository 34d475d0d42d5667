"""SIGINT while Spark starts is held back and delivered once the session is up."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from fs_dagster.orchestration.resources import interrupts_deferred

pytestmark = [pytest.mark.unit]


@pytest.fixture
def received() -> Iterator[list[int]]:
    """A SIGINT handler of the test's own (Spark may have installed one in this process)."""
    calls: list[int] = []

    def handler(number: int, _frame: FrameType | None) -> None:
        calls.append(number)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield calls
        assert signal.getsignal(signal.SIGINT) is handler  # restored after the block
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_during_startup_arrives_after_it(received: list[int]) -> None:
    with interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        held_back = list(received)
    assert held_back == []
    assert received == [signal.SIGINT]


def test_no_interrupt_no_side_effect(received: list[int]) -> None:
    with interrupts_deferred():
        pass
    assert received == []
