"""Data sources: Kafka topics and directories of files read as streams, and batch files.

Sources are plain, validated data objects. Constructing one registers it under its name
in the default :class:`SourceRegistry`, so a feature set can name it in
``data_sources=["transactions"]`` as in the JFrog ML API; a source object can be passed
too.

A transformation's SQL reads each source as a temporary view named by
:func:`~fs_dagster.definitions.names.sql_view_name` of the source name: the name itself,
with ``-`` turned into ``_`` (``sample-streaming-source`` is read as
``sample_streaming_source``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.kafka_auth import KafkaAuthentication, check_authentication
from fs_dagster.definitions.names import (
    identifier_problem,
    source_name_problem,
    view_name_collision,
)

__all__ = [
    "KAFKA_METADATA_COLUMNS",
    "AnySource",
    "BatchSource",
    "DataSource",
    "FileSource",
    "KafkaSource",
    "SourceRegistry",
    "check_distinct_sources",
    "default_sources",
    "find_source",
    "known_source_names",
]

#: Columns a Kafka source adds next to the parsed value columns (a value column of the
#: same name wins).
KAFKA_METADATA_COLUMNS: tuple[str, ...] = ("key", "topic", "partition", "offset", "timestamp")

KafkaValueFormat = Literal["json"]
FileFormat = Literal["json", "csv", "parquet"]
BatchFormat = Literal["parquet", "delta", "csv", "json"]
_BATCH_FORMATS: tuple[str, ...] = ("parquet", "delta", "csv", "json")
# Formats whose files do not carry their own schema.
_SCHEMALESS_FORMATS: tuple[str, ...] = ("csv", "json")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _check_name(name: object, kind: str) -> None:
    problem = source_name_problem(name)
    if problem:
        shown = name if isinstance(name, str) else None
        raise FeatureSetDefinitionError(shown, "name", problem, kind=kind)


def _check_schema(name: str, schema: object, kind: str) -> None:
    if not isinstance(schema, str) or not schema.strip():
        raise FeatureSetDefinitionError(
            name,
            "schema",
            "expected a Spark DDL string such as 'user_id STRING, amount DOUBLE, ts TIMESTAMP'",
            kind=kind,
        )


@dataclass(frozen=True)
class KafkaSource:
    """A Kafka topic (or topics, or a topic pattern) of JSON records.

    The transformation sees the parsed value columns and, beside them, the Kafka metadata
    columns ``key``, ``topic``, ``partition``, ``offset`` and ``timestamp``.

    Example:
        >>> KafkaSource(name="transactions", bootstrap_servers="127.0.0.1:9092",
        ...             topic="transactions", schema="user_id STRING, amount DOUBLE, ts TIMESTAMP")
        ... # doctest: +ELLIPSIS
        KafkaSource(name='transactions', ...)

    Attributes:
        name: letters, digits, ``_`` and ``-``; the transformation's SQL reads the source
            by this name with ``-`` turned into ``_``.
        bootstrap_servers: ``host:port[,host:port...]``.
        topic: one topic; or ``topics`` (several) or ``topic_pattern`` (a regex):
            exactly one of the three.
        value_format: ``json`` (the record value is one JSON object).
        schema: the value's schema as a Spark DDL string.
        starting_offsets: where a new checkpoint starts: ``earliest``, ``latest`` or
            Spark's JSON offsets.
        auth_configuration: :class:`~fs_dagster.SaslAuthentication` or
            :class:`~fs_dagster.SslAuthentication`, or ``None`` for plaintext.
        options: further Spark Kafka source options (``kafka.*`` client settings,
            ``maxOffsetsPerTrigger``, ...); they override fs-dagster's own, such as
            ``kafka.fetch.max.wait.ms`` (10 ms unless set here).
    """

    name: str
    bootstrap_servers: str
    schema: str
    topic: str | None = None
    topics: Sequence[str] | None = None
    topic_pattern: str | None = None
    value_format: KafkaValueFormat = "json"
    starting_offsets: str = "earliest"
    auth_configuration: KafkaAuthentication | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = "Kafka source"
        _check_name(self.name, kind)
        chosen = [n for n in ("topic", "topics", "topic_pattern") if getattr(self, n)]
        if len(chosen) != 1:
            got = f"got {', '.join(chosen)}" if chosen else "got none"
            raise FeatureSetDefinitionError(
                self.name,
                "topic",
                f"give exactly one of topic, topics or topic_pattern ({got})",
                kind=kind,
            )
        if self.topics is not None:
            if isinstance(self.topics, str):
                raise FeatureSetDefinitionError(
                    self.name, "topics", "expected a list of topic names, got a string", kind=kind
                )
            object.__setattr__(self, "topics", tuple(self.topics))
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise FeatureSetDefinitionError(
                self.name, "bootstrap_servers", "expected 'host:port[,host:port...]'", kind=kind
            )
        if self.value_format != "json":
            raise FeatureSetDefinitionError(
                self.name,
                "value_format",
                f"'{self.value_format}' is not supported; use 'json'",
                kind=kind,
            )
        _check_schema(self.name, self.schema, kind)
        check_authentication(self.name, self.auth_configuration, kind)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        default_sources.register(self)

    @property
    def subscription(self) -> tuple[str, str]:
        """The Spark subscription option and its value (``subscribe``/``subscribePattern``)."""
        if self.topic_pattern:
            return "subscribePattern", self.topic_pattern
        return "subscribe", self.topic if self.topic else ",".join(self.topics or ())

    @property
    def topic_names(self) -> tuple[str, ...]:
        """The topics named literally (empty for a pattern)."""
        if self.topic:
            return (self.topic,)
        return tuple(self.topics or ())


@dataclass(frozen=True)
class FileSource:
    """A directory whose new files are read as a stream: the embedded default source.

    Each file dropped into ``path`` is read once. Write files atomically (write under a
    temporary name outside the directory, or with a leading ``.`` or ``_``, then rename),
    because Spark ignores hidden files and reads the others as soon as it lists them.

    Attributes:
        name: letters, digits, ``_`` and ``-``; the transformation's SQL reads the source
            by this name with ``-`` turned into ``_``.
        path: directory (local path or ``s3a://`` URL).
        format: ``json`` (one object per line), ``csv`` (with a header) or ``parquet``.
        schema: record schema as a Spark DDL string.
        options: further Spark reader options.
    """

    name: str
    path: str
    schema: str
    format: FileFormat = "json"
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = "file source"
        _check_name(self.name, kind)
        if not isinstance(self.path, str) or not self.path:
            raise FeatureSetDefinitionError(self.name, "path", "expected a directory", kind=kind)
        if self.format not in ("json", "csv", "parquet"):
            raise FeatureSetDefinitionError(
                self.name,
                "format",
                f"'{self.format}' is not supported; use json, csv or parquet",
                kind=kind,
            )
        _check_schema(self.name, self.schema, kind)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        default_sources.register(self)


@dataclass(frozen=True)
class BatchSource:
    """Files read as a whole, for a range of event time: a backfill's or a batch set's input.

    A streaming feature set cannot read a batch source; a backfill
    (``@streaming.backfill``) and a batch feature set (``@batch.feature_set``) do, and
    select rows by ``timestamp_column``.

    Example:
        >>> BatchSource(name="tx-history", path="s3a://lake/tx", timestamp_column="ts")
        ... # doctest: +ELLIPSIS
        BatchSource(name='tx-history', ...)

    Attributes:
        name: letters, digits, ``_`` and ``-``; SQL reads the source by this name with
            ``-`` turned into ``_``.
        path: a local path or an ``s3a://`` URL (a file or a directory; for ``delta``, the
            table's directory).
        timestamp_column: the event-time column that selects a time range.
        format: ``parquet``, ``delta``, ``csv`` (with a header) or ``json`` (one object
            per line).
        schema: the rows' schema as a Spark DDL string; ``None`` uses the files' own
            schema, which only ``parquet`` and ``delta`` have, so ``csv`` and ``json``
            need one.
        options: further Spark reader options.
    """

    name: str
    path: str
    timestamp_column: str
    format: BatchFormat = "parquet"
    schema: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = "batch source"
        _check_name(self.name, kind)
        if not isinstance(self.path, str) or not self.path.strip():
            raise FeatureSetDefinitionError(
                self.name, "path", "expected a local path or an s3a:// URL", kind=kind
            )
        scheme = _URL_SCHEME.match(self.path)
        if scheme is not None and scheme.group(1).lower() != "s3a":
            raise FeatureSetDefinitionError(
                self.name,
                "path",
                f"'{scheme.group(1)}://' is not supported; use a local path or an s3a:// URL",
                kind=kind,
            )
        problem = identifier_problem(self.timestamp_column, "timestamp column")
        if problem:
            raise FeatureSetDefinitionError(self.name, "timestamp_column", problem, kind=kind)
        if self.format not in _BATCH_FORMATS:
            raise FeatureSetDefinitionError(
                self.name,
                "format",
                f"'{self.format}' is not supported; use {', '.join(_BATCH_FORMATS)}",
                kind=kind,
            )
        if self.schema is not None or self.format in _SCHEMALESS_FORMATS:
            _check_schema(self.name, self.schema, kind)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        default_sources.register(self)


DataSource = KafkaSource | FileSource
"""A stream source: what a streaming feature set reads."""

AnySource = KafkaSource | FileSource | BatchSource
"""Any declared source, stream or batch."""

_ANY_SOURCE = (KafkaSource, FileSource, BatchSource)


class SourceRegistry:
    """Sources by name. A source registered again under the same name replaces the old one;
    feature sets keep the source object they resolved when they were declared."""

    def __init__(self) -> None:
        self._sources: dict[str, AnySource] = {}
        self._lock = threading.Lock()

    def register(self, source: AnySource) -> None:
        """Add ``source`` under its name."""
        with self._lock:
            self._sources[source.name] = source

    def get(self, name: str) -> AnySource | None:
        """The source named ``name``, or ``None``."""
        return self._sources.get(name)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._sources)

    def __iter__(self) -> Iterator[AnySource]:
        return iter(list(self._sources.values()))


default_sources = SourceRegistry()


def known_source_names(*, batch: bool) -> str:
    """The declared batch (or stream) source names, for an error message."""
    names = sorted(s.name for s in default_sources if isinstance(s, BatchSource) == batch)
    return ", ".join(names) or "none declared yet"


def find_source(owner: str, parameter: str, entry: object, *, batch: bool) -> AnySource:
    """The source ``entry`` stands for: a source object, or the name of a declared one.

    Args:
        owner: the feature set whose ``parameter`` lists ``entry`` (named in errors).
        parameter: the parameter that lists it.
        entry: a source object or a source name.
        batch: whether batch sources (else stream sources) are wanted; an unknown name's
            error lists the declared sources of that kind. The caller checks the kind of
            a source found, because what to say about a wrong kind depends on the caller.

    Raises:
        FeatureSetDefinitionError: ``entry`` is neither a source nor a declared name.
    """
    if isinstance(entry, _ANY_SOURCE):
        return entry
    source = default_sources.get(entry) if isinstance(entry, str) else None
    if source is None:
        what = "batch sources" if batch else "stream sources"
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            f"unknown source {entry!r} (known {what}: {known_source_names(batch=batch)})",
        )
    return source


def check_distinct_sources(owner: str, parameter: str, sources: Sequence[AnySource]) -> None:
    """Raise unless one SQL query can read ``sources`` side by side.

    A source may be listed once, and no two may share a SQL view name.
    """
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise FeatureSetDefinitionError(owner, parameter, f"a source is listed twice: {names}")
    problem = view_name_collision(names)
    if problem:
        raise FeatureSetDefinitionError(owner, parameter, problem)
