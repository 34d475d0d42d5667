"""Fixtures of the Dagster tests: a real ``dagster dev`` (see ``dagster_dev.py``)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.dagster.dagster_dev import (
    REPO,
    VENV_BIN,
    DagsterDev,
    Proc,
    descendants,
    free_port,
    popen_stoppable,
    processes,
    signal_all,
    stop_group,
    wait_gone,
)


@pytest.fixture
def start_dagster_dev(
    tmp_path: Path, spark_jars: tuple[str, ...]
) -> Iterator[Callable[..., DagsterDev]]:
    """``start(env, module="definitions")`` runs ``dagster dev -m <module>``.

    Everything is stopped afterwards, and nothing a ``dagster dev`` started may outlive
    it: neither its process group nor any descendant in another group (Spark's Python
    workers make groups of their own).
    """
    assert spark_jars  # the example project reads them from .services/spark/lib
    started: list[subprocess.Popen[Any]] = []
    logs: list[IO[bytes]] = []

    def start(env: dict[str, str], module: str = "definitions") -> DagsterDev:
        port = free_port()
        log = tmp_path / f"dagster_dev_{len(started) + 1}.log"
        out: IO[bytes] = log.open("wb")
        logs.append(out)
        process = popen_stoppable(
            [str(VENV_BIN / "dagster"), "dev", "-m", module, "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return DagsterDev(process, port, log)

    try:
        yield start
    finally:
        left: list[Proc] = []
        for process in started:
            everything = {p.pid: p for p in processes() if p.pgid == process.pid}
            everything.update({p.pid: p for p in descendants(process.pid)})
            try:
                stop_group(process, grace=30)
            finally:
                # Processes killed a moment ago may still be exiting.
                survivors = wait_gone(list(everything.values()), timeout=15)
                survivors += [
                    p for p in processes() if p.pgid == process.pid and p.pid not in everything
                ]
                signal_all(survivors, signal.SIGKILL)
                wait_gone(survivors, timeout=10)
                left += survivors
        for out in logs:
            out.close()
        assert not left, f"processes of dagster dev were left running: {[str(p) for p in left]}"
