"""SIGINT while Spark starts is held back and delivered once the session is up."""

from __future__ import annotations

import os
import signal

import pytest

from fs_dagster.orchestration.resources import interrupts_deferred

pytestmark = [pytest.mark.unit]


def test_an_interrupt_during_startup_arrives_after_it() -> None:
    reached_end_of_startup = False
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached_end_of_startup = True
    assert reached_end_of_startup
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_interrupt_no_side_effect() -> None:
    with interrupts_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
