"""Where a feature set's data lives and what its pipelines are called.

Every path, table and Dagster name derived from a feature set is computed here, once,
so that ingestion, retrieval and the Dagster wiring cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fs_dagster.definitions.feature_set import FeatureSet

__all__ = ["DEAD_LETTER_TABLE", "INTERNAL_PREFIX", "Pipeline", "StoragePlan", "join_path"]

Pipeline = Literal["online", "offline"]

#: Columns fs-dagster adds to a stream are prefixed so they never clash with a user's.
INTERNAL_PREFIX = "__fs_"
DEAD_LETTER_TABLE = "dead_letter"
EVENT_DATE_COLUMN = "event_date"


def join_path(root: str, *parts: str) -> str:
    """Join a local path or URL root with path parts using ``/``."""
    return "/".join([root.rstrip("/"), *parts])


@dataclass(frozen=True)
class StoragePlan:
    """The storage locations of one feature set under the configured roots.

    Attributes:
        feature_set: the feature set.
        offline_root: root of the offline store (local path or ``s3a://bucket/prefix``).
        checkpoint_root: root of the streaming checkpoints.
    """

    feature_set: FeatureSet
    offline_root: str
    checkpoint_root: str

    @property
    def features_path(self) -> str:
        """Delta table of every feature row version, partitioned by event date."""
        return join_path(self.offline_root, self.feature_set.storage_name, "features")

    @property
    def dead_letter_path(self) -> str:
        """Delta table of malformed records, with payload, position and reason."""
        return join_path(self.offline_root, self.feature_set.storage_name, DEAD_LETTER_TABLE)

    @property
    def tiles_path(self) -> str:
        """Delta table of per-batch tile partial states (aggregated feature sets)."""
        return join_path(self.offline_root, self.feature_set.storage_name, "tiles")

    @property
    def archive_path(self) -> str:
        """Delta table of the raw source rows the offline runs read (replay reads it),
        partitioned by event date."""
        return join_path(self.offline_root, self.feature_set.storage_name, "raw_events")

    @property
    def late_events_path(self) -> str:
        """Delta table of events that arrived after the watermark, with the reason."""
        return join_path(self.offline_root, self.feature_set.storage_name, "late_events")

    def checkpoint_path(self, pipeline: Pipeline) -> str:
        """Checkpoint of one pipeline's streaming query (one per feature set and query)."""
        return join_path(self.checkpoint_root, self.feature_set.storage_name, pipeline)

    @property
    def online_table(self) -> str:
        """Name of the online store table."""
        return self.feature_set.storage_name
