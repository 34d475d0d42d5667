"""The peers' virtual environments and how a peer script is run in one.

Each peer gets its own environment under ``bench/.peers/<name>/`` (git-ignored), made
with the interpreter running the bench (``python -m venv``) and filled by its ``pip``
with the pinned requirements below. Setting up is idempotent: an environment whose
``requirements.txt`` equals the wanted one is reused as it is.

Example:
    >>> python = ensure_env("feast")  # doctest: +SKIP
    >>> result = run_peer("feast", "feast_peer.py", ["offline", ...])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, process_tree_rss
from bench.peers import RESULT_PREFIX

log = logging.getLogger("bench.peers")

PEERS_DIR = REPO / "bench" / ".peers"
SCRIPTS_DIR = Path(__file__).resolve().parent

#: Pinned requirements of each peer environment. DuckDB comes with ``feast[duckdb]``
#: (its DuckDB offline store) and also serves the raw ``ASOF`` join.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "feast": ("feast[duckdb]==0.67.*",),
    "quix": ("quixstreams>=3.28,<4",),
}


def env_python(name: str) -> Path:
    return PEERS_DIR / name / "bin" / "python"


def ensure_env(name: str) -> Path:
    """Create (or reuse) the environment of peer ``name``; returns its interpreter."""
    root = PEERS_DIR / name
    marker = root / "requirements.txt"
    wanted = "\n".join(REQUIREMENTS[name]) + "\n"
    if env_python(name).exists() and marker.exists() and marker.read_text() == wanted:
        return env_python(name)
    log.info("setting up the %s environment in %s (a few minutes)", name, root)
    if not env_python(name).exists():
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run(
        [str(root / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS[name]], check=True
    )
    marker.write_text(wanted)
    return env_python(name)


def installed_versions(name: str, packages: tuple[str, ...]) -> dict[str, str]:
    """Versions of ``packages`` in peer ``name``'s environment (for the results)."""
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    output = subprocess.run(
        [str(env_python(name)), "-c", code, *packages],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions: dict[str, str] = json.loads(output)
    return versions


@dataclass
class PeerRun:
    """What a peer script printed, how long its process lived and its peak memory."""

    result: dict[str, Any]
    process_seconds: float
    peak_tree_bytes: int


def run_peer(env: str, script: str, args: list[str], timeout: float = 3600) -> PeerRun:
    """Run ``bench/peers/<script>`` under peer ``env``'s interpreter and parse its result.

    The resident memory of the script's process tree is sampled every 0.25 s (as
    :class:`bench.common.PeakMemory` does for the bench's own process); the peer's own
    ``getrusage`` peak would not do: Linux carries the forking bench's peak across exec.
    Its stderr goes to the bench's stderr; a non-zero exit or a missing result line raises.
    """
    command = [str(env_python(env)), str(SCRIPTS_DIR / script), *args]
    log.info("peer %s: %s", env, " ".join([script, *args]))
    began = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.25):
            peak = max(peak, process_tree_rss(process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise TimeoutError(f"peer {env} {script} did not finish within {timeout} s") from None
    finally:
        done.set()
        sampler.join()
    seconds = time.monotonic() - began
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        tail = "\n".join(stdout.splitlines()[-20:])
        raise RuntimeError(
            f"peer {env} {script} failed (exit {process.returncode}); stdout ends:\n{tail}"
        )
    return PeerRun(json.loads(lines[-1][len(RESULT_PREFIX) :]), seconds, peak)
