"""Deliberately bad records, to demonstrate and test the dead-letter path, for any pipeline.

Each kind is labelled (header ``txp.injected``) and names the error code the sink must give it.
The corpus of a pipeline: bytes no contract can read (the same for every pipeline), an empty
natural key, and one record per rule of its spec, carrying the rule's ``bad_example``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tx_platform.contract import Record
from tx_platform.pipelines import PipelineSpec

Encode = Callable[[Record], bytes]
INJECTED_HEADER = "txp.injected"


@dataclass(frozen=True)
class Fault:
    """One kind of bad record: how to make it from a good one and what the sink must say."""

    kind: str
    expected_code: str
    make: Callable[[Record, Encode, random.Random], bytes | None]


def _with(record: Record, **changes: object) -> Record:
    return {**record, **changes}


def _random_bytes(_r: Record, _e: Encode, rng: random.Random) -> bytes:
    return bytes([0xFF]) + rng.randbytes(rng.randint(4, 64))


def _wrong_magic(r: Record, encode: Encode, _rng: random.Random) -> bytes:
    return b"\x01" + encode(r)[1:]


def _unknown_schema_id(r: Record, encode: Encode, _rng: random.Random) -> bytes:
    return b"\x00" + struct.pack(">I", 2_000_000_000) + encode(r)[5:]


def _truncated(r: Record, encode: Encode, _rng: random.Random) -> bytes:
    data = encode(r)
    return data[: 5 + (len(data) - 5) // 3]


#: Bytes no contract reads, whatever the pipeline.
WIRE_FAULTS: tuple[Fault, ...] = (
    Fault("random_bytes", "NOT_WIRE_FORMAT", _random_bytes),
    Fault("empty_value", "NOT_WIRE_FORMAT", lambda _r, _e, _g: b""),
    Fault("wrong_magic_byte", "NOT_WIRE_FORMAT", _wrong_magic),
    Fault("unknown_schema_id", "UNKNOWN_SCHEMA_ID", _unknown_schema_id),
    Fault("truncated_avro", "UNDECODABLE_AVRO", _truncated),
    Fault("tombstone", "NULL_VALUE", lambda _r, _e, _g: None),
)


def _replacing(field: str, value: object) -> Callable[[Record, Encode, random.Random], bytes | None]:
    return lambda r, encode, _rng: encode(_with(r, **{field: value}))


def faults_for(spec: PipelineSpec) -> tuple[Fault, ...]:
    """The bad-input corpus of ``spec``: wire faults, an empty natural key, a violation of each rule."""
    own = [Fault(f"missing_{spec.natural_key}", "MISSING_FIELD", _replacing(spec.natural_key, ""))]
    own += [
        Fault(f"{rule.field}_{rule.code.lower()}", rule.code, _replacing(rule.field, rule.bad_example))
        for rule in spec.rules
        if rule.bad_example is not None
    ]
    return (*WIRE_FAULTS, *own)


@dataclass(frozen=True)
class Outgoing:
    """What the producer sends for one generated record."""

    key: bytes
    value: bytes | None
    injected: str | None  # the fault kind, or None for a good record


class FaultInjector:
    """Replaces a seeded share of records with bad ones, cycling through every kind."""

    def __init__(self, ratio: float, seed: int, encode: Encode, spec: PipelineSpec) -> None:
        if not 0.0 <= ratio <= 1.0:
            msg = "--bad-ratio must be between 0 and 1"
            raise ValueError(msg)
        self.ratio = ratio
        self._rng = random.Random(f"faults-{seed}")  # noqa: S311 - reproducible test data
        self._encode = encode
        self._key = spec.kafka_key
        self.faults = faults_for(spec)
        self._next = 0
        self.injected: dict[str, int] = {}

    def outgoing(self, record: Record) -> Outgoing:
        """The bytes to send for ``record``: its encoding, or a bad variant."""
        key = str(record[self._key]).encode()
        if self.ratio == 0 or self._rng.random() >= self.ratio:
            return Outgoing(key, self._encode(record), None)
        fault = self.faults[self._next % len(self.faults)]
        self._next += 1
        self.injected[fault.kind] = self.injected.get(fault.kind, 0) + 1
        return Outgoing(key, fault.make(record, self._encode, self._rng), fault.kind)

    @property
    def next_kind(self) -> int:
        """Index of the fault kind the next bad record gets (they cycle)."""
        return self._next

    def rng_state(self) -> object:
        """The state of the seeded draws (which records are bad, and their random bytes)."""
        return self._rng.getstate()

    def restore(self, injected: dict[str, int], next_kind: int, rng_state: object) -> None:
        """Take over the state of an injector that went on in another process (see ``_parallel``)."""
        self.injected = dict(injected)
        self._next = next_kind
        self._rng.setstate(rng_state)  # type: ignore[arg-type]

    @property
    def injected_total(self) -> int:
        """Bad records made so far."""
        return sum(self.injected.values())
