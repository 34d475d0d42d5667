"""Cluster sizes a feature set's runs (online, offline, backfill) ask for."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["ClusterTemplate", "ExecutionSpecification"]


class ClusterTemplate(Enum):
    """Sizes of the Spark resources a feature set's runs ask for on a cluster.

    Each size maps to executor settings (see :meth:`spark_conf`); with a local master
    they are ignored, because a local Spark has only the driver.
    """

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"
    XLARGE = "xlarge"

    def spark_conf(self) -> dict[str, str]:
        """The Spark resource settings this size stands for."""
        cores, memory, instances = {
            "small": (2, "4g", 1),
            "medium": (4, "8g", 2),
            "large": (4, "16g", 4),
            "xlarge": (8, "32g", 8),
        }[self.value]
        return {
            "spark.executor.cores": str(cores),
            "spark.executor.memory": memory,
            "spark.executor.instances": str(instances),
            "spark.driver.memory": "2g" if self is ClusterTemplate.SMALL else "4g",
        }


@dataclass(frozen=True)
class ExecutionSpecification:
    """Cluster sizes for the online (streaming) and offline (batch) runs."""

    online_cluster_template: ClusterTemplate = ClusterTemplate.SMALL
    offline_cluster_template: ClusterTemplate = ClusterTemplate.SMALL
