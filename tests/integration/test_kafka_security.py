"""Kafka over SASL (PLAIN, SCRAM-SHA-256/512) and TLS, against the test broker's secured
listeners: sources and a sink log in, a wrong password fails clearly, no secret leaks.

The broker, its CA and its test users come from ``scripts/services.sh`` (see the
``kafka_security`` fixture). Secrets reach fs-dagster the way they would in production:
by name, resolved from environment variables when a run starts.
"""

from __future__ import annotations

import json
import logging
import secrets
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

import fs_dagster as fs
from fs_dagster.engine.sources import (
    KafkaAccessError,
    check_kafka_access,
    kafka_client_options,
    read_source,
)
from tests.fixtures.services import KafkaSecurity
from tests.integration.scenario import consume, expected_latest, make_events

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow]

SCHEMA = "user_id STRING, amount DOUBLE, is_remote BOOLEAN, ts TIMESTAMP"
USER_SECRET = "fs-test-kafka-user"  # read from FS_TEST_KAFKA_USER
PASSWORD_SECRET = "fs-test-kafka-password"  # read from FS_TEST_KAFKA_PASSWORD
KEY_PASSWORD_SECRET = "fs-test-kafka-key-password"  # read from FS_TEST_KAFKA_KEY_PASSWORD


@dataclass(frozen=True)
class Login:
    """One way in: the listener, and the auth_configuration a source or sink names."""

    id: str
    listener: str  # SASL_PLAINTEXT, SASL_SSL or SSL
    mechanism: str | None  # the SASL mechanism, None for mutual TLS

    def auth(self, security: KafkaSecurity) -> fs.SaslAuthentication | fs.SslAuthentication:
        if self.mechanism is None:
            return fs.SslAuthentication(
                ca_location=security.ca_location,
                certificate_location=security.client_certificate,
                key_location=security.client_key,
                key_password_secret=KEY_PASSWORD_SECRET,
            )
        ssl = self.listener == "SASL_SSL"
        return fs.SaslAuthentication(
            username_secret=USER_SECRET,
            password_secret=PASSWORD_SECRET,
            sasl_mechanism={
                "PLAIN": fs.SaslMechanism.PLAIN,
                "SCRAM-SHA-256": fs.SaslMechanism.SCRAMSHA256,
                "SCRAM-SHA-512": fs.SaslMechanism.SCRAMSHA512,
            }[self.mechanism],
            security_protocol=(
                fs.SecurityProtocol.SASL_SSL if ssl else fs.SecurityProtocol.SASL_PLAINTEXT
            ),
            ssl_ca_location=security.ca_location if ssl else None,
        )

    def bootstrap(self, security: KafkaSecurity) -> str:
        return {
            "SASL_PLAINTEXT": security.sasl_plaintext,
            "SASL_SSL": security.sasl_ssl,
            "SSL": security.ssl,
        }[self.listener]

    def provide_secrets(self, security: KafkaSecurity, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put this login's secrets where resolve_secret finds them: the environment."""
        if self.mechanism is None:
            monkeypatch.setenv("FS_TEST_KAFKA_KEY_PASSWORD", security.client_key_password)
        else:
            user = security.users[self.mechanism]
            monkeypatch.setenv("FS_TEST_KAFKA_USER", user.username)
            monkeypatch.setenv("FS_TEST_KAFKA_PASSWORD", user.password)


SCRAM_256 = Login("sasl-plaintext-scram-sha-256", "SASL_PLAINTEXT", "SCRAM-SHA-256")
LOGINS = [
    SCRAM_256,
    Login("sasl-plaintext-plain", "SASL_PLAINTEXT", "PLAIN"),
    Login("ssl-client-certificate", "SSL", None),
    Login("sasl-ssl-scram-sha-512", "SASL_SSL", "SCRAM-SHA-512"),
]


@pytest.fixture(autouse=True)
def environment_secrets_only() -> Iterator[None]:
    fs.set_secret_resolver(None)
    yield
    fs.set_secret_resolver(None)


def produce_secured(config: dict[str, str], topic: str, values: Iterable[str]) -> int:
    """Produce over a secured listener (the producer side of the login) and wait."""
    from confluent_kafka import Producer

    producer = Producer(config)
    count = 0
    for value in values:
        producer.produce(topic, value=value)
        count += 1
    assert producer.flush(30) == 0, "messages left unsent"
    return count


def consume_secured(config: dict[str, str], topic: str, expect: int) -> list[Any]:
    """Every message value of ``topic`` read over a secured listener, parsed as JSON."""
    return [value for _, value in consume(config, topic, expect)]


def spend_feature_set(
    name: str,
    source: fs.KafkaSource,
    sinks: Sequence[fs.KafkaSink] = (),
) -> fs.FeatureSet:
    def transformation() -> fs.SparkSqlTransformation:
        return fs.SparkSqlTransformation(f"SELECT user_id, amount, ts FROM {source.name}")

    transformation.__name__ = name.replace("-", "_")
    return fs.streaming.feature_set(
        name=name,
        key="user_id",
        data_sources=[source],
        timestamp_column_name="ts",
        online_trigger_interval=1,
        auxiliary_sinks=sinks,
    )(transformation)


def feature_store(
    spark: SparkSession, tmp_path: Path, feature_set: fs.FeatureSet
) -> fs.FeatureStore:
    return fs.FeatureStore(
        online_store=fs.SqliteOnlineStore(tmp_path / "online.db"),
        offline_root=str(tmp_path / "offline"),
        checkpoint_root=str(tmp_path / "checkpoints"),
        feature_sets=[feature_set],
        spark=spark,
    )


def dagster_metadata_dump(feature_set: fs.FeatureSet, tmp_path: Path) -> str:
    """Every asset spec's description and metadata of the feature set's definitions."""
    defs = fs.build_definitions(
        feature_sets=[feature_set],
        feature_store=fs.FeatureStoreResource(
            offline_root=str(tmp_path / "offline"),
            checkpoint_root=str(tmp_path / "checkpoints"),
            sqlite_path=str(tmp_path / "online.db"),
        ),
        pyspark=fs.spark_resource(fs.SparkSettings()),
        start_automatically=False,
    )
    specs = defs.resolve_all_asset_specs()
    assert specs, "no asset specs to scan"
    return "\n".join(
        f"{spec.key} {spec.description} {spec.metadata!r} {spec.tags!r}" for spec in specs
    )


class SparkLogFile:
    """A log4j2 file appender on Spark's root logger, at INFO, for the duration of a test.

    Spark's own logging goes to the JVM's stderr, which pytest cannot capture once the
    session runs; this appender writes what Spark and the Kafka clients log to a file.
    """

    def __init__(self, spark: SparkSession, path: Path) -> None:
        self.spark = spark
        self.path = path
        jvm: Any = spark.sparkContext._jvm
        core = jvm.org.apache.logging.log4j.core
        self.context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
        self.config = self.context.getConfiguration()
        layout = core.layout.PatternLayout.createDefaultLayout(self.config)
        name = f"fs-secret-scan-{uuid.uuid4().hex[:8]}"
        builder = core.appender.FileAppender.newBuilder()
        builder.setName(name)
        builder.withFileName(str(path))
        builder.setLayout(layout)
        builder.setConfiguration(self.config)
        self.appender = builder.build()
        self.appender.start()
        self.config.addAppender(self.appender)
        self.root = self.config.getRootLogger()
        self.root.addAppender(self.appender, None, None)
        self.spark.sparkContext.setLogLevel("INFO")
        self.context.updateLoggers()

    def close(self) -> str:
        self.spark.sparkContext.setLogLevel("WARN")
        self.root.removeAppender(self.appender.getName())
        self.context.updateLoggers()
        self.appender.stop()
        return self.path.read_text(errors="replace") if self.path.exists() else ""


@pytest.fixture
def spark_log(spark: SparkSession, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A callable returning what Spark logged (at INFO) since the test started."""
    log = SparkLogFile(spark, tmp_path / "spark.log")
    closed: list[str] = []

    def text() -> str:
        if not closed:
            closed.append(log.close())
        return closed[0]

    try:
        yield text
    finally:
        text()


def assert_no_secret(texts: dict[str, str], secret_values: Iterable[str]) -> None:
    for secret in secret_values:
        assert len(secret) >= 8  # a real, generated secret: a miss is not by chance
        for where, text in texts.items():
            assert secret not in text, f"a secret value appears in {where}"


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize("login", LOGINS, ids=[login.id for login in LOGINS])
def test_kafka_source_ingests_over_a_secured_listener(
    spark: SparkSession,
    kafka_security: KafkaSecurity,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    login: Login,
) -> None:
    topic = topic_factory(partitions=2)
    events = make_events(60, users=9, seed=len(login.id))
    produced = produce_secured(
        kafka_security.client_config(login.listener, login.mechanism),
        topic,
        (json.dumps(e) for e in events),
    )
    assert produced == len(events)

    login.provide_secrets(kafka_security, monkeypatch)
    source = fs.KafkaSource(
        name=f"secured_{uuid.uuid4().hex[:8]}",
        bootstrap_servers=login.bootstrap(kafka_security),
        topic=topic,
        schema=SCHEMA,
        auth_configuration=login.auth(kafka_security),
    )
    feature_set = spend_feature_set(f"secured-{login.id}", source)
    client = feature_store(spark, tmp_path, feature_set)
    reports = client.ingest(feature_set, pipelines=("online",))

    assert sum(r.rows_in for r in reports) == len(events)
    expected = expected_latest(events)
    got = client.get_online_features(feature_set, sorted(expected)).set_index("user_id")
    for user, event in expected.items():
        assert got.loc[user, "amount"] == pytest.approx(event["amount"])


def test_a_wrong_password_fails_clearly_and_no_secret_leaks(
    spark: SparkSession,
    kafka_security: KafkaSecurity,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    spark_log: Callable[[], str],
) -> None:
    caplog.set_level(logging.DEBUG)
    topic = topic_factory()
    events = make_events(20, users=4, seed=3)
    config = kafka_security.client_config("SASL_PLAINTEXT", "SCRAM-SHA-256")
    produce_secured(config, topic, (json.dumps(e) for e in events))
    SCRAM_256.provide_secrets(kafka_security, monkeypatch)
    right = kafka_security.users["SCRAM-SHA-256"].password
    auth = SCRAM_256.auth(kafka_security)
    bootstrap = kafka_security.sasl_plaintext

    def source(name: str) -> fs.KafkaSource:
        return fs.KafkaSource(
            name=name,
            bootstrap_servers=bootstrap,
            topic=topic,
            schema=SCHEMA,
            auth_configuration=auth,
        )

    # The right password: ingestion works, and Spark's plan shows the options redacted.
    good = spend_feature_set("secured-scan", source("secured_scan"))
    client = feature_store(spark, tmp_path / "good", good)
    reports = client.ingest(good, pipelines=("online",))
    assert sum(r.rows_in for r in reports) == len(events)
    plan = read_source(spark, good.source)._jdf.queryExecution().toString()
    assert "kafka.sasl.jaas.config" in plan
    assert "redacted" in plan

    # A wrong password: a clear error before Spark reads anything.
    wrong = "wrong-" + secrets.token_urlsafe(12)
    monkeypatch.setenv("FS_TEST_KAFKA_PASSWORD", wrong)
    bad = spend_feature_set("secured-wrong", source("secured_wrong"))
    with pytest.raises(KafkaAccessError) as caught:
        feature_store(spark, tmp_path / "bad", bad).ingest(bad, pipelines=("online",))
    message = str(caught.value)
    assert message.startswith(
        f"Kafka source 'secured_wrong': login to {bootstrap} failed "
        f"(SASL_PLAINTEXT, SCRAM-SHA-256, user from secret '{USER_SECRET}'): "
        "authentication failed - check the values of the secrets "
        f"'{USER_SECRET}' and '{PASSWORD_SECRET}'"
    ), message
    assert "invalid credentials" in message  # the broker's own reason, kept
    full_error = "".join(traceback.format_exception(caught.value))

    out, err = capfd.readouterr()
    texts = {
        "the error message": message,
        "the error's traceback": full_error,
        "Python logs": caplog.text,
        "captured stdout": out,
        "captured stderr": err,
        "Spark's log": spark_log(),
        "Spark's plan": plan,
        "the ingestion reports": repr(reports),
        "Dagster asset metadata": dagster_metadata_dump(good, tmp_path / "dagster"),
        "the definitions' repr": repr(good) + repr(good.source) + repr(bad.source),
    }
    # The scan sees where the login travels: Spark's and the Kafka client's logs, and
    # py4j's DEBUG records of the options sent to the JVM.
    assert "sasl.jaas.config" in texts["Spark's log"]
    assert "kafka.sasl.jaas.config" in texts["Python logs"]
    assert_no_secret(texts, [right, wrong, *kafka_security.secrets])


def test_missing_topic_certificate_or_broker_fail_clearly(
    spark: SparkSession,
    kafka_security: KafkaSecurity,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    SCRAM_256.provide_secrets(kafka_security, monkeypatch)
    missing = f"fs-test-missing-{uuid.uuid4().hex[:8]}"
    source = fs.KafkaSource(
        name="secured_missing_topic",
        bootstrap_servers=kafka_security.sasl_plaintext,
        topic=missing,
        schema=SCHEMA,
        auth_configuration=SCRAM_256.auth(kafka_security),
    )
    # A missing topic is said loudly, and the query waits for it (a chained feature
    # set's topic appears with its upstream sink's first message).
    with caplog.at_level(logging.WARNING, logger="fs_dagster.engine.sources"):
        read_source(spark, source)
    assert (
        f"Kafka source 'secured_missing_topic': topic '{missing}' does not exist yet on "
        f"{kafka_security.sasl_plaintext}; the query reads it once it is created"
    ) in caplog.text

    # Mutual TLS without a client certificate: refused, and said so.
    no_certificate = fs.KafkaSource(
        name="secured_no_certificate",
        bootstrap_servers=kafka_security.ssl,
        topic=missing,
        schema=SCHEMA,
        auth_configuration=fs.SslAuthentication(ca_location=kafka_security.ca_location),
    )
    with pytest.raises(KafkaAccessError, match="refused the client certificate"):
        read_source(spark, no_certificate)

    # No broker at the address: said so once the timeout passes.
    with pytest.raises(KafkaAccessError) as caught:
        check_kafka_access(
            "Kafka sink", "nowhere", "127.0.0.1:1", SCRAM_256.auth(kafka_security), timeout=2
        )
    assert str(caught.value).startswith(
        "Kafka sink 'nowhere': login to 127.0.0.1:1 failed (SASL_PLAINTEXT, SCRAM-SHA-256, "
        f"user from secret '{USER_SECRET}'): no answer from the broker within 2 s: "
        "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    ), caught.value


# --------------------------------------------------------------------------- sink


def test_kafka_sink_publishes_over_sasl(
    spark: SparkSession,
    kafka_security: KafkaSecurity,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source_topic, sink_topic = topic_factory(), topic_factory()
    events = make_events(30, users=6, seed=5)
    config = kafka_security.client_config("SASL_PLAINTEXT", "SCRAM-SHA-256")
    produce_secured(config, source_topic, (json.dumps(e) for e in events))
    SCRAM_256.provide_secrets(kafka_security, monkeypatch)
    auth = SCRAM_256.auth(kafka_security)
    source = fs.KafkaSource(
        name="secured_sink_source",
        bootstrap_servers=kafka_security.sasl_plaintext,
        topic=source_topic,
        schema=SCHEMA,
        auth_configuration=auth,
    )
    sink = fs.KafkaSink(
        name="secured_out",
        topic=sink_topic,
        bootstrap_servers=kafka_security.sasl_plaintext,
        message_format=fs.MessageFormat.JSON,
        auth_configuration=auth,
        attachment_point=fs.OnlineStreamingAttachmentPoint(),
    )
    feature_set = spend_feature_set("secured-sink", source, [sink])
    client = feature_store(spark, tmp_path, feature_set)
    client.ingest(feature_set, pipelines=("online",))

    values = consume_secured(config, sink_topic, expect=len(events))
    assert len(values) == len(events)  # one message per feature row, one run, no replay
    assert all(isinstance(v, dict) and isinstance(v.get("features"), dict) for v in values)
    assert sorted(v["features"]["amount"] for v in values) == sorted(e["amount"] for e in events)


@pytest.mark.timeout(300)
def test_spark_own_login_failure_shows_no_password(
    spark: SparkSession,
    kafka_security: KafkaSecurity,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the pre-flight check (a password changed since), Spark's error hides it too."""
    topic = topic_factory()
    wrong = "wrong-" + secrets.token_urlsafe(12)
    SCRAM_256.provide_secrets(kafka_security, monkeypatch)
    monkeypatch.setenv("FS_TEST_KAFKA_PASSWORD", wrong)
    reader = spark.read.format("kafka").option("subscribe", topic)
    for key, value in kafka_client_options(
        kafka_security.sasl_plaintext, SCRAM_256.auth(kafka_security)
    ).items():
        reader = reader.option(key, value)
    with pytest.raises(Exception) as caught:  # its type depends on where Spark fails
        reader.load().count()
    text = "".join(traceback.format_exception(caught.value))
    assert "Authentication failed" in text or "SaslAuthentication" in text, text[-2000:]
    assert_no_secret({"Spark's exception": text}, [wrong, *kafka_security.secrets])
