"""Decorators shared by the ``streaming`` and ``batch`` namespaces.

Each works in either order with the feature set decorator: below it (on the function),
it leaves its value on the function for :func:`build_feature_set` to read; above it (on
the :class:`FeatureSet`), it returns a copy with the value applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fs_dagster.definitions.execution import ClusterTemplate, ExecutionSpecification
from fs_dagster.definitions.feature_set import (
    EXECUTION_SPECIFICATION_ATTRIBUTE,
    METADATA_ATTRIBUTE,
    FeatureSet,
    FeatureSetMetadata,
    with_execution_specification,
    with_metadata,
)

__all__ = ["attach", "execution_specification", "metadata"]

Target = TypeVar("Target", bound=Callable[..., Any] | FeatureSet)


def attach(
    attribute: str, value: object, apply: Callable[[FeatureSet], FeatureSet]
) -> Callable[[Target], Target]:
    """A decorator that sets ``attribute`` on a function, or ``apply``-s to a FeatureSet."""

    def decorate(target: Target) -> Target:
        if isinstance(target, FeatureSet):
            return apply(target)  # type: ignore[return-value]
        setattr(target, attribute, value)
        return target

    return decorate


def metadata(
    *, owner: str | None = None, description: str | None = None, display_name: str | None = None
) -> Callable[[Target], Target]:
    """Attach owner, description and display name to a feature set (shown in Dagster)."""
    value = FeatureSetMetadata(owner=owner, description=description, display_name=display_name)
    return attach(METADATA_ATTRIBUTE, value, lambda fs: with_metadata(fs, value))


def execution_specification(
    *,
    online_cluster_template: ClusterTemplate = ClusterTemplate.SMALL,
    offline_cluster_template: ClusterTemplate = ClusterTemplate.SMALL,
) -> Callable[[Target], Target]:
    """Choose the cluster sizes of a feature set's online and offline runs."""
    value = ExecutionSpecification(
        online_cluster_template=online_cluster_template,
        offline_cluster_template=offline_cluster_template,
    )
    return attach(
        EXECUTION_SPECIFICATION_ATTRIBUTE,
        value,
        lambda fs: with_execution_specification(fs, value),
    )
