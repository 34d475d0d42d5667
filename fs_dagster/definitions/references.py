"""Feature references: how a combined read names the features it wants.

A reference is ``"<feature set name>.<feature>"`` (``"user-spend.sum_amount_1h"``), or
``"<feature set name>.*"`` for every feature of the set. Feature set names hold no dot
(letters, digits, ``-`` and ``_``), so a reference splits at its first dot. The same text
names the feature's column in combined results, and ``"<feature set>.<timestamp column>"``
names the set's event time (row-level) or read time (aggregated) there.

Pure: resolving references takes the feature names of each set from the caller, so
nothing here starts Spark or opens a store.

Example:
    >>> parse_reference("user-spend.sum_amount_1h")
    FeatureReference(feature_set='user-spend', feature='sum_amount_1h')
    >>> resolved = resolve_references(
    ...     ["user-spend.*", "user-profile.age"],
    ...     {"user-spend": ["sum_amount_1h"], "user-profile": ["age", "city"]},
    ... )
    >>> resolved.columns
    ['user-spend.sum_amount_1h', 'user-profile.age']
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ALL_FEATURES",
    "FeatureReference",
    "FeatureReferenceError",
    "ResolvedFeatures",
    "parse_reference",
    "parse_references",
    "reference_name",
    "resolve_references",
]

#: The feature part of a reference that selects every feature of a set.
ALL_FEATURES = "*"

_FORM = "'<feature set>.<feature>' or '<feature set>.*' (e.g. 'user-spend.sum_amount_1h')"


class FeatureReferenceError(ValueError):
    """A feature reference is malformed, or names a feature set or feature that is unknown.

    Attributes:
        reference: the reference as given.
        reason: what is wrong and what would be accepted.
    """

    def __init__(self, reference: object, reason: str) -> None:
        self.reference = reference
        self.reason = reason
        super().__init__(f"feature reference {reference!r}: {reason}")


def reference_name(feature_set: str, column: str) -> str:
    """The name of ``column`` of ``feature_set`` in combined results: ``"<set>.<column>"``."""
    return f"{feature_set}.{column}"


@dataclass(frozen=True)
class FeatureReference:
    """One parsed reference: a feature set name and a feature (``None`` for ``*``)."""

    feature_set: str
    feature: str | None

    def __str__(self) -> str:
        return reference_name(self.feature_set, self.feature or ALL_FEATURES)


def parse_reference(reference: object) -> FeatureReference:
    """Parse ``"<feature set>.<feature>"`` or ``"<feature set>.*"``.

    Raises:
        FeatureReferenceError: not a string, no dot, or an empty part.
    """
    if not isinstance(reference, str):
        raise FeatureReferenceError(
            reference, f"a reference is a string {_FORM}, not {type(reference).__name__}"
        )
    feature_set, dot, feature = reference.partition(".")
    if not dot or not feature_set.strip() or not feature.strip():
        raise FeatureReferenceError(reference, f"expected {_FORM}")
    if feature_set != feature_set.strip() or feature != feature.strip():
        raise FeatureReferenceError(reference, f"remove the spaces; expected {_FORM}")
    return FeatureReference(feature_set, None if feature == ALL_FEATURES else feature)


def parse_references(references: object) -> list[FeatureReference]:
    """Parse one reference or a sequence of them (at least one).

    Raises:
        FeatureReferenceError: the sequence is empty, or a reference is malformed.
    """
    if isinstance(references, str):
        references = [references]
    if not isinstance(references, Sequence) or not references:
        raise FeatureReferenceError(
            references, f"features= takes a non-empty list of references {_FORM}"
        )
    return [parse_reference(r) for r in references]


@dataclass(frozen=True)
class ResolvedFeatures:
    """Requested features after resolution, in the order asked, each once.

    Attributes:
        features: ``(feature set, feature)`` pairs; ``*`` expanded in the set's order.
    """

    features: tuple[tuple[str, str], ...]

    @property
    def feature_sets(self) -> list[str]:
        """The feature sets involved, in the order of their first reference."""
        return list(dict.fromkeys(fs for fs, _ in self.features))

    def of(self, feature_set: str) -> list[str]:
        """The requested features of ``feature_set``, in request order."""
        return [f for fs, f in self.features if fs == feature_set]

    @property
    def columns(self) -> list[str]:
        """The result column of each feature (its reference), in request order."""
        return [reference_name(fs, f) for fs, f in self.features]


def resolve_references(
    references: object,
    feature_names: Mapping[str, Sequence[str]] | Callable[[str], Sequence[str]],
    known_sets: Collection[str] | None = None,
) -> ResolvedFeatures:
    """Check references against the known feature sets and their features.

    Args:
        references: one reference or a sequence (see :func:`parse_reference`).
        feature_names: the features of each feature set, as a mapping or as a function of
            the set's name (called only for the sets referenced, so a caller can compute
            them lazily).
        known_sets: the feature set names that may be referenced; defaults to the keys of
            ``feature_names`` when it is a mapping.

    Returns:
        The features in request order; a feature asked twice (``"a.*"`` and ``"a.f"``)
        appears once, where it was first asked.

    Raises:
        FeatureReferenceError: a reference is malformed, or names an unknown feature set
            or feature (the message lists the known ones).
    """
    parsed = parse_references(references)
    names_of: Callable[[str], Sequence[str]]
    if isinstance(feature_names, Mapping):
        known = set(known_sets if known_sets is not None else feature_names)
        names_of = feature_names.__getitem__
    else:
        if known_sets is None:
            raise TypeError("known_sets is required when feature_names is a function")
        known = set(known_sets)
        names_of = feature_names
    features_of: dict[str, list[str]] = {}
    chosen: dict[tuple[str, str], None] = {}
    for reference in parsed:
        name = reference.feature_set
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise FeatureReferenceError(
                str(reference), f"unknown feature set '{name}' (known feature sets: {listed})"
            )
        if name not in features_of:
            features_of[name] = list(names_of(name))
        available = features_of[name]
        if reference.feature is None:
            chosen.update(dict.fromkeys((name, f) for f in available))
        elif reference.feature in available:
            chosen[(name, reference.feature)] = None
        else:
            raise FeatureReferenceError(
                str(reference),
                f"feature set '{name}' has no feature '{reference.feature}' "
                f"(its features: {', '.join(available) or 'none'}; or '{name}.*' for all)",
            )
    return ResolvedFeatures(tuple(chosen))
