"""Definition-time validation: each error names the feature set and the parameter."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import fs_dagster as fs
from fs_dagster.orchestration.definitions import check_unique_names

pytestmark = pytest.mark.unit

SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"


@pytest.fixture(autouse=True)
def source() -> fs.FileSource:
    return fs.FileSource(name="events", path="/tmp/fs-dagster-unit-events", schema=SCHEMA)


def sql() -> fs.SparkSqlTransformation:
    return fs.SparkSqlTransformation("SELECT user_id, amount, ts FROM events")


def declare(**overrides: Any) -> fs.FeatureSet:
    params: dict[str, Any] = {
        "name": "user-spend",
        "key": "user_id",
        "data_sources": ["events"],
        "timestamp_column_name": "ts",
    }
    params.update(overrides)
    function: Callable[[], Any] = overrides.pop("function", sql)
    params.pop("function", None)
    return fs.streaming.feature_set(**params)(function)


def error_of(**overrides: Any) -> fs.FeatureSetDefinitionError:
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        declare(**overrides)
    return caught.value


def test_valid_feature_set_keeps_its_parameters() -> None:
    feature_set = declare(online_ttl="7 days", online_trigger_interval=0)
    assert feature_set.name == "user-spend"
    assert feature_set.key == ("user_id",)
    assert feature_set.timestamp_column == "ts"
    assert feature_set.online_ttl == timedelta(days=7)
    assert feature_set.online_trigger_interval == 0
    assert feature_set.storage_name == "user_spend"


def test_name_defaults_to_function_name() -> None:
    def spend_per_user() -> fs.SparkSqlTransformation:
        return sql()

    feature_set = declare(name=None, function=spend_per_user)
    assert feature_set.name == "spend-per-user"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("1user", "starting with a letter"),
        ("user spend", "letters, digits, hyphens and underscores"),
        ("user.spend", "letters, digits, hyphens and underscores"),
        ("-user", "starting with a letter"),
        ("a" * 41, "at most 40"),
        ("", "non-empty name"),
    ],
)
def test_invalid_name(name: str, fragment: str) -> None:
    error = error_of(name=name)
    assert error.parameter == "name"
    assert "parameter 'name'" in str(error)
    assert fragment in str(error)


def test_name_of_40_characters_is_accepted() -> None:
    assert declare(name="a" * 40).name == "a" * 40


@pytest.mark.parametrize(
    ("cron", "fragment"),
    [
        ("*/30 * * *", "has 4 fields"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("* 24 * * *", "hour field"),
        ("*/0 * * * *", "step of 0"),
        ("* * * foo *", "month field"),
        ("every hour", "fields"),
    ],
)
def test_invalid_cron(cron: str, fragment: str) -> None:
    error = error_of(offline_scheduling_policy=cron)
    assert "feature set 'user-spend', parameter 'offline_scheduling_policy'" in str(error)
    assert fragment in str(error)


@pytest.mark.parametrize(
    "cron", ["*/30 * * * *", "0 3 * * mon-fri", "@hourly", "5,35 */2 1-15 jan *"]
)
def test_valid_cron(cron: str) -> None:
    assert declare(offline_scheduling_policy=cron).offline_scheduling_policy == cron


@pytest.mark.parametrize("interval", [-1, float("nan"), "5", True, 10**9])
def test_invalid_trigger_interval(interval: object) -> None:
    error = error_of(online_trigger_interval=interval)
    assert "parameter 'online_trigger_interval'" in str(error)
    assert "number of seconds" in str(error)


@pytest.mark.parametrize(
    ("ttl", "fragment"), [("7 fortnights", "unknown unit"), (0, "longer than zero")]
)
def test_invalid_ttl(ttl: object, fragment: str) -> None:
    error = error_of(online_ttl=ttl)
    assert "parameter 'online_ttl'" in str(error)
    assert fragment in str(error)


def test_unknown_source_is_named() -> None:
    error = error_of(data_sources=["clicks"])
    assert "feature set 'user-spend', parameter 'data_sources'" in str(error)
    assert "unknown source 'clicks'" in str(error)
    assert "events" in str(error)


def test_invalid_key_and_timestamp_columns() -> None:
    assert "parameter 'key'" in str(error_of(key=[]))
    assert "parameter 'key'" in str(error_of(key="user id"))
    assert "listed twice" in str(error_of(key=["user_id", "user_id"]))
    assert "parameter 'timestamp_column_name'" in str(error_of(timestamp_column_name="1ts"))
    assert "cannot be a key" in str(error_of(timestamp_column_name="user_id"))


def test_transformation_must_be_a_transformation() -> None:
    error = error_of(function=lambda: "SELECT 1")
    assert "parameter 'transformation'" in str(error)
    assert "SparkSqlTransformation or UdfTransformation" in str(error)


@pytest.mark.parametrize(
    ("topics", "fragment"),
    [
        ({}, "got none"),
        ({"topic": "a", "topics": ["b"]}, "got topic, topics"),
        ({"topic": "a", "topic_pattern": "b.*"}, "got topic, topic_pattern"),
    ],
)
def test_kafka_source_needs_exactly_one_topic_option(topics: dict[str, Any], fragment: str) -> None:
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        fs.KafkaSource(name="tx", bootstrap_servers="127.0.0.1:9092", schema=SCHEMA, **topics)
    message = str(caught.value)
    assert "Kafka source 'tx', parameter 'topic'" in message
    assert "exactly one of topic, topics or topic_pattern" in message
    assert fragment in message


def test_kafka_source_rejects_unknown_format_and_bad_name() -> None:
    with pytest.raises(fs.FeatureSetDefinitionError, match="parameter 'value_format'"):
        fs.KafkaSource(
            name="tx",
            bootstrap_servers="b:9092",
            topic="t",
            schema=SCHEMA,
            value_format="avro",  # type: ignore[arg-type]
        )
    with pytest.raises(fs.FeatureSetDefinitionError, match="parameter 'name'"):
        fs.KafkaSource(name="tx.1", bootstrap_servers="b:9092", topic="t", schema=SCHEMA)


def test_duplicate_feature_set_names() -> None:
    first = declare(name="user-spend")
    second = declare(name="user-spend")
    with pytest.raises(fs.FeatureSetDefinitionError) as caught:
        check_unique_names([first, second])
    assert "feature set 'user-spend', parameter 'name'" in str(caught.value)
    assert "must be unique" in str(caught.value)


def test_secrets_never_show_in_repr() -> None:
    # Kafka secrets are named, never held (tests/unit/test_kafka_auth.py checks them);
    # the Cassandra store holds its password and must not print it.
    store = fs.CassandraOnlineStore(["127.0.0.1"], username="svc", password="hunter2")
    assert "hunter2" not in repr(store)
    assert "hunter2" not in str(store.describe())


def test_metadata_and_execution_specification_in_either_order() -> None:
    inner = fs.streaming.metadata(owner="risk-team", description="d")(sql)
    feature_set = fs.streaming.feature_set(
        name="a", key="user_id", data_sources=["events"], timestamp_column_name="ts"
    )(inner)
    assert feature_set.metadata.owner == "risk-team"
    outer = fs.streaming.execution_specification(online_cluster_template=fs.ClusterTemplate.LARGE)(
        feature_set
    )
    assert outer.execution_specification.online_cluster_template is fs.ClusterTemplate.LARGE
    assert fs.ClusterTemplate.LARGE.spark_conf()["spark.executor.instances"] == "4"


def test_cluster_templates_size_runs_on_a_cluster_only() -> None:
    from fs_dagster.orchestration.resources import run_spark_conf

    base = {"spark.master": "local[*]", "spark.executor.memory": "1g"}
    assert run_spark_conf(base, fs.ClusterTemplate.XLARGE) == base
    cluster = {"spark.master": "spark://10.0.0.1:7077", "spark.executor.memory": "1g"}
    sized = run_spark_conf(cluster, fs.ClusterTemplate.MEDIUM)
    assert sized["spark.executor.memory"] == "8g"
    assert sized["spark.executor.instances"] == "2"
    assert sized["spark.master"] == "spark://10.0.0.1:7077"
