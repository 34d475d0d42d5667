"""Peers of fs-dagster for ``bench.compare``, each run in its own virtual environment.

The scripts ``feast_peer.py``, ``duckdb_peer.py`` and ``quix_peer.py`` run as plain
files under the peer's interpreter (``bench/.peers/<name>/bin/python``), never imported
by the project: they import Feast, DuckDB or Quix Streams inside their functions only, so
the project's ``mypy`` (``ignore_missing_imports``) checks them without those packages.
Each takes its inputs on the command line and prints one JSON document on the last line
of stdout, prefixed by :data:`RESULT_PREFIX`. :mod:`bench.peers.envs` creates the
environments and runs the scripts.
"""

RESULT_PREFIX = "PEER-RESULT "
