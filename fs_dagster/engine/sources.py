"""Reading a source as a stream (or a batch), with malformed records tagged, not dropped.

Every source becomes a DataFrame with the same shape: the parsed value columns, for
Kafka the metadata columns, and three internal columns:

- ``__fs_payload``: the raw record as text (kept for the dead-letter table);
- ``__fs_position``: where it came from (``topic/partition/offset``, ``path:line`` for
  JSON-lines files, the file path for other files);
- ``__fs_error``: why the record is unusable, or null for a good record.

A record is unusable when it is not valid JSON (or CSV), when a value does not fit the
declared schema, or when a key or timestamp column the feature set needs is missing.

Kafka sources (and sinks, through the same functions) log in with their
``auth_configuration``: :func:`kafka_client_options` gives Spark's ``kafka.*`` options,
:func:`confluent_kafka_config` the same login for confluent-kafka, and
:func:`check_kafka_access` tries that login before Spark starts, so that a wrong password,
an unreachable broker or a missing topic fails at once with a message that names the
secret (never its value) instead of a Spark query retrying.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.types import StringType, StructField, StructType

from fs_dagster.definitions.kafka_auth import (
    KafkaAuthentication,
    SaslAuthentication,
    SaslMechanism,
    SecretNotFoundError,
    SecurityProtocol,
    SslAuthentication,
    resolve_secret,
)
from fs_dagster.definitions.sources import (
    KAFKA_METADATA_COLUMNS,
    DataSource,
    FileSource,
    KafkaSource,
)
from fs_dagster.planning.plan import INTERNAL_PREFIX

_LOG = logging.getLogger(__name__)

__all__ = [
    "ERROR_COLUMN",
    "KAFKA_FETCH_MAX_WAIT_MS",
    "PAYLOAD_COLUMN",
    "POSITION_COLUMN",
    "KafkaAccessError",
    "check_kafka_access",
    "confluent_kafka_config",
    "internal_columns",
    "kafka_client_options",
    "parse_schema",
    "read_source",
    "source_columns",
    "user_columns",
]

PAYLOAD_COLUMN = INTERNAL_PREFIX + "payload"
POSITION_COLUMN = INTERNAL_PREFIX + "position"
ERROR_COLUMN = INTERNAL_PREFIX + "error"
_CORRUPT_COLUMN = INTERNAL_PREFIX + "corrupt"
_PARSED_COLUMN = INTERNAL_PREFIX + "parsed"
#: ``kafka.fetch.max.wait.ms`` of a Kafka source unless its options set it (see
#: ``_read_kafka``).
KAFKA_FETCH_MAX_WAIT_MS = "10"


def parse_schema(spark: SparkSession, ddl: str) -> StructType:
    """Parse a Spark DDL schema string (``"user_id STRING, amount DOUBLE"``)."""
    parsed = spark.createDataFrame([], ddl).schema
    return parsed


def kafka_client_options(
    bootstrap_servers: str, auth: KafkaAuthentication | None
) -> dict[str, str]:
    """Spark ``kafka.*`` options for a broker address and authentication.

    Secrets are resolved here, when a run starts. The result holds them: pass it to
    Spark, never to a log or to metadata.
    """
    options = {"kafka.bootstrap.servers": bootstrap_servers}
    if isinstance(auth, SaslAuthentication):
        mechanism = auth.sasl_mechanism.value
        options["kafka.security.protocol"] = auth.security_protocol.value
        options["kafka.sasl.mechanism"] = mechanism
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if auth.sasl_mechanism is SaslMechanism.PLAIN
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        user = _jaas_quoted(resolve_secret(auth.username_secret))
        password = _jaas_quoted(resolve_secret(auth.password_secret))
        _PY4J_LOG_REDACTION.add(user, password)
        options["kafka.sasl.jaas.config"] = (
            f'{module} required username="{user}" password="{password}";'
        )
        if auth.security_protocol is SecurityProtocol.SASL_SSL and auth.ssl_ca_location:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = auth.ssl_ca_location
    elif isinstance(auth, SslAuthentication):
        options["kafka.security.protocol"] = "SSL"
        if auth.ca_location:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = auth.ca_location
        if auth.certificate_location and auth.key_location:
            # The client's PEM key store travels inline: these two settings take the
            # files' contents (not paths), which also reach executors on other hosts.
            options["kafka.ssl.keystore.type"] = "PEM"
            options["kafka.ssl.keystore.certificate.chain"] = _read_pem(
                auth.certificate_location, "certificate_location"
            )
            options["kafka.ssl.keystore.key"] = _read_pem(auth.key_location, "key_location")
            _PY4J_LOG_REDACTION.add(options["kafka.ssl.keystore.key"])
            if auth.key_password_secret is not None:
                options["kafka.ssl.key.password"] = resolve_secret(auth.key_password_secret)
                _PY4J_LOG_REDACTION.add(options["kafka.ssl.key.password"])
    return options


class _SecretRedactingFilter(logging.Filter):
    """Blanks out the secret values given to Spark from py4j's log records.

    At DEBUG, py4j logs every command it sends to the JVM, and so every option a reader
    or writer is given, JAAS configurations included. Spark redacts its own logs; this
    does the same for the Python side. Installed on py4j's loggers at the first secret.
    """

    _LOGGERS = ("py4j.clientserver", "py4j.java_gateway")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()

    def add(self, *values: str) -> None:
        with self._lock:
            if not self._values:
                for name in self._LOGGERS:
                    logging.getLogger(name).addFilter(self)
            known = set(self._values) | {v for v in values if len(v) >= _MIN_SECRET_LENGTH}
            # Longest first, so that a secret containing another is blanked whole.
            self._values = tuple(sorted(known, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        values = self._values
        if values:
            text = record.getMessage()
            scrubbed = _scrub(text, values)
            if scrubbed != text:
                record.msg, record.args = scrubbed, None
        return True


_MIN_SECRET_LENGTH = 3  # shorter values would blank out ordinary text
_PY4J_LOG_REDACTION = _SecretRedactingFilter()


def _jaas_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _read_pem(path: str, parameter: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise FileNotFoundError(
            f"SslAuthentication {parameter} '{path}' cannot be read ({exc.strerror}); "
            "expected a PEM file"
        ) from None


def confluent_kafka_config(
    bootstrap_servers: str, auth: KafkaAuthentication | None
) -> dict[str, str]:
    """confluent-kafka (librdkafka) settings for a broker address and authentication:
    the same login as :func:`kafka_client_options` gives Spark.

    Secrets are resolved here; the result holds them: never log it.
    """
    config = {"bootstrap.servers": bootstrap_servers, "broker.address.family": "v4"}
    if isinstance(auth, SaslAuthentication):
        config["security.protocol"] = auth.security_protocol.value
        config["sasl.mechanisms"] = auth.sasl_mechanism.value
        config["sasl.username"] = resolve_secret(auth.username_secret)
        config["sasl.password"] = resolve_secret(auth.password_secret)
        if auth.security_protocol is SecurityProtocol.SASL_SSL and auth.ssl_ca_location:
            config["ssl.ca.location"] = auth.ssl_ca_location
    elif isinstance(auth, SslAuthentication):
        config["security.protocol"] = "SSL"
        if auth.ca_location:
            config["ssl.ca.location"] = auth.ca_location
        if auth.certificate_location and auth.key_location:
            config["ssl.certificate.location"] = auth.certificate_location
            config["ssl.key.location"] = auth.key_location
            if auth.key_password_secret is not None:
                config["ssl.key.password"] = resolve_secret(auth.key_password_secret)
    return config


class KafkaAccessError(RuntimeError):
    """A Kafka source or sink cannot log in or reach its topics.

    The message names the source or sink, the broker, the authentication and the
    secrets involved, never a secret's value.
    """


_ATTEMPT_S = 1.0
# "sasl_plaintext://127.0.0.1:9094/bootstrap: " before, "(after 3ms in state X)" after.
_BROKER_PREFIX = re.compile(r"^\S+://\S+?: ")
_STATE_SUFFIX = re.compile(r"\s*\(after \d+ms in state \w+\)\s*$")
_TRANSPORT_CODES = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
_SECRET_SETTINGS = frozenset({"sasl.username", "sasl.password", "ssl.key.password"})
# TLS alerts a broker sends when it does not accept the client's certificate.
_CERTIFICATE_REFUSED = ("alert bad certificate", "alert certificate required", "alert unknown ca")


def check_kafka_access(
    owner_kind: str,
    owner_name: str,
    bootstrap_servers: str,
    auth: KafkaAuthentication | None,
    topics: Sequence[str] = (),
    *,
    timeout: float = 20.0,
) -> list[str]:
    """Log in to Kafka as a source or sink would; return which of ``topics`` do not exist.

    Called before Spark starts, so that a refused login or an unreachable broker fails at
    once with a clear message rather than inside a query. A missing topic is the
    caller's to judge: a chained feature set's source topic appears with the first
    message its upstream sink writes.

    Args:
        owner_kind: what is logging in, for the message (``"Kafka source"``,
            ``"Kafka sink"``).
        owner_name: the source's or sink's name.
        bootstrap_servers: ``host:port[,host:port...]``.
        auth: the ``auth_configuration`` (``None`` for PLAINTEXT).
        topics: topics to look for (empty for a topic pattern).
        timeout: seconds to wait for an unreachable broker.

    Raises:
        KafkaAccessError: naming the owner, the broker, the authentication and the
            secrets, never their values.

    Example:
        >>> check_kafka_access(  # doctest: +SKIP
        ...     "Kafka source", "transactions", "127.0.0.1:9094",
        ...     SaslAuthentication("kafka-user", "kafka-password",
        ...                        SaslMechanism.SCRAMSHA256, SecurityProtocol.SASL_PLAINTEXT),
        ...     ["transactions"],
        ... )
    """
    where = f"{owner_kind} '{owner_name}'"
    login = f"login to {bootstrap_servers} failed ({_describe(auth)})"
    _check_files(where, auth)
    try:
        config = confluent_kafka_config(bootstrap_servers, auth)
    except SecretNotFoundError as exc:
        raise KafkaAccessError(f"{where}: {exc}") from None
    secrets = [v for k, v in config.items() if k in _SECRET_SETTINGS]
    errors: list[KafkaError] = []
    config_any: dict[str, Any] = {**config, "log_level": 0, "error_cb": errors.append}
    try:
        admin = AdminClient(config_any)
    except KafkaException as exc:
        detail = _scrub(_detail(exc.args[0] if exc.args else exc), secrets)
        hint = ""
        if isinstance(auth, SslAuthentication) and auth.key_location:
            secret = auth.key_password_secret
            hint = f" - check key_location '{auth.key_location}'" + (
                f" and the value of the secret '{secret}'" if secret else " (is it encrypted?)"
            )
        raise KafkaAccessError(
            f"{where}: {login}: the client settings were refused: {detail}{hint}"
        ) from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            metadata = admin.list_topics(timeout=_ATTEMPT_S)
            break
        except KafkaException:
            admin.poll(0)  # delivers the errors of this attempt to error_cb
        problem = _login_problem(errors, auth)
        if problem is not None or time.monotonic() >= deadline:
            if problem is None:
                last = next((e for e in reversed(errors) if e.code() in _TRANSPORT_CODES), None)
                said = f": {_detail(last)}" if last is not None else ""
                problem = (
                    f"no answer from the broker within {timeout:.0f} s{said} - check "
                    "bootstrap_servers, and that the listener at that address speaks "
                    f"{_protocol(auth)}"
                )
            raise KafkaAccessError(f"{where}: {login}: {_scrub(problem, secrets)}")
    absent = [t for t in topics if t not in metadata.topics]
    refused = {
        t: metadata.topics[t].error for t in topics if t not in absent and metadata.topics[t].error
    }
    if refused:
        said = "; ".join(f"'{t}': {_detail(e)}" for t, e in refused.items())
        raise KafkaAccessError(f"{where}: the broker refuses the topic metadata: {said}")
    return absent


def _describe(auth: KafkaAuthentication | None) -> str:
    if isinstance(auth, SaslAuthentication):
        return (
            f"{auth.security_protocol.value}, {auth.sasl_mechanism.value}, "
            f"user from secret '{auth.username_secret}'"
        )
    if isinstance(auth, SslAuthentication):
        parts = ["SSL", f"CA {auth.ca_location}" if auth.ca_location else "system CAs"]
        if auth.certificate_location:
            parts.append(f"client certificate {auth.certificate_location}")
        return ", ".join(parts)
    return "PLAINTEXT"


def _protocol(auth: KafkaAuthentication | None) -> str:
    if isinstance(auth, SaslAuthentication):
        return auth.security_protocol.value
    return "SSL" if isinstance(auth, SslAuthentication) else "PLAINTEXT"


def _check_files(where: str, auth: KafkaAuthentication | None) -> None:
    files: dict[str, str | None] = {}
    if isinstance(auth, SaslAuthentication):
        files["ssl_ca_location"] = auth.ssl_ca_location
    elif isinstance(auth, SslAuthentication):
        files["ca_location"] = auth.ca_location
        files["certificate_location"] = auth.certificate_location
        files["key_location"] = auth.key_location
    for parameter, path in files.items():
        if path is not None and not Path(path).is_file():
            raise KafkaAccessError(
                f"{where}: {type(auth).__name__} {parameter} '{path}' is not a file; "
                "expected the path of a PEM file"
            )


def _login_problem(errors: Sequence[KafkaError], auth: KafkaAuthentication | None) -> str | None:
    """What the client's errors say went wrong with the login (None: nothing definite)."""
    for error in errors:
        detail = _detail(error)
        if error.code() == KafkaError._AUTHENTICATION:
            if isinstance(auth, SaslAuthentication) and "handshake failed" in detail:
                return (
                    f"the listener does not offer {auth.sasl_mechanism.value} - check the "
                    f"port of bootstrap_servers and sasl_mechanism (broker: {detail})"
                )
            if isinstance(auth, SaslAuthentication):
                return (
                    f"authentication failed - check the values of the secrets "
                    f"'{auth.username_secret}' and '{auth.password_secret}', and that the "
                    f"user exists for {auth.sasl_mechanism.value} on that listener "
                    f"(broker: {detail})"
                )
            return f"authentication failed ({detail})"
        refused = any(alert in detail.lower() for alert in _CERTIFICATE_REFUSED)
        if error.code() == KafkaError._SSL or refused:
            hint = (
                "the broker refused the client certificate - set certificate_location and "
                "key_location to a certificate signed by a CA the listener trusts"
                if refused
                else "check that the CA file (ssl_ca_location / ca_location) signed the "
                "broker's certificate and that the certificate names the address used"
            )
            return f"TLS handshake failed: {hint} ({detail})"
    return None


def _detail(error: object) -> str:
    text = error.str() if isinstance(error, KafkaError) else str(error)
    return _STATE_SUFFIX.sub("", _BROKER_PREFIX.sub("", text))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret value blanked out, should a client library echo one."""
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def source_columns(spark: SparkSession, source: DataSource) -> StructType:
    """The columns a transformation sees for ``source`` (value columns, then metadata)."""
    value_schema = parse_schema(spark, source.schema)
    fields = list(value_schema.fields)
    if isinstance(source, KafkaSource):
        names = {f.name for f in fields}
        metadata = _kafka_metadata_schema()
        fields += [f for f in metadata.fields if f.name not in names]
    return StructType(fields)


def user_columns(df: DataFrame) -> list[str]:
    """The columns of ``df`` that are not fs-dagster's internal ones."""
    return [c for c in df.columns if not c.startswith(INTERNAL_PREFIX)]


def internal_columns(df: DataFrame) -> list[str]:
    """The columns of ``df`` that are fs-dagster's internal ones."""
    return [c for c in df.columns if c.startswith(INTERNAL_PREFIX)]


def _kafka_metadata_schema() -> StructType:
    from pyspark.sql.types import BinaryType, IntegerType, LongType, TimestampType

    types: dict[str, Any] = {
        "key": BinaryType(),
        "topic": StringType(),
        "partition": IntegerType(),
        "offset": LongType(),
        "timestamp": TimestampType(),
    }
    return StructType([StructField(name, types[name]) for name in KAFKA_METADATA_COLUMNS])


def read_source(
    spark: SparkSession,
    source: DataSource,
    *,
    required_columns: Sequence[str] = (),
    streaming: bool = True,
) -> DataFrame:
    """Read ``source`` as a stream (or a batch when ``streaming`` is false).

    Args:
        spark: the session.
        source: the source to read.
        required_columns: value columns that must be present (not null) in a good record,
            such as the key and timestamp columns the transformation passes through.
        streaming: ``False`` reads what is there now as a batch (for previews and tests).
    """
    value_schema = parse_schema(spark, source.schema)
    if isinstance(source, KafkaSource):
        df = _read_kafka(spark, source, value_schema, streaming)
    elif source.format == "json":
        df = _read_json_files(spark, source, value_schema, streaming)
    else:
        df = _read_other_files(spark, source, value_schema, streaming)
    required = [c for c in required_columns if c in value_schema.fieldNames()]
    return _tag_missing(df, required)


def _read_kafka(
    spark: SparkSession, source: KafkaSource, value_schema: StructType, streaming: bool
) -> DataFrame:
    absent = check_kafka_access(
        "Kafka source",
        source.name,
        source.bootstrap_servers,
        source.auth_configuration,
        source.topic_names,
    )
    if absent:
        # Spark waits for a subscribed topic; said loudly, as a typo looks the same.
        names = ", ".join(f"'{t}'" for t in absent)
        _LOG.warning(
            "Kafka source '%s': topic %s does not exist yet on %s; the query reads it once "
            "it is created (fs-dagster never creates topics)",
            source.name,
            names,
            source.bootstrap_servers,
        )
    reader: Any = spark.readStream if streaming else spark.read
    reader = reader.format("kafka")
    for key, value in kafka_client_options(
        source.bootstrap_servers, source.auth_configuration
    ).items():
        reader = reader.option(key, value)
    subscription, topics = source.subscription
    reader = reader.option(subscription, topics).option("startingOffsets", source.starting_offsets)
    # A topic deleted and recreated, or retention passing a stopped query, must not stop
    # ingestion forever; the gap is reported by Spark in the query's log.
    reader = reader.option("failOnDataLoss", "false")
    # A source only reads: a mistyped or deleted topic must not be created empty.
    reader = reader.option("kafka.allow.auto.create.topics", "false")
    # A micro-batch's tasks read offset ranges known to exist, yet waited in the Kafka
    # client's network poll for the broker's long-poll fetches (up to the client's default
    # 500 ms): a short wait lets them go on. The source's own options override it.
    reader = reader.option("kafka.fetch.max.wait.ms", KAFKA_FETCH_MAX_WAIT_MS)
    for key, value in source.options.items():
        reader = reader.option(key, value)
    raw: DataFrame = reader.load()
    payload = F.col("value").cast("string")
    parsed = _from_json(payload, value_schema)
    value_names = value_schema.fieldNames()
    metadata = [
        F.col(name).alias(name) for name in KAFKA_METADATA_COLUMNS if name not in value_names
    ]
    position = F.concat_ws("/", F.col("topic"), F.col("partition"), F.col("offset"))
    return raw.select(
        payload.alias(PAYLOAD_COLUMN),
        position.alias(POSITION_COLUMN),
        parsed.alias(_PARSED_COLUMN),
        *metadata,
    ).select(
        *[F.col(f"{_PARSED_COLUMN}.{name}").alias(name) for name in value_names],
        *[F.col(name) for name in KAFKA_METADATA_COLUMNS if name not in value_names],
        PAYLOAD_COLUMN,
        POSITION_COLUMN,
        _parse_error(F.col(PAYLOAD_COLUMN)).alias(ERROR_COLUMN),
    )


def _from_json(payload: Column, value_schema: StructType) -> Column:
    with_corrupt = StructType([*value_schema.fields, StructField(_CORRUPT_COLUMN, StringType())])
    return F.from_json(
        payload,
        with_corrupt,
        {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT_COLUMN},
    )


def _parse_error(payload: Column) -> Column:
    return (
        F.when(payload.isNull() | (F.trim(payload) == ""), F.lit("empty record"))
        .when(
            F.col(f"{_PARSED_COLUMN}.{_CORRUPT_COLUMN}").isNotNull(),
            F.lit("malformed JSON or a value that does not fit the source schema"),
        )
        .otherwise(F.lit(None).cast("string"))
    )


def _ensure_local_directory(path: str) -> None:
    # A stream over a directory that does not exist yet fails in Spark; a new local
    # directory simply starts the stream empty (remote stores have no directories).
    if "://" not in path or path.startswith("file://"):
        Path(path.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


def _read_json_files(
    spark: SparkSession, source: FileSource, value_schema: StructType, streaming: bool
) -> DataFrame:
    # Read lines as text and parse them like Kafka values, so that file and Kafka
    # sources share one parser and one notion of a malformed record.
    reader: Any = spark.readStream if streaming else spark.read
    for key, value in source.options.items():
        reader = reader.option(key, value)
    _ensure_local_directory(source.path)
    # Whole files, split here, so that a record's position names its line: a file source
    # is for local work and small drops, and a file is read by one task either way.
    files: DataFrame = reader.format("text").option("wholetext", "true").load(source.path)
    numbered = files.select(
        F.col("_metadata.file_path").alias("__fs_file"),
        F.posexplode(F.split(F.col("value"), "\r?\n")).alias("__fs_line", "__fs_text"),
    ).where(F.trim(F.col("__fs_text")) != "")
    payload = F.col("__fs_text")
    parsed = numbered.select(
        payload.alias(PAYLOAD_COLUMN),
        F.concat_ws(":", F.col("__fs_file"), (F.col("__fs_line") + 1).cast("string")).alias(
            POSITION_COLUMN
        ),
        _from_json(payload, value_schema).alias(_PARSED_COLUMN),
    )
    return parsed.select(
        *[F.col(f"{_PARSED_COLUMN}.{name}").alias(name) for name in value_schema.fieldNames()],
        PAYLOAD_COLUMN,
        POSITION_COLUMN,
        _parse_error(F.col(PAYLOAD_COLUMN)).alias(ERROR_COLUMN),
    )


def _read_other_files(
    spark: SparkSession, source: FileSource, value_schema: StructType, streaming: bool
) -> DataFrame:
    reader: Any = spark.readStream if streaming else spark.read
    reader = reader.format(source.format)
    if source.format == "csv":
        with_corrupt = StructType(
            [*value_schema.fields, StructField(_CORRUPT_COLUMN, StringType())]
        )
        reader = (
            reader.schema(with_corrupt)
            .option("header", "true")
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", _CORRUPT_COLUMN)
        )
    else:
        reader = reader.schema(value_schema)
    for key, value in source.options.items():
        reader = reader.option(key, value)
    _ensure_local_directory(source.path)
    df: DataFrame = reader.load(source.path)
    names = value_schema.fieldNames()
    if source.format == "csv":
        payload: Column = F.coalesce(
            F.col(_CORRUPT_COLUMN), F.to_json(F.struct(*[F.col(n) for n in names]))
        )
        error = F.when(
            F.col(_CORRUPT_COLUMN).isNotNull(),
            F.lit("malformed CSV or a value that does not fit the source schema"),
        ).otherwise(F.lit(None).cast("string"))
    else:
        payload = F.to_json(F.struct(*[F.col(n) for n in names]))
        error = F.lit(None).cast("string")
    return df.select(
        *[F.col(n) for n in names],
        payload.alias(PAYLOAD_COLUMN),
        F.col("_metadata.file_path").alias(POSITION_COLUMN),
        error.alias(ERROR_COLUMN),
    )


def _tag_missing(df: DataFrame, required: Sequence[str]) -> DataFrame:
    if not required:
        return df
    error = F.col(ERROR_COLUMN)
    for column in required:
        error = F.when(
            error.isNull() & F.col(column).isNull(), F.lit(f"missing value for '{column}'")
        ).otherwise(error)
    return df.withColumn(ERROR_COLUMN, error)
