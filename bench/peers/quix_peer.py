"""Quix Streams windowed aggregations over the bench's Kafka topic, emitted to Kafka.

Runs under ``bench/.peers/quix/bin/python`` (see :mod:`bench.peers`). The application
reads the preloaded topic from the earliest offset with a fresh consumer group, takes
each event's time from its ``ts`` field (not the Kafka timestamp), and for each window
size in ``--windows-ms`` keeps a tumbling window (RocksDB state, changelog topics as
Quix creates them by default) with ``sum`` and ``max`` of ``amount`` and ``count``,
emitting every update (``.current()``) to ``--out-topic``. It stops after
``--events`` events have gone through every window (``bench.compare`` kills it
when it runs past its time limit), and prints the events/s and, for
the keys in ``--sample-keys`` (a JSON list), the last value of every window it updated.

Timing: from the first event seen to the last event's last window update (``seconds``),
and from ``Application.run`` to then (``wall_seconds``, with the consumer group join).

Example:
    bench/.peers/quix/bin/python bench/peers/quix_peer.py --bootstrap 127.0.0.1:9092 \\
        --topic t --out-topic t-out --events 30000 --windows-ms 60000,600000 \\
        --sample-keys keys.json --state-dir /tmp/q --group g
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULT_PREFIX = "PEER-RESULT "
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)


def event_millis(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    """The event time of a record (its ``ts`` field, ISO 8601) in epoch milliseconds."""
    return (datetime.fromisoformat(value["ts"]) - EPOCH) // MILLISECOND


def run(args: argparse.Namespace) -> dict[str, Any]:
    from quixstreams import Application
    from quixstreams.dataframe.windows.aggregations import Count, Max, Sum

    sample = set(json.loads(args.sample_keys.read_text()))
    windows = [int(w) for w in args.windows_ms.split(",")]
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=str(args.state_dir),
        loglevel="WARNING",
    )
    source = app.topic(args.topic, value_deserializer="json", timestamp_extractor=event_millis)
    out = app.topic(args.out_topic, value_serializer="json")
    values: dict[str, dict[str, dict[str, list[Any]]]] = {}
    state = {"first": 0.0, "last": 0.0, "done": 0}

    def first_seen(value: Any) -> None:
        if not state["first"]:
            state["first"] = time.perf_counter()

    def recorder(window_ms: int, last: bool) -> Any:
        def record(value: Any, key: Any, timestamp: int, headers: Any) -> None:
            user = key.decode() if isinstance(key, bytes) else str(key)
            if user in sample:
                per_key = values.setdefault(user, {}).setdefault(str(window_ms), {})
                per_key[str(value["start"])] = [value["sum"], value["count"], value["max"]]
            if last:
                state["done"] += 1
                if state["done"] >= args.events:
                    state["last"] = time.perf_counter()
                    app.stop()

        return record

    sdf = app.dataframe(source)
    sdf = sdf.update(first_seen)
    for index, window_ms in enumerate(windows):
        branch = (
            sdf.tumbling_window(duration_ms=window_ms, grace_ms=args.grace_ms)
            .agg(sum=Sum("amount"), count=Count(), max=Max("amount"))
            .current()
        )
        branch = branch.update(recorder(window_ms, index == len(windows) - 1), metadata=True)
        branch.to_topic(out)
    began = time.perf_counter()
    # No run(timeout=...): with it Quix also collects every output, which would be
    # measured too. bench.compare bounds the process instead.
    app.run()
    if not state["last"]:
        raise RuntimeError(f"stopped after {state['done']} of {args.events} events")
    seconds = state["last"] - state["first"]
    wall = state["last"] - began
    return {
        "events": state["done"],
        "seconds": seconds,
        "events_per_second": state["done"] / seconds,
        "wall_seconds": wall,
        "events_per_second_wall": state["done"] / wall,
        "windows_ms": windows,
        "values": values,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out-topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--windows-ms", required=True)
    parser.add_argument("--grace-ms", type=int, default=86_400_000)
    parser.add_argument("--sample-keys", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    result = run(args)
    result["load_average_after"] = os.getloadavg()[0]
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
