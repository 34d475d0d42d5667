"""Replay from the raw-event archive equals offline point-in-time values, and the oracle.

A file source and local Delta (the embedded defaults): a day of events over a few keys
(plus the day before, which the windows reach back into) is ingested by the offline
run, which archives the raw events; replay over the day must give, for every event, the
transformed row (row-level set) or the window values at its time (aggregated set) that a
brute-force oracle over the raw events gives, and that ``get_offline_features`` returns
at the replayed timestamps.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.replay import CombinedFeatureEvent, FeatureEvent
from tests.integration.aggregation_oracle import assert_matches, oracle
from tests.integration.scenario import (
    SCHEMA,
    SourceSpec,
    aggregated_feature_set,
    transactions_feature_set,
    write_json_file,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DAY = datetime(2026, 3, 1, tzinfo=UTC)
USERS = ("u0", "u1", "u2", "u3")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _events(seed: int, count: int, *, offset_ms: int) -> list[dict[str, Any]]:
    """Events over the day before ``DAY`` (a few) and ``DAY`` (most), all at distinct
    millisecond times; some come in bursts within one second of one key, where a
    window read at the first event already counts the later ones (tile-edge rule)."""
    rng = random.Random(seed)
    moments: set[int] = set()

    def add(ms: int) -> None:
        moments.add(ms - ms % 2 + offset_ms)  # one parity per source: no shared times

    day_ms = 86_400_000
    for _ in range(count // 8):
        add(rng.randrange(-day_ms, 0))
    for _ in range(count):
        add(rng.randrange(0, day_ms))
    events = []
    for ms in sorted(moments):
        events.append(_event(rng, rng.choice(USERS), ms))
    for _ in range(12):
        user, second = rng.choice(USERS), rng.randrange(0, day_ms // 1000)
        for ms in (100, 400, 900):
            at = second * 1000 + ms + offset_ms
            if at not in moments:
                moments.add(at)
                events.append(_event(rng, user, at))
    rng.shuffle(events)  # arrival order is not event-time order
    return events


def _event(rng: random.Random, user: str, ms: int) -> dict[str, Any]:
    moment = DAY + timedelta(milliseconds=ms)
    return {
        "user_id": user,
        "amount": round(rng.uniform(1, 500), 2),
        "is_remote": rng.random() < 0.3,
        "ts": moment.isoformat(timespec="milliseconds"),
    }


def _ms(moment: datetime) -> int:
    return (moment - DAY) // timedelta(milliseconds=1)


def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"]).astimezone(UTC)


def _in_day(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inside = [e for e in events if DAY <= _time(e) < DAY + timedelta(days=1)]
    return sorted(inside, key=lambda e: (_time(e), e["user_id"]))


def _client(spark: SparkSession, tmp_path: Path, sets: list[fs.FeatureSet]) -> fs.FeatureStore:
    return fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=sets,
        spark=spark,
    )


def _source(tmp_path: Path, name: str, events: list[dict[str, Any]]) -> SourceSpec:
    spec = SourceSpec("file", f"{name}_{uuid.uuid4().hex[:8]}", str(tmp_path / name))
    lines = [json.dumps(e) for e in events]
    # Two files, and a malformed record: it goes to the dead letters, not the archive.
    write_json_file(Path(spec.location), [*lines[: len(lines) // 2], "{not json"])
    write_json_file(Path(spec.location), lines[len(lines) // 2 :])
    return spec


def _population(events: list[FeatureEvent]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [e.key["user_id"] for e in events],
            "timestamp": [pd.Timestamp(e.timestamp).tz_convert(None) for e in events],
        }
    )


def _by_key_and_time(offline: pd.DataFrame) -> dict[tuple[str, pd.Timestamp], dict[str, Any]]:
    """Offline rows by (user, timestamp): the result's order is not the population's."""
    records: list[dict[str, Any]] = offline.to_dict("records")  # type: ignore[assignment]
    by_key = {(r["user_id"], pd.Timestamp(r["timestamp"])): r for r in records}
    assert len(by_key) == len(records)
    return by_key


def test_replay_equals_oracle_and_offline_point_in_time(
    spark: SparkSession, tmp_path: Path
) -> None:
    events = _events(5, 240, offset_ms=0)
    spec = _source(tmp_path, "tx", events)
    rows_set = transactions_feature_set(spec, "replay-rows")
    agg_set = aggregated_feature_set(spec, "replay-agg")
    client = _client(spark, tmp_path, [rows_set, agg_set])
    for feature_set in (rows_set, agg_set):
        client.ingest(feature_set, pipelines=["offline"])
    archive = spark.read.format("delta").load(client.plan(rows_set).archive_path)
    assert archive.count() == len(events)  # every good record once, the malformed one not

    start, end = DAY, DAY + timedelta(days=1)
    slices = timedelta(hours=8)  # several slices, windows reaching across their edges
    expected = _in_day(events)

    # Row-level: each transformed row, in event-time order.
    replayed = list(client.replay("replay-rows", start, end, slice_length=slices))
    assert [(e.key["user_id"], e.timestamp) for e in replayed] == [
        (e["user_id"], _time(e)) for e in expected
    ]
    for got, want in zip(replayed, expected, strict=True):
        assert got.feature_set == "replay-rows"
        assert got.features == {
            "amount": want["amount"],
            "cents": round(want["amount"] * 100),
            "is_remote": want["is_remote"],
        }, got
    offline = _by_key_and_time(client.get_offline_features(_population(replayed), rows_set))
    for got in replayed:
        row = offline[(got.key["user_id"], pd.Timestamp(got.timestamp).tz_convert(None))]
        assert {n: row[n] for n in ("amount", "cents", "is_remote")} == dict(got.features), row

    # Aggregated: every window value at each event's time.
    aggregated = list(client.replay([agg_set], start, end, slice_length=slices))
    assert [(e.key["user_id"], e.timestamp) for e in aggregated] == [
        (e["user_id"], _time(e)) for e in expected
    ]
    raw = pd.DataFrame(
        {
            "user_id": [e["user_id"] for e in events],
            "micros": [_micros(_time(e)) for e in events],
            "amount": [e["amount"] for e in events],
            "is_remote": [e["is_remote"] for e in events],
        }
    )
    for event in aggregated:
        at = _micros(event.timestamp)
        want = oracle(agg_set, raw, event.key["user_id"], at)
        assert_matches(agg_set, event.features, want, f"replay {event.key} at {event.timestamp}")
    # The data exercises the windows: several events per minute, counts from before start.
    assert max(e.features["count_amount_1m"] for e in aggregated) >= 3
    first = aggregated[0]
    assert first.features["count_amount_7d"] > 1  # the day before counts
    offline_agg = _by_key_and_time(client.get_offline_features(_population(aggregated), agg_set))
    for event in aggregated:
        row = offline_agg[(event.key["user_id"], pd.Timestamp(event.timestamp).tz_convert(None))]
        assert_matches(agg_set, row, dict(event.features), f"offline at {event.timestamp}")


def _account_set(spec: SourceSpec) -> fs.FeatureSet:
    source = spec.build()

    def replay_accounts() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(
            f"SELECT user_id AS account, amount, ts FROM {source.name}"
        )

    return fs.streaming.feature_set(
        name="replay-accounts",
        key="account",
        data_sources=[source],
        timestamp_column_name="ts",
    )(replay_accounts)


def test_replay_combines_feature_sets_by_key(spark: SparkSession, tmp_path: Path) -> None:
    spend_events = _events(11, 60, offset_ms=0)
    click_events = _events(12, 60, offset_ms=1)  # other event times, same keys
    spend = transactions_feature_set(_source(tmp_path, "spend", spend_events), "replay-spend")
    clicks = transactions_feature_set(_source(tmp_path, "clicks", click_events), "replay-clicks")
    accounts = _account_set(_source(tmp_path, "accounts", spend_events[:5]))
    client = _client(spark, tmp_path, [spend, clicks, accounts])
    for feature_set in (spend, clicks):
        client.ingest(feature_set, pipelines=["offline"])

    with pytest.raises(ValueError, match=r"same key columns.*'replay-accounts' \(account\)"):
        client.replay([spend, accounts], DAY, DAY + timedelta(days=1), combine=True)

    start, end = DAY + timedelta(hours=3), DAY + timedelta(hours=21)
    combined: list[CombinedFeatureEvent] = list(
        client.replay(["replay-spend", "replay-clicks"], start, end, combine=True)
    )
    # Oracle: both sets' events in time order, the latest row of each set per key.
    tagged = sorted(
        [(_time(e), "replay-spend", e) for e in spend_events]
        + [(_time(e), "replay-clicks", e) for e in click_events],
        key=lambda item: (item[0], item[2]["user_id"]),
    )
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    expected = []
    for moment, name, event in tagged:
        if not start <= moment < end:
            continue
        known = latest.setdefault(event["user_id"], {})
        known[name] = {
            "amount": event["amount"],
            "cents": round(event["amount"] * 100),
            "is_remote": event["is_remote"],
        }
        expected.append(
            (
                name,
                event["user_id"],
                moment,
                {n: known.get(n) for n in ("replay-spend", "replay-clicks")},
            )
        )
    got = [(c.feature_set, c.key["user_id"], c.timestamp, dict(c.features)) for c in combined]
    assert got == expected
    assert {c.feature_set for c in combined} == {"replay-spend", "replay-clicks"}
    assert any(c.features["replay-clicks"] is None for c in combined)  # no click yet


def test_replay_covers_backfilled_history_once(spark: SparkSession, tmp_path: Path) -> None:
    """Backfilled days come from the backfill's archived rows, later ones from the
    stream's; stream events before the backfill's end_date (set aside) are not replayed."""
    rng = random.Random(9)
    begin = DAY - timedelta(days=1)

    def spread(count: int, first: datetime, span: timedelta) -> list[dict[str, Any]]:
        ms = rng.sample(range(int(span.total_seconds() * 1000)), count)
        return [_event(rng, rng.choice(USERS), _ms(first) + m) for m in ms]

    history = spread(80, begin, timedelta(days=1))
    streamed = spread(50, DAY, timedelta(hours=6))
    before_end = spread(5, DAY - timedelta(hours=1), timedelta(hours=1))
    suffix = uuid.uuid4().hex[:6]
    batch = fs.BatchSource(
        name=f"history-{suffix}",
        path=str(tmp_path / "history"),
        format="parquet",
        timestamp_column="event_time",
    )
    frame = pd.DataFrame(history).rename(columns={"user_id": "customer"})
    frame["event_time"] = pd.to_datetime(frame.pop("ts"), utc=True).dt.tz_convert(None)
    spark.createDataFrame(frame).write.parquet(batch.path)
    stream = fs.FileSource(name=f"tx-{suffix}", path=str(tmp_path / "in"), schema=SCHEMA)
    view = stream.name.replace("-", "_")

    @fs.streaming.feature_set(
        name=f"replay_bf_{suffix}",
        key="user_id",
        data_sources=[stream.name],
        timestamp_column_name="ts",
        allowed_lateness="1 day",
    )
    @fs.streaming.backfill(
        start_date=begin,
        end_date=DAY,
        data_sources=[fs.BackfillBatchDataSourceSpec(data_source_name=batch.name)],
        backfill_transformation=fs.SparkSqlTransformation(
            "SELECT customer AS user_id, amount, is_remote, event_time AS ts "
            f"FROM {batch.name.replace('-', '_')}"
        ),
    )
    def spend() -> fs.SparkSqlTransformation:
        return (
            fs.SparkSqlTransformation(f"SELECT user_id, amount, is_remote, ts FROM {view}")
            .aggregate(fs.Aggregation.sum("amount"))
            .aggregate(fs.Aggregation.count("amount"))
            .by_windows("1 hour", "1 day")
        )

    client = _client(spark, tmp_path, [spend])
    client.backfill(spend, online=False)
    write_json_file(Path(stream.path), [json.dumps(e) for e in streamed + before_end])
    client.ingest(spend, pipelines=["offline"])
    archive_path = client.plan(spend).archive_path
    archived = spark.read.format("delta").load(archive_path).count()
    assert archived == len(history) + len(streamed) + len(before_end)
    client.backfill(spend, online=False)  # replaces its range of the archive: no duplicates
    assert spark.read.format("delta").load(archive_path).count() == archived

    start, end = DAY - timedelta(hours=12), DAY + timedelta(hours=6)
    replayed = list(client.replay(spend, start, end, slice_length=timedelta(hours=9)))
    truth = [e for e in history + streamed if start <= _time(e) < end]
    truth.sort(key=lambda e: (_time(e), e["user_id"]))
    assert [(e.key["user_id"], e.timestamp) for e in replayed] == [
        (e["user_id"], _time(e)) for e in truth
    ]
    raw = pd.DataFrame(
        {
            "user_id": [e["user_id"] for e in history + streamed],
            "micros": [_micros(_time(e)) for e in history + streamed],
            "amount": [e["amount"] for e in history + streamed],
        }
    )
    for event in replayed:
        want = oracle(spend, raw, event.key["user_id"], _micros(event.timestamp))
        assert_matches(spend, event.features, want, f"replay {event.key} at {event.timestamp}")
