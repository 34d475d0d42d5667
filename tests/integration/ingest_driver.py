"""Runs one ingestion pipeline in its own process, so tests can kill it for real.

``--crash-after-batch N`` ends the process with ``os._exit`` right after batch N has
written its sinks and before Spark commits the batch to the checkpoint: the worst
moment, when a restart must replay the batch without double counting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fs_dagster as fs
from fs_dagster import CassandraOnlineStore, OnlineStore, SparkSettings, SqliteOnlineStore
from fs_dagster.engine import pipeline
from fs_dagster.engine.spark_session import create_spark_session
from fs_dagster.planning.plan import StoragePlan
from tests.integration.scenario import (
    SourceSpec,
    aggregated_feature_set,
    transactions_feature_set,
)

ROOT = Path(__file__).resolve().parents[2]


def _online_store(spec: str) -> OnlineStore:
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        return SqliteOnlineStore(rest)
    host, port, keyspace = rest.split(":")
    return CassandraOnlineStore([host], port=int(port), keyspace=keyspace, consistency="ONE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="SourceSpec as JSON")
    parser.add_argument("--name", required=True)
    parser.add_argument("--pipeline", choices=["online", "offline"], required=True)
    parser.add_argument("--offline-root", required=True)
    parser.add_argument("--checkpoint-root", required=True)
    parser.add_argument("--online-store", default=None)
    parser.add_argument("--crash-after-batch", type=int, default=None)
    parser.add_argument("--run-seconds", type=float, default=120)
    parser.add_argument("--aggregated", action="store_true")
    parser.add_argument("--sink-topic", default=None, help="an online-attached Kafka sink")
    parser.add_argument("--sink-bootstrap", default=None)
    args = parser.parse_args()

    if args.crash_after_batch is not None:
        original = pipeline._MicroBatch.__call__
        crash_at = args.crash_after_batch

        def crashing(self: Any, batch: Any, batch_id: int) -> None:
            original(self, batch, batch_id)
            if batch_id == crash_at:
                print(f"crashing after batch {batch_id}", flush=True)
                os._exit(137)

        pipeline._MicroBatch.__call__ = crashing  # type: ignore[method-assign]

    jars = subprocess.run(
        [str(ROOT / "scripts/services.sh"), "spark-jars"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    spark = create_spark_session(
        SparkSettings(master="local[2]", jars=tuple(jars.split(",")), shuffle_partitions=2)
    )
    build = aggregated_feature_set if args.aggregated else transactions_feature_set
    sinks = (
        [fs.KafkaSink(name="sink", topic=args.sink_topic, bootstrap_servers=args.sink_bootstrap)]
        if args.sink_topic
        else []
    )
    feature_set = build(SourceSpec.from_json(args.source), args.name, auxiliary_sinks=sinks)
    plan = StoragePlan(feature_set, args.offline_root, args.checkpoint_root)
    store = _online_store(args.online_store) if args.online_store else None
    ingestion = pipeline.start_ingestion(
        spark,
        feature_set,
        plan,
        args.pipeline,
        online_store=store,
        on_batch=lambda r: print(f"batch {r.batch_id} rows {r.rows_in}", flush=True),
        trigger_interval=0,
    )
    deadline = time.monotonic() + args.run_seconds
    while ingestion.query.isActive and time.monotonic() < deadline:
        ingestion.query.awaitTermination(1)
    ingestion.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
