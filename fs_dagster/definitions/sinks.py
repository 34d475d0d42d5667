"""Auxiliary sinks: further destinations of a feature set's computed features.

Named as in JFrog ML, so that a definition ports by changing imports::

    KafkaSink(
        name="my_online_sink",
        topic="online_topic",
        bootstrap_servers="broker:9092",
        message_format=MessageFormat.JSON,
        auth_configuration=SslAuthentication(),
        attachment_point=OnlineStreamingAttachmentPoint(),
    )

Each message's key is the feature set's key and its value one JSON document::

    {"featureset_name": "...", "featureset_id": "...", "timestamp": "<ISO-8601 UTC>",
     "key": {"user_id": "u1"}, "features": {"reg_country": "US", ...}}

``timestamp`` is the feature row's event time (row-level sets) or the time the window
values were computed (aggregated sets, which publish every window value of each key a
micro-batch updated). Delivery is at least once.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Literal

from fs_dagster.definitions.errors import FeatureSetDefinitionError
from fs_dagster.definitions.kafka_auth import KafkaAuthentication, check_authentication
from fs_dagster.definitions.names import identifier_problem

__all__ = [
    "AttachmentPoint",
    "AuxiliarySink",
    "KafkaSink",
    "MessageFormat",
    "OfflineStreamingAttachmentPoint",
    "OnlineStreamingAttachmentPoint",
    "check_sinks",
    "featureset_id",
]

# Fixed, so that a feature set's id is the same in every process and release.
_FEATURESET_ID_NAMESPACE = uuid.UUID("5d0c7a8e-4f7b-4a51-9a57-3f2c1f1d7f10")


def featureset_id(name: str) -> str:
    """The stable id of the feature set ``name`` in sink messages (a UUID of its name)."""
    return str(uuid.uuid5(_FEATURESET_ID_NAMESPACE, name))


class MessageFormat(Enum):
    """How a Kafka sink encodes a message's value."""

    JSON = "JSON"


@dataclass(frozen=True)
class OnlineStreamingAttachmentPoint:
    """Publish when the online run writes the online store: fresh, at a cost to it."""

    @property
    def pipeline(self) -> Literal["online"]:
        """The ingestion run that publishes."""
        return "online"


@dataclass(frozen=True)
class OfflineStreamingAttachmentPoint:
    """Publish when the offline run writes the offline store: later, at no online cost."""

    @property
    def pipeline(self) -> Literal["offline"]:
        """The ingestion run that publishes."""
        return "offline"


AttachmentPoint = OnlineStreamingAttachmentPoint | OfflineStreamingAttachmentPoint


@dataclass(frozen=True)
class KafkaSink:
    """Publish computed features to a Kafka topic, one JSON message per feature vector.

    Attributes:
        name: the sink's name (letters, digits, underscores).
        topic: destination topic (create it with the partitions you want; otherwise
            the broker creates it on first write if its ``auto.create.topics.enable``).
        bootstrap_servers: ``host:port[,host:port...]``.
        message_format: :attr:`MessageFormat.JSON`.
        auth_configuration: :class:`~fs_dagster.SaslAuthentication` or
            :class:`~fs_dagster.SslAuthentication`, or ``None`` for plaintext.
        attachment_point: :class:`OnlineStreamingAttachmentPoint` (default) or
            :class:`OfflineStreamingAttachmentPoint`.
        options: further Kafka producer settings, passed to Spark's Kafka sink
            (``kafka.linger.ms``, ...).
    """

    name: str
    topic: str
    bootstrap_servers: str
    message_format: MessageFormat = MessageFormat.JSON
    auth_configuration: KafkaAuthentication | None = None
    attachment_point: AttachmentPoint = field(default_factory=OnlineStreamingAttachmentPoint)
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = "Kafka sink"
        problem = identifier_problem(self.name, "sink name")
        if problem:
            raise FeatureSetDefinitionError(None, "name", problem, kind=kind)
        if not isinstance(self.topic, str) or not self.topic:
            raise FeatureSetDefinitionError(self.name, "topic", "expected a topic name", kind=kind)
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise FeatureSetDefinitionError(
                self.name, "bootstrap_servers", "expected 'host:port[,host:port...]'", kind=kind
            )
        if not isinstance(self.message_format, MessageFormat):
            raise FeatureSetDefinitionError(
                self.name,
                "message_format",
                f"expected MessageFormat.JSON, got {self.message_format!r}",
                kind=kind,
            )
        if not isinstance(
            self.attachment_point, OnlineStreamingAttachmentPoint | OfflineStreamingAttachmentPoint
        ):
            raise FeatureSetDefinitionError(
                self.name,
                "attachment_point",
                "expected OnlineStreamingAttachmentPoint() or OfflineStreamingAttachmentPoint(), "
                f"got {type(self.attachment_point).__name__}",
                kind=kind,
            )
        check_authentication(self.name, self.auth_configuration, kind)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @property
    def pipeline(self) -> Literal["online", "offline"]:
        """The ingestion run that publishes to this sink."""
        return self.attachment_point.pipeline


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
