"""Demo data: live card transactions to the example stream, and a week of history.

Live events go to Kafka when ``FS_KAFKA_BOOTSTRAP_SERVERS`` is set, otherwise into a
JSON-lines file in the file source's directory (written under a hidden name, then renamed,
so the stream never reads half a file). Run it by hand with
``python -m jobs.generator --events 500``; the example project also runs it every minute
(the ``demo_events`` schedule).

The history is a Parquet table of the same transactions over the 7 days before midnight
UTC, written once under ``$FS_DAGSTER_HOME/history/transactions`` (see
:func:`ensure_history`): the batch source that ``user-spend`` is backfilled from.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from jobs.transactions import TOPIC
from resources import ProjectSettings, project_settings

MERCHANTS = ["grocer", "fuel", "airline", "books", "electronics", "cafe"]
HISTORY_DAYS = 7
HISTORY_EVENTS_PER_DAY = 500
HISTORY_SEED = 7
# Beside the Parquet files; Spark and pyarrow skip files whose names start with "_".
HISTORY_RANGE_FILE = "_range.json"


def _transaction(rng: random.Random, users: int, ts: datetime) -> dict[str, object]:
    return {
        "user_id": f"user-{rng.randrange(users):04d}",
        "amount": round(rng.lognormvariate(3.5, 1.2), 2),
        "merchant": rng.choice(MERCHANTS),
        "is_remote": rng.random() < 0.3,
        "ts": ts,
    }


def events(count: int, users: int = 50, seed: int | None = None) -> Iterator[dict[str, object]]:
    """``count`` random transactions with event times in the last minute."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for _ in range(count):
        ts = now - timedelta(seconds=rng.uniform(0, 60))
        yield {**_transaction(rng, users, ts), "ts": ts.isoformat()}


def history_frame(
    end: datetime,
    days: int = HISTORY_DAYS,
    per_day: int = HISTORY_EVENTS_PER_DAY,
    users: int = 50,
    seed: int = HISTORY_SEED,
) -> pd.DataFrame:
    """``days x per_day`` transactions in ``[end - days, end)``, in event-time order.

    The same arguments give the same rows. Event times are whole milliseconds, stored as
    microseconds (Spark reads Parquet timestamps in micro-, not nanoseconds).
    """
    rng = random.Random(seed)
    start = end - timedelta(days=days)
    millis = sorted(rng.randrange(days * 86_400_000) for _ in range(days * per_day))
    frame = pd.DataFrame(
        [_transaction(rng, users, start + timedelta(milliseconds=m)) for m in millis]
    )
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("us")
    return frame


@dataclass(frozen=True)
class History:
    """Where the example's history is and the event times it covers, ``[start, end)``."""

    path: Path
    start: datetime
    end: datetime


def ensure_history(settings: ProjectSettings, *, end: datetime | None = None) -> History:
    """The history under ``FS_DAGSTER_HOME``, written first if there is none yet.

    Its range is fixed when it is written: the :data:`HISTORY_DAYS` days before ``end``
    (default: the latest midnight UTC), recorded beside the files. Every later process
    of the deployment (code server, run workers, CLI) reads that range back, so the
    backfill's partitions do not move at midnight; delete the directory to move the
    week to the latest midnight. Written under a hidden name and renamed, so that of two
    processes writing at once one wins whole and the other reads its range.
    """
    directory = settings.home / "history" / "transactions"
    recorded = directory / HISTORY_RANGE_FILE
    if not directory.exists():
        end = end or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        frame = history_frame(end)
        staging = directory.parent / f".{directory.name}-{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir(parents=True)
        frame.to_parquet(staging / "part-00000.parquet", index=False)
        span = {
            "start": (end - timedelta(days=HISTORY_DAYS)).isoformat(),
            "end": end.isoformat(),
            "rows": len(frame),
        }
        (staging / HISTORY_RANGE_FILE).write_text(json.dumps(span) + "\n")
        try:
            staging.rename(directory)
        except OSError:  # another process wrote it first: its history stands
            shutil.rmtree(staging, ignore_errors=True)
    if not recorded.exists():
        raise FileNotFoundError(
            f"{directory} holds no {HISTORY_RANGE_FILE}; delete the directory and the "
            "example project writes its history again"
        )
    span = json.loads(recorded.read_text())
    return History(
        path=directory,
        start=datetime.fromisoformat(span["start"]),
        end=datetime.fromisoformat(span["end"]),
    )


def write_events(records: list[dict[str, object]], settings: ProjectSettings) -> str:
    """Send ``records`` to the example stream; returns where they went."""
    if settings.kafka_bootstrap_servers:
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": settings.kafka_bootstrap_servers, "broker.address.family": "v4"}
        )
        for record in records:
            producer.produce(TOPIC, key=str(record["user_id"]), value=json.dumps(record))
        producer.flush(30)
        return f"kafka topic {TOPIC}"
    directory = settings.stream_dir / TOPIC
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.json"
    hidden = directory / f".{name}.tmp"
    hidden.write_text("".join(json.dumps(r) + "\n" for r in records))
    hidden.replace(directory / name)
    return str(Path(directory / name))


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    where = write_events(list(events(args.events, args.users)), project_settings())
    print(f"wrote {args.events} events to {where}")


if __name__ == "__main__":
    main()
