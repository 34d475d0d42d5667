"""Reading a source as a stream (or a batch), with malformed records tagged, not dropped.

Every source becomes a DataFrame with the same shape: the parsed value columns, for
Kafka the metadata columns, and three internal columns:

- ``__fs_payload``: the raw record as text (kept for the dead-letter table);
- ``__fs_position``: where it came from (``topic/partition/offset``, ``path:line`` for
  JSON-lines files, the file path for other files);
- ``__fs_error``: why the record is unusable, or null for a good record.

A record is unusable when it is not valid JSON (or CSV), when a value does not fit the
declared schema, or when a key or timestamp column the feature set needs is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F  # noqa: N812
from pyspark.sql.types import StringType, StructField, StructType

from fs_dagster.definitions.sources import (
    KAFKA_METADATA_COLUMNS,
    DataSource,
    FileSource,
    KafkaSource,
    SaslAuth,
    SslAuth,
)
from fs_dagster.planning.plan import INTERNAL_PREFIX

__all__ = [
    "ERROR_COLUMN",
    "PAYLOAD_COLUMN",
    "POSITION_COLUMN",
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


def parse_schema(spark: SparkSession, ddl: str) -> StructType:
    """Parse a Spark DDL schema string (``"user_id STRING, amount DOUBLE"``)."""
    parsed = spark.createDataFrame([], ddl).schema
    return parsed


def kafka_client_options(bootstrap_servers: str, auth: SaslAuth | SslAuth | None) -> dict[str, str]:
    """Spark ``kafka.*`` options for a broker address and authentication.

    The result holds secrets: pass it to Spark, never to a log or to metadata.
    """
    options = {"kafka.bootstrap.servers": bootstrap_servers}
    if isinstance(auth, SaslAuth):
        options["kafka.security.protocol"] = "SASL_SSL" if auth.ssl else "SASL_PLAINTEXT"
        options["kafka.sasl.mechanism"] = auth.mechanism
        module = (
            "org.apache.kafka.common.security.plain.PlainLoginModule"
            if auth.mechanism == "PLAIN"
            else "org.apache.kafka.common.security.scram.ScramLoginModule"
        )
        user = auth.username.replace('"', '\\"')
        password = auth.secret.get().replace('"', '\\"')
        options["kafka.sasl.jaas.config"] = (
            f'{module} required username="{user}" password="{password}";'
        )
        if auth.ssl and auth.ca_location:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = auth.ca_location
    elif isinstance(auth, SslAuth):
        options["kafka.security.protocol"] = "SSL"
        if auth.ca_location:
            options["kafka.ssl.truststore.type"] = "PEM"
            options["kafka.ssl.truststore.location"] = auth.ca_location
        if auth.certificate_location and auth.key_location:
            options["kafka.ssl.keystore.type"] = "PEM"
            options["kafka.ssl.keystore.certificate.chain"] = auth.certificate_location
            options["kafka.ssl.keystore.key"] = auth.key_location
            if auth.key_password is not None:
                from fs_dagster.definitions.secrets import Secret

                assert isinstance(auth.key_password, Secret)
                options["kafka.ssl.key.password"] = auth.key_password.get()
    return options


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
    reader: Any = spark.readStream if streaming else spark.read
    reader = reader.format("kafka")
    for key, value in kafka_client_options(source.bootstrap_servers, source.auth).items():
        reader = reader.option(key, value)
    subscription, topics = source.subscription
    reader = reader.option(subscription, topics).option("startingOffsets", source.starting_offsets)
    # A topic deleted and recreated, or retention passing a stopped query, must not stop
    # ingestion forever; the gap is reported by Spark in the query's log.
    reader = reader.option("failOnDataLoss", "false")
    # A source only reads: a mistyped or deleted topic must not be created empty.
    reader = reader.option("kafka.allow.auto.create.topics", "false")
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
