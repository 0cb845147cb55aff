"""Spark transforms of the pipelines' streams beyond the sink: one-minute candles of trades (``candles``)."""

from spark_jobs.transforms.candles import (
    ALLOWED_LATENESS,
    CANDLES,
    CandleQueryError,
    CandleSpec,
    CandleStats,
    CandleStream,
    CandleWriter,
    NotionalParts,
    WriterSchemasChangedError,
    candle_frame,
    collect_candles,
    good_trades,
    run_candles,
    run_candles_available_now,
    start_candles,
)

__all__ = [
    "ALLOWED_LATENESS",
    "CANDLES",
    "CandleQueryError",
    "CandleSpec",
    "CandleStats",
    "CandleStream",
    "CandleWriter",
    "NotionalParts",
    "WriterSchemasChangedError",
    "candle_frame",
    "collect_candles",
    "good_trades",
    "run_candles",
    "run_candles_available_now",
    "start_candles",
]
