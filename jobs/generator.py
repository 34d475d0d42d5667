"""Demo event generator: card transactions to the example stream.

Writes to Kafka when ``FS_KAFKA_BOOTSTRAP_SERVERS`` is set, otherwise drops a JSON-lines
file into the file source's directory (written under a hidden name, then renamed, so the
stream never reads half a file).

Run it by hand with ``python -m jobs.generator --events 500``; the example project also
runs it every minute (the ``demo_events`` schedule).
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobs.transactions import TOPIC
from resources import ProjectSettings, project_settings

MERCHANTS = ["grocer", "fuel", "airline", "books", "electronics", "cafe"]


def events(count: int, users: int = 50, seed: int | None = None) -> Iterator[dict[str, object]]:
    """``count`` random transactions with event times in the last minute."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for _ in range(count):
        yield {
            "user_id": f"user-{rng.randrange(users):04d}",
            "amount": round(rng.lognormvariate(3.5, 1.2), 2),
            "merchant": rng.choice(MERCHANTS),
            "is_remote": rng.random() < 0.3,
            "ts": (now - timedelta(seconds=rng.uniform(0, 60))).isoformat(),
        }


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
