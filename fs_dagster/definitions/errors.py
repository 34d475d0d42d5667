"""The one error type a user's feature set definition can raise."""

from __future__ import annotations

__all__ = ["FeatureSetDefinitionError"]


class FeatureSetDefinitionError(ValueError):
    """A feature set, source or sink is declared wrongly.

    The message always names where the problem is (the feature set or source, and the
    parameter) and what would be accepted, so that it can be fixed without reading code.

    Attributes:
        owner: name of the feature set or source at fault (``None`` when unknown yet).
        parameter: the parameter that holds the wrong value.
        reason: what is wrong and what would be accepted.
    """

    def __init__(
        self, owner: str | None, parameter: str, reason: str, *, kind: str = "feature set"
    ):
        self.owner = owner
        self.parameter = parameter
        self.reason = reason
        self.kind = kind
        where = f"{kind} '{owner}'" if owner else kind
        super().__init__(f"{where}, parameter '{parameter}': {reason}")
