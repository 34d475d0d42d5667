"""Authentication to Kafka, named as in JFrog ML, for sources and sinks alike.

Secrets are named, never written in code: ``SaslAuthentication(username_secret=
"kafka-user", password_secret="kafka-password", ...)`` names two secrets whose values
:func:`resolve_secret` looks up when a run starts: from a resolver set with
:func:`set_secret_resolver` (a vault client, mounted files), or by default from the
environment: the variable named exactly as the secret, else its name upper-cased with
every other character than letters and digits turned into ``_`` (``kafka-password`` is
read from ``KAFKA_PASSWORD``).

Example:
    >>> auth = SaslAuthentication(
    ...     username_secret="kafka-user",
    ...     password_secret="kafka-password",
    ...     sasl_mechanism=SaslMechanism.SCRAMSHA256,
    ...     security_protocol=SecurityProtocol.SASL_SSL,
    ... )
    >>> auth.sasl_mechanism.value
    'SCRAM-SHA-256'
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from fs_dagster.definitions.errors import FeatureSetDefinitionError

__all__ = [
    "KafkaAuthentication",
    "SaslAuthentication",
    "SaslMechanism",
    "SecretNotFoundError",
    "SecurityProtocol",
    "SslAuthentication",
    "check_authentication",
    "resolve_secret",
    "secret_environment_variable",
    "set_secret_resolver",
]

_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,200}$")


class SaslMechanism(Enum):
    """The SASL mechanisms a Kafka client can log in with."""

    PLAIN = "PLAIN"
    SCRAMSHA256 = "SCRAM-SHA-256"
    SCRAMSHA512 = "SCRAM-SHA-512"


class SecurityProtocol(Enum):
    """How SASL travels: over TLS (``SASL_SSL``) or in clear (``SASL_PLAINTEXT``)."""

    SASL_SSL = "SASL_SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"


class SecretNotFoundError(LookupError):
    """A named secret has no value (the message names the secret, never a value)."""


SecretResolver = Callable[[str], "str | None"]


class _Configured:
    """The process's configured resolver (one, shared by every thread)."""

    lock = threading.Lock()
    resolver: SecretResolver | None = None


def set_secret_resolver(resolver: SecretResolver | None) -> None:
    """Look secrets up with ``resolver(name)`` (``None`` when it has none) before the
    environment; ``set_secret_resolver(None)`` goes back to the environment alone.

    Example:
        >>> set_secret_resolver(lambda name: {"kafka-user": "svc"}.get(name))
        >>> resolve_secret("kafka-user")
        'svc'
        >>> set_secret_resolver(None)
    """
    with _Configured.lock:
        _Configured.resolver = resolver


def secret_environment_variable(name: str) -> str:
    """The environment variable a secret is read from when not set under its own name."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def resolve_secret(name: str) -> str:
    """The value of the secret ``name``.

    Raises:
        SecretNotFoundError: neither the resolver nor the environment has it.
    """
    with _Configured.lock:
        resolver = _Configured.resolver
    if resolver is not None:
        value = resolver(name)
        if value is not None:
            return value
    for variable in (name, secret_environment_variable(name)):
        value = os.environ.get(variable)
        if value is not None:
            return value
    raise SecretNotFoundError(
        f"secret '{name}' has no value: set the environment variable "
        f"{secret_environment_variable(name)} or configure a secret resolver "
        "(fs_dagster.set_secret_resolver)"
    )


def _check_secret_name(owner: str | None, parameter: str, value: object, kind: str) -> None:
    if not isinstance(value, str) or not _SECRET_NAME.match(value):
        raise FeatureSetDefinitionError(
            owner,
            parameter,
            "expected the name of a secret (letters, digits, '_', '-', '.', '/'), "
            "resolved from the environment when the run starts; never the secret itself",
            kind=kind,
        )


@dataclass(frozen=True)
class SaslAuthentication:
    """SASL login to Kafka (``PLAIN`` or ``SCRAM``), over TLS unless told otherwise.

    Attributes:
        username_secret: name of the secret holding the user name.
        password_secret: name of the secret holding the password.
        sasl_mechanism: :class:`SaslMechanism` (``PLAIN``, ``SCRAMSHA256``, ``SCRAMSHA512``).
        security_protocol: :class:`SecurityProtocol` (``SASL_SSL`` or ``SASL_PLAINTEXT``).
        ssl_ca_location: PEM bundle of the CA that signs the brokers' certificates, for
            ``SASL_SSL`` with a private CA (fs-dagster's addition; default: the JVM's
            trust store).
    """

    username_secret: str
    password_secret: str
    sasl_mechanism: SaslMechanism = SaslMechanism.SCRAMSHA512
    security_protocol: SecurityProtocol = SecurityProtocol.SASL_SSL
    ssl_ca_location: str | None = None

    def __post_init__(self) -> None:
        kind = "SASL authentication"
        _check_secret_name(None, "username_secret", self.username_secret, kind)
        _check_secret_name(None, "password_secret", self.password_secret, kind)
        if not isinstance(self.sasl_mechanism, SaslMechanism):
            raise FeatureSetDefinitionError(
                None,
                "sasl_mechanism",
                f"expected SaslMechanism.PLAIN, SCRAMSHA256 or SCRAMSHA512, "
                f"got {self.sasl_mechanism!r}",
                kind=kind,
            )
        if not isinstance(self.security_protocol, SecurityProtocol):
            raise FeatureSetDefinitionError(
                None,
                "security_protocol",
                f"expected SecurityProtocol.SASL_SSL or SASL_PLAINTEXT, "
                f"got {self.security_protocol!r}",
                kind=kind,
            )


@dataclass(frozen=True)
class SslAuthentication:
    """TLS to Kafka, optionally with a client certificate (mutual TLS).

    ``SslAuthentication()`` alone encrypts and verifies the brokers against the JVM's
    trust store, as in JFrog ML.

    Attributes:
        ca_location: PEM bundle of the CA that signs the brokers' certificates.
        certificate_location: client certificate (PEM) for mutual TLS.
        key_location: client private key (PEM).
        key_password_secret: name of the secret holding the private key's password.
    """

    ca_location: str | None = None
    certificate_location: str | None = None
    key_location: str | None = None
    key_password_secret: str | None = None

    def __post_init__(self) -> None:
        kind = "SSL authentication"
        if (self.certificate_location is None) != (self.key_location is None):
            raise FeatureSetDefinitionError(
                None,
                "certificate_location",
                "mutual TLS needs both certificate_location and key_location",
                kind=kind,
            )
        if self.key_password_secret is not None:
            _check_secret_name(None, "key_password_secret", self.key_password_secret, kind)


KafkaAuthentication = SaslAuthentication | SslAuthentication


def check_authentication(owner: str, value: object, kind: str) -> KafkaAuthentication | None:
    """Validate an ``auth_configuration`` parameter of a Kafka source or sink."""
    if value is None or isinstance(value, SaslAuthentication | SslAuthentication):
        return value
    raise FeatureSetDefinitionError(
        owner,
        "auth_configuration",
        f"expected SaslAuthentication(...), SslAuthentication(...) or None, "
        f"got {type(value).__name__}",
        kind=kind,
    )
