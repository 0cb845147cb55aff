"""The data contract: the Avro schema file and what derives from it."""

from tx_platform.contract._rules import (
    ERROR_CODES,
    MAX_FUTURE_SECONDS,
    MCC_PATTERN,
    UUID_PATTERN,
    country_codes,
    currency_codes,
)
from tx_platform.contract._schema import SUBJECT, Contract, Field, load_contract, parse_contract
from tx_platform.contract._serde import (
    Record,
    Serializer,
    format_event_time,
    json_deserializer,
    json_serializer,
)

__all__ = [
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
    "format_event_time",
    "json_deserializer",
    "json_serializer",
    "load_contract",
    "parse_contract",
]
