"""The streaming sink of a pipeline, from its Kafka topic to PostgreSQL."""

from spark_jobs.sink._decode import contract_struct, decode, render
from spark_jobs.sink._query import PipelineSink, SinkStats, await_query

__all__ = [
    "PipelineSink",
    "SinkStats",
    "await_query",
    "contract_struct",
    "decode",
    "render",
]
