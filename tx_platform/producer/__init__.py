"""Synthetic transaction producer: Faker-built entity pools, a seeded generator, a Kafka producer."""

from tx_platform.producer._catalog import CATEGORIES, COUNTRIES, Category, Country
from tx_platform.producer._faults import FAULTS, INJECTED_HEADER, Fault, FaultInjector
from tx_platform.producer._generator import Pools, build_pools, generate
from tx_platform.producer._kafka import (
    PRODUCER_DEFAULTS,
    DeliveryReport,
    TransactionProducer,
    open_producer,
    produce,
)

__all__ = [
    "CATEGORIES",
    "COUNTRIES",
    "FAULTS",
    "INJECTED_HEADER",
    "Fault",
    "FaultInjector",
    "PRODUCER_DEFAULTS",
    "Category",
    "Country",
    "DeliveryReport",
    "Pools",
    "TransactionProducer",
    "build_pools",
    "generate",
    "open_producer",
    "produce",
]
