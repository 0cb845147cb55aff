"""Exception hierarchy: one root, subclasses that also inherit the built-in they specialise."""

from __future__ import annotations


class TxPlatformError(Exception):
    """Root of every error tx_platform raises on purpose.

    The CLI prints these without a traceback: their message says what happened and what to do.
    """


class ConfigError(TxPlatformError, ValueError):
    """A setting is missing or malformed."""


class ContractError(TxPlatformError, ValueError):
    """A schema file or a record does not match the data contract."""


class StackError(TxPlatformError, RuntimeError):
    """A service of the local stack could not be started, reached or stopped."""


class ArtifactError(StackError):
    """JVM artifacts could not be resolved (Java or Maven missing, resolution failed)."""


class ServiceUnavailableError(TxPlatformError, ConnectionError):
    """An external service (Kafka, Postgres, the registry) did not answer in time."""


class TopicNotFoundError(ServiceUnavailableError):
    """Kafka answered, but the topic is not there (yet)."""


class DeliveryError(TxPlatformError, RuntimeError):
    """Some produced records were not acknowledged by Kafka."""


class SinkError(TxPlatformError, RuntimeError):
    """The streaming sink failed; the message carries the query's own exception."""


class LedgerError(SinkError):
    """A batch or a start contradicts the offset ledger in Postgres; nothing was committed."""


class OffsetGapError(LedgerError):
    """A batch starts after the ledger's end: committing it would skip records."""

    def __init__(self, topic: str, partition: int, expected: int, first: int) -> None:
        self.topic, self.partition, self.expected, self.first = topic, partition, expected, first
        super().__init__(
            f"[OFFSET_GAP] {topic}[{partition}]: the batch starts at offset {first} but the ledger in Postgres "
            f"ends at {expected}; offsets {expected}..{first - 1} would be skipped. The Spark checkpoint is ahead "
            "of Postgres (restored or copied from another warehouse?): delete the sink's checkpoint directory "
            "and start again, and the sink resumes from Postgres"
        )


class TopicRecreatedError(LedgerError):
    """The topic behind the ledger is not the topic Kafka has now under that name."""

    def __init__(
        self,
        topic: str,
        ledger_id: str | None,
        current_id: str | None,
        partition: int | None = None,
        next_offset: int | None = None,
        end: int | None = None,
    ) -> None:
        if partition is None:
            what = (
                f"Kafka's topic id is {current_id}, the ledger's {ledger_id}: the topic was deleted and created again"
            )
        else:
            what = (
                f"partition {partition} ends at offset {end}, but the ledger has committed up to {next_offset}: "
                "the topic was deleted and created again, or truncated"
            )
        super().__init__(
            f"[TOPIC_RECREATED] {topic}: {what}. Its offsets start over, so reading on would mistake new records "
            f"for replays. Either restore the topic, or move this topic's rows aside and start over with "
            f"`txp topics forget --topic {topic}` (deletes its rows, quarantine and offsets from the warehouse)"
        )


class DataLossError(LedgerError):
    """Kafka deleted records (retention) that the sink had not read yet."""

    def __init__(self, topic: str, gaps: list[str]) -> None:
        self.gaps = gaps
        super().__init__(
            f"[DATA_LOSS] {topic}: records were deleted by retention before the sink read them: {'; '.join(gaps)}. "
            "They cannot be recovered from Kafka. To record the gap in the table sink_gaps and go on, run the sink "
            "with TXP_SINK_ON_DATA_LOSS=record"
        )


class SinkAlreadyRunningError(LedgerError):
    """Another sink holds the topic's lease."""

    def __init__(self, topic: str, holder: str, since: object, waited: float | None = None) -> None:
        after = "" if waited is None else f" (waited {waited:.0f} s for it to finish)"
        super().__init__(
            f"[SINK_ALREADY_RUNNING] another sink is committing {topic} ({holder}, since {since}){after}; only one "
            "sink may write a topic's offsets — stop the other one (`txp sink`, a Dagster run, or spark-submit) first"
        )


class SinkFencedError(LedgerError):
    """A commit under an epoch that is no longer the topic's: another sink took over."""

    def __init__(self, topic: str, epoch: int, current: int | None, holder: str | None, batch_id: int) -> None:
        super().__init__(
            f"[SINK_FENCED] {topic}: this sink's lease (epoch {epoch}) was taken over by {holder or 'nobody'} "
            f"(epoch {current}); batch {batch_id} was not committed and this sink stops"
        )
