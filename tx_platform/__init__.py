"""tx_platform: real-time card transactions from Kafka through Spark into PostgreSQL, run by Dagster."""

from importlib import metadata

from tx_platform.config import Settings, load_settings
from tx_platform.errors import (
    ArtifactError,
    ConfigError,
    ContractError,
    DeliveryError,
    ServiceUnavailableError,
    SinkError,
    StackError,
    TopicNotFoundError,
    TxPlatformError,
)

__version__ = metadata.version("tx_platform")

__all__ = [
    "ArtifactError",
    "ConfigError",
    "ContractError",
    "DeliveryError",
    "ServiceUnavailableError",
    "Settings",
    "SinkError",
    "StackError",
    "TopicNotFoundError",
    "TxPlatformError",
    "__version__",
    "load_settings",
]
