"""Auxiliary sinks: further places a feature set's rows are written to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.names import identifier_problem
from fs_dagster.definitions.sources import KafkaAuth, SaslAuth, SslAuth

__all__ = ["AuxiliarySink", "KafkaSink", "check_sinks"]


@dataclass(frozen=True)
class KafkaSink:
    """Publish each feature row as a JSON record to a Kafka topic.

    The record key is the feature set's key (JSON), the value the feature row with its
    event timestamp. Delivery is at least once: a replayed micro-batch publishes again.

    Attributes:
        name: the sink's name (letters, digits, underscores).
        bootstrap_servers: ``host:port[,host:port...]``.
        topic: destination topic.
        pipeline: ``online`` (every online micro-batch) or ``offline`` (every offline run).
        auth: :class:`SaslAuth` or :class:`SslAuth`, or ``None`` for plaintext.
        options: further Spark Kafka sink options (``kafka.*`` client settings).
    """

    name: str
    bootstrap_servers: str
    topic: str
    pipeline: Literal["online", "offline"] = "online"
    auth: KafkaAuth | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = "Kafka sink"
        problem = identifier_problem(self.name, "sink name")
        if problem:
            raise FeatureSetDefinitionError(None, "name", problem, kind=kind)
        if not self.topic:
            raise FeatureSetDefinitionError(self.name, "topic", "expected a topic name", kind=kind)
        if not self.bootstrap_servers:
            raise FeatureSetDefinitionError(
                self.name, "bootstrap_servers", "expected 'host:port[,host:port...]'", kind=kind
            )
        if self.pipeline not in ("online", "offline"):
            raise FeatureSetDefinitionError(
                self.name, "pipeline", f"'{self.pipeline}' is not 'online' or 'offline'", kind=kind
            )
        if self.auth is not None and not isinstance(self.auth, SaslAuth | SslAuth):
            raise FeatureSetDefinitionError(
                self.name, "auth", "expected SaslAuth, SslAuth or None", kind=kind
            )
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


AuxiliarySink = KafkaSink


def check_sinks(feature_set: str, sinks: object) -> tuple[AuxiliarySink, ...]:
    """Validate a feature set's ``auxiliary_sinks`` parameter."""
    if not isinstance(sinks, Sequence) or isinstance(sinks, str):
        raise FeatureSetDefinitionError(
            feature_set, "auxiliary_sinks", "expected a list of sinks such as KafkaSink(...)"
        )
    for sink in sinks:
        if not isinstance(sink, KafkaSink):
            raise FeatureSetDefinitionError(
                feature_set, "auxiliary_sinks", f"{type(sink).__name__} is not a sink (KafkaSink)"
            )
    names = [s.name for s in sinks]
    if len(set(names)) != len(names):
        raise FeatureSetDefinitionError(
            feature_set, "auxiliary_sinks", f"two sinks share a name: {names}"
        )
    return tuple(sinks)
