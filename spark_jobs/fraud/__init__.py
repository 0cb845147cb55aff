"""Streaming fraud detection: the transactions topic -> `fraud_alerts` and the topic `fraud.alerts`."""

from spark_jobs.fraud._query import (
    ALERTS_TOPIC,
    AlertPublisher,
    FraudQuery,
    FraudStats,
    alerts_topic,
)
from spark_jobs.fraud._rules import AccountState, Alert, Detector, Tx

__all__ = [
    "ALERTS_TOPIC",
    "AccountState",
    "Alert",
    "AlertPublisher",
    "Detector",
    "FraudQuery",
    "FraudStats",
    "Tx",
    "alerts_topic",
]
