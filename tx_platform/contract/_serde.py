"""Record (de)serialisation behind one small interface.

The wire format today is UTF-8 JSON with the contract's field names; amounts are JSON numbers
with two decimals and ``event_time`` is an ISO-8601 UTC string with milliseconds. Swapping in
Avro (Confluent wire format) changes only this module and the sink's decoder.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from tx_platform.errors import ContractError

Record = dict[str, Any]


class Serializer(Protocol):
    """Turns a record into the Kafka value bytes."""

    def __call__(self, record: Record) -> bytes:
        """Serialise one record."""
        ...


def format_event_time(value: datetime) -> str:
    """ISO-8601 UTC with millisecond precision and a ``Z`` suffix."""
    if value.tzinfo is None:
        msg = "event_time must be timezone-aware"
        raise ContractError(msg)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)  # two-decimal amounts round-trip exactly through a double's repr
    if isinstance(value, datetime):
        return format_event_time(value)
    msg = f"cannot serialise {type(value).__name__}"
    raise TypeError(msg)


def json_serializer(record: Record) -> bytes:
    """Serialise a record as compact UTF-8 JSON."""
    return json.dumps(record, default=_default, separators=(",", ":")).encode()


def json_deserializer(data: bytes) -> Record:
    """Parse JSON bytes back into a record with Decimal amount and aware datetime."""
    try:
        raw = json.loads(data)
        # the amount is re-read from its text, never through a float, so it stays exact
        raw["amount"] = Decimal(str(raw["amount"])).quantize(Decimal("0.01"))
        raw["event_time"] = datetime.fromisoformat(raw["event_time"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        msg = f"not a transaction record: {exc}"
        raise ContractError(msg) from exc
    return dict(raw)
