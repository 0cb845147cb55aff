"""The generic producer: any pipeline's seeded records into Kafka, with an optional bad-input corpus."""

from tx_platform.producer._encoder import WireEncoder
from tx_platform.producer._faults import INJECTED_HEADER, WIRE_FAULTS, Fault, FaultInjector, faults_for
from tx_platform.producer._kafka import THROUGHPUT_CONFIG, DeliveryReport, RecordProducer, open_producer, produce

__all__ = [
    "INJECTED_HEADER",
    "THROUGHPUT_CONFIG",
    "WIRE_FAULTS",
    "DeliveryReport",
    "Fault",
    "FaultInjector",
    "RecordProducer",
    "WireEncoder",
    "faults_for",
    "open_producer",
    "produce",
]
