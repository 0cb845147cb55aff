"""Avro in Confluent's wire format, with the schema governed by a Confluent-compatible registry.

Wire format: magic byte 0, the 4-byte big-endian schema id, then the Avro binary body. Schemas
evolve under BACKWARD compatibility, enforced by the registry: :func:`register_contract` sets
the subject's level and registers the schema, or fails with the registry's reasons before a
single record is sent.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from urllib.parse import quote
from urllib.request import Request, urlopen

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from tx_platform.contract._serde import Record
from tx_platform.errors import ContractError, ServiceUnavailableError

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")  # magic byte, schema id
COMPATIBILITY = "BACKWARD"


class SchemaIncompatibleError(ContractError):
    """The registry refused a schema under the subject's compatibility rules."""


def registry_client(url: str) -> SchemaRegistryClient:
    """A registry client for ``url`` (e.g. ``http://127.0.0.1:8081/apis/ccompat/v7``)."""
    return SchemaRegistryClient({"url": url, "timeout": 10})


@dataclass(frozen=True)
class Registration:
    """Where a schema stands in the registry."""

    subject: str
    schema_id: int
    version: int


def _unavailable(url: str, exc: Exception) -> ServiceUnavailableError:
    msg = f"the schema registry did not answer at {url} ({exc}) — is the stack up? run `make up`"
    return ServiceUnavailableError(msg)


def register_contract(client: SchemaRegistryClient, url: str, schema_str: str, subject: str) -> Registration:
    """Register ``schema_str`` under ``subject`` with BACKWARD compatibility.

    Raises :class:`SchemaIncompatibleError` naming the subject, the latest version and the
    registry's reasons when the schema would break readers of earlier versions.
    """
    text = schema_str
    schema = Schema(text, "AVRO")
    try:
        client.set_compatibility(subject_name=subject, level=COMPATIBILITY)
        schema_id = client.register_schema(subject, schema)
        version = client.lookup_schema(subject, schema).version
    except SchemaRegistryError as exc:
        if exc.http_status_code not in (409, 422):
            raise _unavailable(url, exc) from exc
        latest = _latest_version(client, subject)
        reasons = _compatibility_reasons(url, subject, text) or exc.error_message
        msg = (
            f"schema rejected by the registry for subject {subject!r}: not {COMPATIBILITY} compatible with "
            f"version {latest}: {reasons}"
        )
        raise SchemaIncompatibleError(msg) from exc
    except (OSError, RuntimeError) as exc:  # connection errors of the HTTP client
        raise _unavailable(url, exc) from exc
    return Registration(subject=subject, schema_id=int(schema_id), version=int(version or 0))


def _latest_version(client: SchemaRegistryClient, subject: str) -> str:
    try:
        return str(max(client.get_versions(subject)))
    except (SchemaRegistryError, ValueError):
        return "?"


def _compatibility_reasons(url: str, subject: str, schema_str: str) -> str:
    """The registry's verbose compatibility messages (the client library keeps only the verdict)."""
    body = json.dumps({"schema": schema_str, "schemaType": "AVRO"}).encode()
    endpoint = f"{url.rstrip('/')}/compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true"
    request = Request(endpoint, data=body, headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})  # noqa: S310
    try:
        with urlopen(request, timeout=10) as response:  # noqa: S310 - the configured registry URL
            answer = json.loads(response.read())
    except (OSError, ValueError):
        return ""
    messages = answer.get("messages") or []
    return "; ".join(str(m) for m in messages)


class AvroRecordSerializer:
    """Record -> Confluent wire-format bytes, for the schema already registered under the subject."""

    def __init__(self, client: SchemaRegistryClient, topic: str, schema_str: str) -> None:
        self._inner = AvroSerializer(
            client,
            schema_str,
            conf={"auto.register.schemas": False, "use.latest.version": False, "normalize.schemas": False},
        )
        self._context = SerializationContext(topic, MessageField.VALUE)

    def __call__(self, record: Record) -> bytes:
        """Serialise one record."""
        data = self._inner(record, self._context)
        if data is None:
            msg = "the Avro serializer returned nothing for a record"
            raise ContractError(msg)
        return data


def split_wire_format(data: bytes) -> tuple[int, bytes]:
    """``(schema_id, avro_body)`` of Confluent wire-format bytes; ContractError if not that format."""
    if len(data) < HEADER.size or data[0] != MAGIC_BYTE:
        msg = "not Confluent wire format (needs magic byte 0 and a 4-byte schema id)"
        raise ContractError(msg)
    _magic, schema_id = HEADER.unpack_from(data)
    return schema_id, data[HEADER.size :]
