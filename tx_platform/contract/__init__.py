"""The data contract: the Avro schema file and what derives from it."""

from tx_platform.contract._avro import (
    COMPATIBILITY,
    AvroRecordSerializer,
    Registration,
    SchemaIncompatibleError,
    register_contract,
    registry_client,
    split_wire_format,
)
from tx_platform.contract._rules import (
    ERROR_CODES,
    MAX_FUTURE_SECONDS,
    MCC_PATTERN,
    UUID_PATTERN,
    country_codes,
    currency_codes,
)
from tx_platform.contract._schema import SUBJECT, Contract, Field, load_contract, parse_contract, subject_for
from tx_platform.contract._serde import Record, Serializer

__all__ = [
    "COMPATIBILITY",
    "AvroRecordSerializer",
    "Registration",
    "SchemaIncompatibleError",
    "register_contract",
    "registry_client",
    "split_wire_format",
    "subject_for",
    "ERROR_CODES",
    "MAX_FUTURE_SECONDS",
    "MCC_PATTERN",
    "UUID_PATTERN",
    "country_codes",
    "currency_codes",
    "SUBJECT",
    "Contract",
    "Field",
    "Record",
    "Serializer",
    "load_contract",
    "parse_contract",
]
