"""Types shared by the serializers: a record is a dict of the contract's fields."""

from __future__ import annotations

from typing import Any, Protocol

Record = dict[str, Any]


class Serializer(Protocol):
    """Turns a record into the Kafka value bytes."""

    def __call__(self, record: Record) -> bytes:
        """Serialise one record."""
        ...
