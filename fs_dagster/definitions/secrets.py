"""Secrets (passwords, keys) that may be configured but never printed."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Secret", "SecretLike", "as_secret"]


@dataclass(frozen=True)
class Secret:
    """A secret value read from configuration or from an environment variable.

    Its ``repr`` and ``str`` never show the value, so a secret held in a source, a sink
    or a resource cannot leak into logs, Dagster metadata or error messages.

    Example:
        >>> password = Secret.from_env("KAFKA_PASSWORD")
        >>> str(password)
        "Secret(env='KAFKA_PASSWORD')"
    """

    value: str | None = None
    env: str | None = None

    @classmethod
    def from_env(cls, variable: str) -> Secret:
        """A secret whose value is read from ``variable`` when it is used."""
        return cls(env=variable)

    def get(self) -> str:
        """Return the secret's value.

        Raises:
            KeyError: the environment variable is not set (its name, not a value, is said).
        """
        if self.env is not None:
            try:
                return os.environ[self.env]
            except KeyError:
                raise KeyError(f"environment variable {self.env} is not set") from None
        if self.value is None:
            raise KeyError("the secret has no value")
        return self.value

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r})" if self.env else "Secret('****')"

    __str__ = __repr__


SecretLike = str | Secret


def as_secret(value: SecretLike | None) -> Secret | None:
    """Wrap a plain string as a :class:`Secret`; pass ``None`` and secrets through."""
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value=value)
