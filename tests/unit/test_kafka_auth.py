"""Kafka authentication definitions: secret lookup, validation, and no secret in repr.

No broker here: the login itself is tested against the real secured listeners in
``tests/integration/test_kafka_security.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fs_dagster as fs
from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.kafka_auth import (
    SecretNotFoundError,
    resolve_secret,
    secret_environment_variable,
)
from fs_dagster.engine.sources import (
    KafkaAccessError,
    check_kafka_access,
    confluent_kafka_config,
    kafka_client_options,
)

pytestmark = pytest.mark.unit

SCHEMA = "user_id STRING, amount DOUBLE, ts TIMESTAMP"
USER = "svc-features"
PASSWORD = 'pa55-"quoted"-\\-w0rd'  # a quote and a backslash, for the JAAS quoting


@pytest.fixture(autouse=True)
def no_resolver() -> Iterator[None]:
    fs.set_secret_resolver(None)
    yield
    fs.set_secret_resolver(None)


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_USER", USER)
    monkeypatch.setenv("KAFKA_PASSWORD", PASSWORD)


def scram() -> fs.SaslAuthentication:
    return fs.SaslAuthentication(
        username_secret="kafka-user",
        password_secret="kafka-password",
        sasl_mechanism=fs.SaslMechanism.SCRAMSHA256,
        security_protocol=fs.SecurityProtocol.SASL_PLAINTEXT,
    )


# --------------------------------------------------------------------------- resolve_secret


def test_a_configured_resolver_answers_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", "from-env")
    fs.set_secret_resolver({"kafka-password": "from-vault"}.get)
    assert resolve_secret("kafka-password") == "from-vault"


def test_a_resolver_without_the_secret_falls_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", "from-env")
    fs.set_secret_resolver(lambda name: None)
    assert resolve_secret("kafka-password") == "from-env"


def test_the_exact_variable_name_wins_over_the_normalized_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("kafka-password", "exact")
    monkeypatch.setenv("KAFKA_PASSWORD", "normalized")
    assert resolve_secret("kafka-password") == "exact"


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("kafka-password", "KAFKA_PASSWORD"),
        ("prod/kafka.user", "PROD_KAFKA_USER"),
        ("Already_Upper9", "ALREADY_UPPER9"),
    ],
)
def test_the_normalized_variable_name(
    monkeypatch: pytest.MonkeyPatch, name: str, variable: str
) -> None:
    assert secret_environment_variable(name) == variable
    monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, "value")
    assert resolve_secret(name) == "value"


def test_a_missing_secret_is_named_with_where_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("no-such-secret", raising=False)
    monkeypatch.delenv("NO_SUCH_SECRET", raising=False)
    with pytest.raises(SecretNotFoundError) as caught:
        resolve_secret("no-such-secret")
    message = str(caught.value)
    assert "'no-such-secret'" in message
    assert "NO_SUCH_SECRET" in message
    assert "set_secret_resolver" in message


def test_an_empty_value_is_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMPTY_SECRET", "")
    assert resolve_secret("empty-secret") == ""


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "parameter", "accepted"),
    [
        ({"username_secret": "my user"}, "username_secret", "name of a secret"),
        ({"password_secret": ""}, "password_secret", "name of a secret"),
        ({"password_secret": 123}, "password_secret", "name of a secret"),
        ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism", "SaslMechanism.PLAIN"),
        ({"security_protocol": "SSL"}, "security_protocol", "SecurityProtocol.SASL_SSL"),
    ],
)
def test_sasl_authentication_rejects_wrong_values(
    kwargs: dict[str, Any], parameter: str, accepted: str
) -> None:
    params: dict[str, Any] = {"username_secret": "kafka-user", "password_secret": "kafka-pw"}
    params.update(kwargs)
    with pytest.raises(FeatureSetDefinitionError) as caught:
        fs.SaslAuthentication(**params)
    assert caught.value.parameter == parameter
    assert accepted in str(caught.value)
    assert "SASL authentication" in str(caught.value)


def test_a_secret_given_instead_of_its_name_is_not_echoed() -> None:
    with pytest.raises(FeatureSetDefinitionError) as caught:
        fs.SaslAuthentication(username_secret="kafka-user", password_secret="s3cr3t pa$$ word!")
    assert "s3cr3t" not in str(caught.value)


def test_ssl_authentication_needs_certificate_and_key_together() -> None:
    with pytest.raises(FeatureSetDefinitionError) as caught:
        fs.SslAuthentication(ca_location="/ca.pem", certificate_location="/client.pem")
    assert caught.value.parameter == "certificate_location"
    assert "key_location" in str(caught.value)


def test_ssl_authentication_checks_the_key_password_secret_name() -> None:
    with pytest.raises(FeatureSetDefinitionError) as caught:
        fs.SslAuthentication(
            certificate_location="/c.pem", key_location="/k.pem", key_password_secret="a b"
        )
    assert caught.value.parameter == "key_password_secret"


def test_sources_and_sinks_reject_other_auth_objects() -> None:
    with pytest.raises(FeatureSetDefinitionError) as caught:
        fs.KafkaSource(
            name="unit_auth_bad",
            bootstrap_servers="127.0.0.1:9094",
            topic="t",
            schema=SCHEMA,
            auth_configuration={"username": "u"},  # type: ignore[arg-type]
        )
    message = str(caught.value)
    assert "'unit_auth_bad'" in message
    assert "auth_configuration" in message
    assert "SaslAuthentication(...), SslAuthentication(...) or None" in message
    with pytest.raises(FeatureSetDefinitionError) as caught:
        fs.KafkaSink(
            name="unit_sink_bad",
            topic="t",
            bootstrap_servers="127.0.0.1:9094",
            auth_configuration="SASL",  # type: ignore[arg-type]
        )
    assert "'unit_sink_bad'" in str(caught.value)
    assert caught.value.parameter == "auth_configuration"


# --------------------------------------------------------------------------- no secret shown


@pytest.mark.usefixtures("secrets_in_env")
def test_repr_of_auth_sources_and_sinks_holds_no_secret_value(tmp_path: Path) -> None:
    sasl = scram()
    ssl = fs.SslAuthentication(
        ca_location=str(tmp_path / "ca.pem"),
        certificate_location=str(tmp_path / "c.pem"),
        key_location=str(tmp_path / "k.pem"),
        key_password_secret="kafka-password",
    )
    source = fs.KafkaSource(
        name="unit_auth_repr",
        bootstrap_servers="127.0.0.1:9094",
        topic="t",
        schema=SCHEMA,
        auth_configuration=sasl,
    )
    sink = fs.KafkaSink(
        name="unit_auth_repr_sink",
        topic="out",
        bootstrap_servers="127.0.0.1:9096",
        auth_configuration=ssl,
    )
    for shown in (repr(sasl), str(sasl), repr(ssl), repr(source), str(source), repr(sink)):
        assert PASSWORD not in shown
        assert USER not in shown
    assert "kafka-password" in repr(sasl)  # the secret's name is what is shown


# --------------------------------------------------------------------------- client settings


@pytest.mark.usefixtures("secrets_in_env")
def test_spark_and_confluent_settings_carry_the_same_sasl_login() -> None:
    options = kafka_client_options("127.0.0.1:9094", scram())
    assert options["kafka.security.protocol"] == "SASL_PLAINTEXT"
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-256"
    assert options["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{USER}" password="pa55-\\"quoted\\"-\\\\-w0rd";'
    )
    config = confluent_kafka_config("127.0.0.1:9094", scram())
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-256"
    assert (config["sasl.username"], config["sasl.password"]) == (USER, PASSWORD)


@pytest.mark.usefixtures("secrets_in_env")
def test_a_client_certificate_reaches_spark_inline(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (tmp_path / "k.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n"
    )
    auth = fs.SslAuthentication(
        ca_location=str(tmp_path / "ca.pem"),
        certificate_location=str(tmp_path / "c.pem"),
        key_location=str(tmp_path / "k.pem"),
        key_password_secret="kafka-password",
    )
    options = kafka_client_options("b:9096", auth)
    assert options["kafka.security.protocol"] == "SSL"
    assert options["kafka.ssl.truststore.location"] == str(tmp_path / "ca.pem")
    # Kafka reads these two settings as PEM content, not as paths.
    assert options["kafka.ssl.keystore.certificate.chain"].startswith("-----BEGIN CERTIFICATE")
    assert options["kafka.ssl.keystore.key"].startswith("-----BEGIN PRIVATE KEY")
    assert options["kafka.ssl.key.password"] == PASSWORD
    config = confluent_kafka_config("b:9096", auth)
    assert config["ssl.certificate.location"] == str(tmp_path / "c.pem")
    assert config["ssl.key.password"] == PASSWORD


@pytest.mark.usefixtures("secrets_in_env")
def test_py4j_debug_records_of_spark_options_hold_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = kafka_client_options("127.0.0.1:9094", scram())
    caplog.set_level(logging.DEBUG, logger="py4j")
    # What py4j logs when the options reach the JVM (the command holds every argument).
    logging.getLogger("py4j.clientserver").debug(
        "Command to send: %s", "c\no12\noption\n" + options["kafka.sasl.jaas.config"]
    )
    # On the records, not caplog.text: its format is whatever the session's logging
    # set up (Dagster's JSON formatter escapes the quotes once a Dagster test ran).
    [message] = [r.getMessage() for r in caplog.records if r.name.startswith("py4j")]
    assert message.startswith("Command to send")
    assert 'username="***" password="***"' in message
    for secret in (USER, PASSWORD):
        assert secret not in message
        assert secret not in caplog.text


def test_access_check_names_a_missing_secret_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_USER", USER)
    monkeypatch.delenv("KAFKA_PASSWORD", raising=False)
    monkeypatch.delenv("kafka-password", raising=False)
    with pytest.raises(KafkaAccessError) as caught:
        check_kafka_access("Kafka source", "transactions", "127.0.0.1:1", scram(), ["t"])
    message = str(caught.value)
    assert message.startswith("Kafka source 'transactions': secret 'kafka-password' has no value")
    assert USER not in message


def test_access_check_names_a_missing_certificate_file(tmp_path: Path) -> None:
    auth = fs.SslAuthentication(ca_location=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(KafkaAccessError) as caught:
        check_kafka_access("Kafka sink", "features_out", "127.0.0.1:1", auth, ["t"])
    assert str(caught.value) == (
        f"Kafka sink 'features_out': SslAuthentication ca_location "
        f"'{tmp_path / 'missing-ca.pem'}' is not a file; expected the path of a PEM file"
    )
