"""Combined vectors across feature sets: online, offline and live, against pandas oracles.

Three feature sets over file sources (SQLite online, local Delta offline), each with its
own key and event times:

- ``user-profile``: row-level, keyed by ``user_id``, event time ``updated_at``;
- ``user-spend``: windowed sums and counts, keyed by ``user_id``, event time ``ts``;
- ``merchant-risk``: row-level, keyed by ``merchant_id``, event time ``scored_at``.

Expected values are computed here from the raw events: latest row at or before a time,
and window sums over ``[S, E)`` as the README defines the window bounds.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.definitions.references import FeatureReferenceError
from fs_dagster.engine.pipeline import BatchReport
from tests.integration.scenario import write_json_file

pytestmark = [pytest.mark.spark, pytest.mark.slow]

USERS = [f"u{i}" for i in range(5)]
MERCHANTS = [f"m{i}" for i in range(3)]
SPEND = ["sum_amount_1h", "sum_amount_1d", "count_amount_1h", "count_amount_1d"]
WINDOW_SECONDS = {"1h": 3600, "1d": 86400}
#: The README's edge resolution of both windows: 1 minute (at most 1,440 tiles).
EDGE_SECONDS = 60
REQUESTED = [
    "user-profile.*",
    "user-spend.sum_amount_1h",
    "user-spend.count_amount_1d",
    "merchant-risk.risk",
]
COLUMNS = [
    "user_id",
    "merchant_id",
    "user-profile.age",
    "user-profile.city",
    "user-spend.sum_amount_1h",
    "user-spend.count_amount_1d",
    "merchant-risk.risk",
    "user-profile.updated_at",
    "user-spend.ts",
    "merchant-risk.scored_at",
]


@dataclass
class World:
    """The feature sets, their raw events, the client, and what the live callback saw."""

    client: fs.FeatureStore
    profiles: list[dict[str, Any]]
    merchants: list[dict[str, Any]]
    batches: list[list[dict[str, Any]]]
    received: list[dict[str, Any]] = field(default_factory=list)
    reports: list[BatchReport] = field(default_factory=list)
    ingested_at: tuple[pd.Timestamp, pd.Timestamp] | None = None

    @property
    def transactions(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _naive(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert(None)


def _events(now: datetime) -> tuple[list[dict[str, Any]], ...]:
    """Events between 40 and 5 minutes ago, each key's event times distinct."""
    rng = random.Random(11)
    base = now - timedelta(minutes=40)
    seconds = rng.sample(range(35 * 60), 90)  # distinct times: no ties anywhere
    profiles = [
        {
            "user_id": USERS[i % 4],  # u4 never has a profile
            "age": 20 + rng.randrange(50),
            "city": rng.choice(["Oslo", "Lima", "Pune", None]),
            "updated_at": _iso(base + timedelta(seconds=seconds[i])),
        }
        for i in range(12)
    ]
    merchants = [
        {
            "merchant_id": MERCHANTS[i % 3],
            "risk": round(rng.uniform(0, 1), 3),
            "scored_at": _iso(base + timedelta(seconds=seconds[12 + i])),
        }
        for i in range(9)
    ]
    transactions = [
        {
            "user_id": rng.choice(USERS[:4]) if i < 30 else rng.choice(USERS[1:]),
            "merchant_id": rng.choice([*MERCHANTS, "m9"]),  # m9 is never scored
            "amount": round(rng.uniform(1, 300), 2),
            "ts": _iso(base + timedelta(seconds=seconds[21 + i])),
        }
        for i in range(60)
    ]
    return profiles, merchants, transactions[:30], transactions[30:]


def _feature_sets(root: Path) -> tuple[fs.FeatureSet, fs.FeatureSet, fs.FeatureSet]:
    tag = uuid.uuid4().hex[:6]
    profiles = fs.FileSource(
        name=f"profiles_{tag}",
        path=str(root / "profiles"),
        schema="user_id STRING, age INT, city STRING, updated_at TIMESTAMP",
    )
    merchants = fs.FileSource(
        name=f"merchants_{tag}",
        path=str(root / "merchants"),
        schema="merchant_id STRING, risk DOUBLE, scored_at TIMESTAMP",
    )
    transactions = fs.FileSource(
        name=f"transactions_{tag}",
        path=str(root / "transactions"),
        schema="user_id STRING, merchant_id STRING, amount DOUBLE, ts TIMESTAMP",
        options={"maxFilesPerTrigger": "1"},  # one batch per file
    )
    user_profile = fs.streaming.feature_set(
        name="user-profile",
        key="user_id",
        data_sources=[profiles],
        timestamp_column_name="updated_at",
        online_trigger_interval=1,
    )(
        lambda: fs.SparkSqlTransformation(
            f"SELECT user_id, age, city, updated_at FROM {profiles.name}"
        )
    )
    merchant_risk = fs.streaming.feature_set(
        name="merchant-risk",
        key="merchant_id",
        data_sources=[merchants],
        timestamp_column_name="scored_at",
        online_trigger_interval=1,
    )(
        lambda: fs.SparkSqlTransformation(
            f"SELECT merchant_id, risk, scored_at FROM {merchants.name}"
        )
    )
    user_spend = fs.streaming.feature_set(
        name="user-spend",
        key="user_id",
        data_sources=[transactions],
        timestamp_column_name="ts",
        online_trigger_interval=1,
        allowed_lateness="1 day",
    )(
        lambda: (
            fs.SparkSqlTransformation(
                f"SELECT user_id, merchant_id, amount, ts FROM {transactions.name}"
            )
            .aggregate(fs.Aggregation.sum("amount"))
            .aggregate(fs.Aggregation.count("amount"))
            .by_windows("1h", "1d")
        )
    )
    return user_profile, user_spend, merchant_risk


@pytest.fixture(scope="module")
def world(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("combined")
    user_profile, user_spend, merchant_risk = _feature_sets(root)
    profiles, merchants, first, second = _events(datetime.now(UTC).replace(microsecond=0))
    write_json_file(root / "profiles", [json.dumps(e) for e in profiles])
    write_json_file(root / "merchants", [json.dumps(e) for e in merchants])
    write_json_file(root / "transactions", [json.dumps(e) for e in first])
    write_json_file(root / "transactions", [json.dumps(e) for e in second])
    client = fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(root / "online.db"),
        offline_root=str(root / "offline"),
        checkpoint_root=str(root / "checkpoints"),
        feature_sets=[user_profile, user_spend, merchant_risk],
        spark=spark,
    )
    world = World(client, profiles, merchants, [first, second])
    client.ingest("user-profile")
    client.ingest("merchant-risk")
    before = pd.Timestamp.now(tz="UTC").tz_convert(None)
    world.reports = client.ingest("user-spend", on_update=world.received.append, features=REQUESTED)
    world.ingested_at = (before, pd.Timestamp.now(tz="UTC").tz_convert(None))
    yield world


# ------------------------------------------------------------------ independent oracle


def _latest(
    events: list[dict[str, Any]], key: str, value: Any, time: str, at: pd.Timestamp | None
) -> dict[str, Any] | None:
    """The event of ``key == value`` with the newest ``time`` at or before ``at``."""
    best = None
    for event in events:
        moment = _naive(event[time])
        if event[key] != value or (at is not None and moment > at):
            continue
        if best is None or moment > _naive(best[time]):
            best = event
    return best


def _window(events: list[dict[str, Any]], user: str, at: pd.Timestamp, window: str) -> list[float]:
    """Amounts of ``user`` in the window read at ``at``: ``[S, E)`` with ``E`` the end of
    the second holding ``at`` and ``S`` = ``E - W`` rounded up to the edge resolution."""
    end = at.floor("s") + pd.Timedelta(seconds=1)
    start_seconds = (end.value // 10**9) - WINDOW_SECONDS[window]
    start = pd.Timestamp(-(-start_seconds // EDGE_SECONDS) * EDGE_SECONDS, unit="s")
    return [e["amount"] for e in events if e["user_id"] == user and start <= _naive(e["ts"]) < end]


def _expected(
    world: World,
    transactions: list[dict[str, Any]],
    user: str,
    merchant: str,
    at: pd.Timestamp | None,
    spend_at: pd.Timestamp,
) -> dict[str, Any]:
    """The combined vector of (user, merchant): row-level values as of ``at`` (``None``:
    latest), window values read at ``spend_at``."""
    profile = _latest(world.profiles, "user_id", user, "updated_at", at)
    risk = _latest(world.merchants, "merchant_id", merchant, "scored_at", at)
    return {
        "user_id": user,
        "merchant_id": merchant,
        "user-profile.age": profile["age"] if profile else None,
        "user-profile.city": profile["city"] if profile else None,
        "user-spend.sum_amount_1h": sum(_window(transactions, user, spend_at, "1h")),
        "user-spend.count_amount_1d": len(_window(transactions, user, spend_at, "1d")),
        "merchant-risk.risk": risk["risk"] if risk else None,
        "user-profile.updated_at": _naive(profile["updated_at"]) if profile else None,
        "user-spend.ts": spend_at,
        "merchant-risk.scored_at": _naive(risk["scored_at"]) if risk else None,
    }


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, list | dict) and bool(pd.isna(value)))


def _assert_vector(got: dict[str, Any], want: dict[str, Any], where: str) -> None:
    assert list(got) == list(want), where
    for column, expected in want.items():
        value = got[column]
        if _missing(expected):
            assert _missing(value), f"{where} {column}: {value!r}, expected null"
        elif isinstance(expected, float):
            assert value == pytest.approx(expected), f"{where} {column}"
        elif isinstance(expected, pd.Timestamp):
            assert pd.Timestamp(value) == expected, f"{where} {column}"
        else:
            assert value == expected, f"{where} {column}: {value!r} != {expected!r}"


# ------------------------------------------------------------------ tests


def test_online_vector_holds_every_requested_feature(world: World) -> None:
    keys = [
        {"user_id": "u0", "merchant_id": "m1"},
        {"user_id": "u4", "merchant_id": "m0"},  # u4: spend but no profile
        {"user_id": "u2", "merchant_id": "m9"},  # m9: never scored
        {"user_id": "u7", "merchant_id": "m2"},  # u7: never seen
        {"user_id": "u0", "merchant_id": "m2"},  # a user twice: one row per key row
    ]
    vectors = world.client.get_online_features(features=REQUESTED, keys=keys)
    assert list(vectors.columns) == COLUMNS
    assert len(vectors) == len(keys)
    records: list[dict[str, Any]] = vectors.to_dict("records")  # type: ignore[assignment]
    for key, got in zip(keys, records, strict=True):
        read_at = pd.Timestamp(got["user-spend.ts"])
        want = _expected(
            world, world.transactions, key["user_id"], key["merchant_id"], None, read_at
        )
        _assert_vector(got, want, f"online {key}")
    # The sets' own timestamps are visible side by side, and differ per set.
    first = records[0]
    assert first["user-profile.updated_at"] != first["merchant-risk.scored_at"]

    # A DataFrame of keys gives the same rows; extra columns in it are not keys.
    frame = pd.DataFrame(keys).assign(note="ignored")
    pd.testing.assert_frame_equal(
        world.client.get_online_features(features=REQUESTED, keys=frame).drop(
            columns=["user-spend.ts"]
        ),
        vectors.drop(columns=["user-spend.ts"]),
    )


def test_online_single_column_keys_when_the_sets_share_their_key(world: World) -> None:
    vectors = world.client.get_online_features(
        features=["user-spend.*", "user-profile.age"], keys=["u3", "u1"]
    )
    assert list(vectors.columns) == [
        "user_id",
        *[f"user-spend.{name}" for name in SPEND],
        "user-profile.age",
        "user-spend.ts",
        "user-profile.updated_at",
    ]
    assert list(vectors["user_id"]) == ["u3", "u1"]
    for got in vectors.to_dict("records"):
        read_at = pd.Timestamp(got["user-spend.ts"])
        user = str(got["user_id"])
        for name in SPEND:
            amounts = _window(world.transactions, user, read_at, name.rsplit("_", 1)[1])
            want = sum(amounts) if name.startswith("sum") else len(amounts)
            assert got[f"user-spend.{name}"] == pytest.approx(want), (user, name)
        profile = _latest(world.profiles, "user_id", user, "updated_at", None)
        assert profile is not None
        assert got["user-profile.age"] == profile["age"]

    # at= when every requested set is aggregated: windows read at that time.
    now = vectors.to_dict("records")[0]
    at = pd.Timestamp(now["user-spend.ts"]).floor("s") - pd.Timedelta(minutes=20)
    earlier = world.client.get_online_features(
        features=["user-spend.sum_amount_1h"], keys=["u3"], at=at.to_pydatetime()
    )
    assert list(earlier.columns) == ["user_id", "user-spend.sum_amount_1h", "user-spend.ts"]
    assert earlier.loc[0, "user-spend.ts"] == at
    want = sum(_window(world.transactions, "u3", at, "1h"))
    assert earlier.loc[0, "user-spend.sum_amount_1h"] == pytest.approx(want)
    assert want < now["user-spend.sum_amount_1h"]  # fewer events 20 minutes ago


def test_online_errors_name_the_set_and_what_is_accepted(world: World) -> None:
    client = world.client
    with pytest.raises(
        ValueError, match=r"keys for 'merchant-risk' lack columns \['merchant_id'\]"
    ):
        client.get_online_features(features=REQUESTED, keys=[{"user_id": "u0"}])
    with pytest.raises(ValueError, match="several columns"):
        client.get_online_features(features=REQUESTED, keys=["u0"])
    with pytest.raises(FeatureReferenceError, match="unknown feature set 'user-spnd'"):
        client.get_online_features(features=["user-spnd.sum_amount_1h"], keys=["u0"])
    with pytest.raises(FeatureReferenceError, match="its features: age, city"):
        client.get_online_features(features=["user-profile.zip"], keys=["u0"])
    with pytest.raises(ValueError, match="'user-profile' is row-level"):
        client.get_online_features(features=["user-profile.age"], keys=["u0"], at=datetime.now(UTC))
    with pytest.raises(ValueError, match="not both"):
        client.get_online_features("user-profile", ["u0"], features=["user-profile.age"])


def test_single_set_reads_are_unchanged(world: World) -> None:
    rows = world.client.get_online_features("user-profile", ["u1", "u4"])
    assert list(rows.columns) == ["user_id", "updated_at", "age", "city"]
    profile = _latest(world.profiles, "user_id", "u1", "updated_at", None)
    assert profile is not None
    assert rows.loc[0, "age"] == profile["age"]
    assert _missing(rows.loc[1, "age"])


def test_offline_training_set_is_point_in_time_per_set(world: World) -> None:
    rng = random.Random(5)
    times = sorted(_naive(e["ts"]) for e in world.transactions)
    first, last = times[0], times[-1]
    moments = [
        first - pd.Timedelta(minutes=5),  # before every event
        *[
            first + pd.Timedelta(seconds=rng.uniform(0, (last - first).total_seconds()))
            for _ in range(40)
        ],
        _naive(world.profiles[3]["updated_at"]),  # exactly at events: "at or before"
        _naive(world.merchants[4]["scored_at"]),
        last + pd.Timedelta(minutes=90),  # the 1-hour window has emptied
    ]
    population = pd.DataFrame(
        {
            "user_id": [rng.choice([*USERS, "u7"]) for _ in moments],
            "merchant_id": [rng.choice([*MERCHANTS, "m9"]) for _ in moments],
            "timestamp": [m.floor("us") for m in moments],
            "label": range(len(moments)),
        }
    )
    result = world.client.get_offline_features(
        population, features=REQUESTED, point_in_time_column="timestamp"
    )
    assert len(result) == len(population)
    assert list(result.columns) == [
        "user_id",
        "merchant_id",
        "timestamp",
        "label",
        *COLUMNS[2:],
    ]
    assert list(result["label"]) == list(population["label"])  # population order kept
    records: list[dict[str, Any]] = result.to_dict("records")  # type: ignore[assignment]
    for record in records:
        at = pd.Timestamp(record["timestamp"])
        want = _expected(
            world, world.transactions, str(record["user_id"]), str(record["merchant_id"]), at, at
        )
        got = {k: v for k, v in record.items() if k not in ("timestamp", "label")}
        _assert_vector(got, want, f"offline row {record}")

    # Kept distributed on request, with the same rows.
    spark_result = world.client.get_offline_features(
        population, features=REQUESTED, point_in_time_column="timestamp", output="spark"
    )
    assert spark_result.count() == len(population)
    with pytest.raises(ValueError, match=r"population for 'merchant-risk' lacks columns"):
        world.client.get_offline_features(
            population.drop(columns=["merchant_id"]), features=REQUESTED
        )


def _newest_per_user(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each user's newest transaction in ``batch``, oldest first."""
    newest: dict[str, dict[str, Any]] = {}
    for event in batch:
        current = newest.get(event["user_id"])
        if current is None or _naive(event["ts"]) > _naive(current["ts"]):
            newest[event["user_id"]] = event
    return sorted(newest.values(), key=lambda e: _naive(e["ts"]))


def test_live_callback_vectors_equal_online_reads(world: World) -> None:
    assert world.ingested_at is not None
    assert len([r for r in world.reports if r.pipeline == "online"]) == 2
    # One vector per key each batch updated, in the order of the key's newest event; the
    # merchant is that of the key's newest transaction in the batch.
    updates = [
        (number, event, world.transactions if number else world.batches[0])
        for number, batch in enumerate(world.batches)
        for event in _newest_per_user(batch)
    ]
    received = world.received
    assert [v["user_id"] for v in received] == [event["user_id"] for _, event, _ in updates]

    earliest, latest = world.ingested_at
    for index, (vector, (number, event, seen)) in enumerate(zip(received, updates, strict=True)):
        read_at = pd.Timestamp(vector["user-spend.ts"])
        assert earliest <= read_at <= latest
        # Window values count the events of this batch and the ones before, no later.
        want = _expected(world, seen, event["user_id"], event["merchant_id"], None, read_at)
        _assert_vector(vector, want, f"callback #{index} (batch {number + 1})")

    # The last vector of each key is what a combined online read returns after the run.
    last = {v["user_id"]: v for v in received}
    keys = [{"user_id": v["user_id"], "merchant_id": v["merchant_id"]} for v in last.values()]
    now = world.client.get_online_features(features=REQUESTED, keys=keys)
    records: list[dict[str, Any]] = now.to_dict("records")  # type: ignore[assignment]
    for got, vector in zip(records, last.values(), strict=True):
        assert pd.Timestamp(got.pop("user-spend.ts")) >= pd.Timestamp(vector["user-spend.ts"])
        _assert_vector(got, {k: v for k, v in vector.items() if k != "user-spend.ts"}, "now")


def test_on_update_is_refused_offline_and_for_keys_the_set_lacks(world: World) -> None:
    client = world.client
    with pytest.raises(ValueError, match="on_update= needs the online pipeline"):
        client.ingest("user-profile", pipelines=["offline"], on_update=print)
    with pytest.raises(ValueError, match=r"key columns \['merchant_id'\].*'merchant-risk'"):
        client.ingest(
            "user-profile",
            pipelines=["online"],
            on_update=print,
            features=["user-profile.age", "merchant-risk.risk"],
        )
    with pytest.raises(ValueError, match="features= only applies with on_update="):
        client.ingest("user-profile", features=["user-profile.age"])
