"""Exception hierarchy: one root, subclasses that also inherit the built-in they specialise."""

from __future__ import annotations


class TxPlatformError(Exception):
    """Root of every error tx_platform raises on purpose.

    The CLI prints these without a traceback: their message says what happened and what to do.
    """


class ConfigError(TxPlatformError, ValueError):
    """A setting is missing or malformed."""


class ContractError(TxPlatformError, ValueError):
    """A schema file or a record does not match the data contract."""


class StackError(TxPlatformError, RuntimeError):
    """A service of the local stack could not be started, reached or stopped."""


class ArtifactError(StackError):
    """JVM artifacts could not be resolved (Java or Maven missing, resolution failed)."""


class ServiceUnavailableError(TxPlatformError, ConnectionError):
    """An external service (Kafka, Postgres, the registry) did not answer in time."""


class TopicNotFoundError(ServiceUnavailableError):
    """Kafka answered, but the topic is not there (yet)."""


class DeliveryError(TxPlatformError, RuntimeError):
    """Some produced records were not acknowledged by Kafka."""


class SinkError(TxPlatformError, RuntimeError):
    """The streaming sink failed; the message carries the query's own exception."""
