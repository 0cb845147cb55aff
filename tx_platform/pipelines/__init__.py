"""Pipelines as data: each is a :class:`PipelineSpec`; the shared machinery is built from specs.

Two ship: ``transactions`` (the default) and ``crypto_trades``. Adding one means adding a spec,
its contract, a generator and its derived assets (see the README), and listing it here.
"""

from __future__ import annotations

from tx_platform.errors import ConfigError
from tx_platform.pipelines._spec import BlockedRecords, Generator, PipelineSpec, asset_name, resolve_ref
from tx_platform.pipelines.crypto_trades import CRYPTO_TRADES
from tx_platform.pipelines.transactions import TRANSACTIONS

#: The pipelines that ship, by name.
PIPELINES: dict[str, PipelineSpec] = {p.name: p for p in (TRANSACTIONS, CRYPTO_TRADES)}
#: What commands run when no ``--pipeline`` is given.
DEFAULT_PIPELINE = TRANSACTIONS.name


def get_pipeline(name: str, topic: str | None = None) -> PipelineSpec:
    """The shipped pipeline called ``name``, on ``topic`` when one is given (its DLQ: ``<topic>.dlq``).

    ConfigError listing the choices when there is no such pipeline.
    """
    try:
        spec = PIPELINES[name]
    except KeyError:
        msg = f"no pipeline {name!r}; choose one of {', '.join(PIPELINES)}"
        raise ConfigError(msg) from None
    return spec if topic is None else spec.with_topic(topic)


def pipeline_of_topic(topic: str) -> PipelineSpec | None:
    """The shipped pipeline that reads ``topic`` (its topic or its dead-letter topic), if any."""
    return next((p for p in PIPELINES.values() if topic in (p.topic, p.dlq_topic)), None)


__all__ = [
    "CRYPTO_TRADES",
    "DEFAULT_PIPELINE",
    "PIPELINES",
    "TRANSACTIONS",
    "BlockedRecords",
    "Generator",
    "PipelineSpec",
    "asset_name",
    "get_pipeline",
    "pipeline_of_topic",
    "resolve_ref",
]
