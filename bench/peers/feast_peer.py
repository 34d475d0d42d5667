"""Feast 0.67 on the bench's Parquet: point-in-time retrieval and SQLite online reads.

Runs under ``bench/.peers/feast/bin/python`` (see :mod:`bench.peers`). Two commands:

- ``offline --store file|duckdb``: ``get_historical_features`` of ``amount`` and
  ``is_remote`` for the population (read from Parquet into pandas before timing), to a
  pandas DataFrame; writes ``row_id, amount, is_remote`` of every returned row to
  ``--out`` and prints the timing and row counts.
- ``online``: ``materialize`` the feature rows into Feast's SQLite online store, then
  time ``get_online_features`` for the requests in ``--requests`` (a JSON file
  ``{"1": [[key], ...], "100": [[key, ...], ...], "warmup": W}``) and print p50/p99 and
  the values returned for the first 10 measured requests of each size.

The feature view has ``ttl=timedelta(0)`` (no TTL, as fs-dagster's set without
``online_ttl``), entity ``user_id`` (string), event time ``event_time``.

Example:
    bench/.peers/feast/bin/python bench/peers/feast_peer.py offline --store duckdb \\
        --features f.parquet --population p.parquet --repo /tmp/r --out /tmp/r/out.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULT_PREFIX = "PEER-RESULT "
FEATURE_VIEW = "tx"
FEATURES = [f"{FEATURE_VIEW}:amount", f"{FEATURE_VIEW}:is_remote"]


def feature_store(repo: Path, features: Path, offline: str) -> Any:
    """A Feast store in ``repo`` (registry and SQLite file) with the bench's feature view
    applied, over the feature rows in ``features``."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.repo_config import RepoConfig
    from feast.types import Bool, Float64, String

    repo.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(
        project="bench",
        registry=str(repo / "registry.db"),
        provider="local",
        online_store={"type": "sqlite", "path": str(repo / "online.db")},
        offline_store={"type": offline},
        entity_key_serialization_version=3,
    )
    store = FeatureStore(repo_path=str(repo), config=config)
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(name="tx_rows", path=str(features), timestamp_field="event_time")
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[user],
        ttl=timedelta(0),
        schema=[
            Field(name="user_id", dtype=String),
            Field(name="amount", dtype=Float64),
            Field(name="is_remote", dtype=Bool),
        ],
        source=source,
        online=True,
    )
    store.apply([user, view])
    return store


def offline(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    store = feature_store(args.repo, args.features, args.store)
    population = pd.read_parquet(args.population)
    began = time.perf_counter()
    result = store.get_historical_features(entity_df=population, features=FEATURES).to_df()
    seconds = time.perf_counter() - began
    result[["row_id", "amount", "is_remote"]].to_parquet(args.out, index=False)
    return {
        "seconds": seconds,
        "population_rows": len(population),
        "rows": len(result),
        "distinct_row_ids": int(result["row_id"].nunique()),
        "matched_rows": int(result["amount"].notna().sum()),
    }


def online(args: argparse.Namespace) -> dict[str, Any]:
    store = feature_store(args.repo, args.features, "file")
    requests = json.loads(args.requests.read_text())
    warmup = int(requests["warmup"])
    began = time.perf_counter()
    # Materialize everything: the window covers every feature row's event time.
    store.materialize(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=1))
    materialize_seconds = time.perf_counter() - began
    reads: dict[str, Any] = {}
    for size, batches in requests.items():
        if size == "warmup":
            continue
        times: list[float] = []
        values: dict[str, list[Any]] = {}
        for index, keys in enumerate(batches):
            began = time.perf_counter()
            response = store.get_online_features(
                features=FEATURES, entity_rows=[{"user_id": k} for k in keys]
            ).to_dict()
            elapsed = time.perf_counter() - began
            if index < warmup:
                continue
            times.append(elapsed)
            if index < warmup + 10:
                for key, amount, remote in zip(
                    response["user_id"], response["amount"], response["is_remote"], strict=True
                ):
                    values[key] = [amount, remote]
        reads[size] = {
            "requests": len(times),
            "p50_ms": 1000 * statistics.median(times),
            "p99_ms": 1000 * statistics.quantiles(times, n=100, method="inclusive")[98],
            "values": values,
        }
    return {"materialize_seconds": materialize_seconds, "reads": reads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    off = commands.add_parser("offline")
    off.add_argument("--store", choices=["file", "duckdb"], required=True)
    off.add_argument("--population", type=Path, required=True)
    off.add_argument("--out", type=Path, required=True)
    on = commands.add_parser("online")
    on.add_argument("--requests", type=Path, required=True)
    for command in (off, on):
        command.add_argument("--features", type=Path, required=True)
        command.add_argument("--repo", type=Path, required=True)
    args = parser.parse_args()
    result = offline(args) if args.command == "offline" else online(args)
    result["load_average_after"] = os.getloadavg()[0]
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
