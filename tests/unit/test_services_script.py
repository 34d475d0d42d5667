"""scripts/services.py starts a service once more when its process dies before it is ready.

Real processes, no servers: a tiny Python "service" that kills itself on its first launch
(as a JVM killed in its first seconds does, with no output) and stays up on the second.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.py"

# First launch: SIGKILL itself. Later launches: write "ready" and sleep until stopped.
SERVICE_PROGRAM = """
import os, pathlib, signal, sys, time
home = pathlib.Path.cwd()
launches = home / "launches"
count = int(launches.read_text()) + 1 if launches.exists() else 1
launches.write_text(str(count))
if count <= int(sys.argv[1]):
    os.kill(os.getpid(), signal.SIGKILL)
if len(sys.argv) > 2:
    os.chdir(sys.argv[2])  # its /proc entry no longer names the service's directory
    time.sleep(1)  # and it is not ready at once
(home / "ready").write_text("yes")
time.sleep(120)
"""


@pytest.fixture(scope="module")
def services() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fs_services_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def layout(services: ModuleType, tmp_path: Path) -> Iterator[object]:
    # Named after a real service only because readiness is reported with its port.
    layout = services.Layout(tmp_path, "s3")
    yield layout
    services.terminate(layout)


def start(
    services: ModuleType, layout: object, deaths: int, *, move_to: Path | None = None
) -> tuple[object, list[str]]:
    home = layout.home  # type: ignore[attr-defined]
    home.mkdir(parents=True, exist_ok=True)
    extra = [str(move_to)] if move_to is not None else []
    spec = services.Service(
        "s3",
        20.0,
        lambda _layout, _ports: [sys.executable, "-c", SERVICE_PROGRAM, str(deaths), *extra],
        lambda _ports: (home / "ready").exists(),
    )
    pid, started = services.launch(spec, layout, None)
    pending = services.Pending(spec, layout, pid, started, started + spec.timeout())
    return pending, services.wait_all_ready([pending], services.Ports.from_env())


def test_a_process_killed_during_startup_is_started_once_more(
    services: ModuleType, layout: object, capsys: pytest.CaptureFixture[str]
) -> None:
    pending, failures = start(services, layout, deaths=1)

    assert failures == []
    assert (layout.home / "launches").read_text() == "2"  # type: ignore[attr-defined]
    assert services.running_pid(layout) == pending.pid  # type: ignore[attr-defined]
    said = capsys.readouterr()
    out = said.out + said.err
    assert "s3: the process exited during startup (killed by SIGKILL)" in out
    assert "starting it once more" in out


def test_a_second_death_fails_with_the_exit_status(
    services: ModuleType, layout: object, capsys: pytest.CaptureFixture[str]
) -> None:
    _pending, failures = start(services, layout, deaths=2)

    assert (layout.home / "launches").read_text() == "2"  # type: ignore[attr-defined]
    assert len(failures) == 1
    assert failures[0].startswith("s3: the process exited during startup (killed by SIGKILL)")
    assert services.running_pid(layout) is None


def test_a_live_child_is_not_started_again_when_its_proc_entry_does_not_match(
    services: ModuleType, layout: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The /proc check of a process started by an earlier command (its working directory)
    # can fail for a child just launched; a child is asked with waitpid instead. Before,
    # a Kafka JVM taken for dead this way got a second broker on the same log directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    pending, failures = start(services, layout, deaths=0, move_to=elsewhere)

    assert failures == []
    assert (layout.home / "launches").read_text() == "1"  # type: ignore[attr-defined]
    said = capsys.readouterr()
    assert "starting it once more" not in said.out + said.err
    services.os.kill(pending.pid, services.signal.SIGTERM)  # type: ignore[attr-defined]
    services.os.waitpid(pending.pid, 0)  # type: ignore[attr-defined]
