"""Generate and encode records in a forked process while this one hands them to Kafka.

One Python thread cannot generate, encode and deliver 100k records/s: each stage costs a few
microseconds per record. Two processes overlap them on two cores: the child iterates the records
(the seeded generator) and runs :meth:`RecordProducer.prepare` (fault injection, Avro, the good
records' decimal totals), sending ``(keys, values, headers)`` in chunks through a pipe; the
parent only produces them, in the same order, with the same callbacks and the same final flush.
The child never touches the Kafka client it inherits (forked with librdkafka's threads running,
it must not): it returns the totals and the fault injector's state at the end, so the producer
object ends up as if it had prepared every record itself.

The pipe is the back-pressure (a chunk is sent when the parent reads it); the child ignores SIGINT
(the parent stops it) and exits on a broken pipe when the parent is gone, even after a SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from tx_platform.contract import Record
from tx_platform.errors import DeliveryError

if TYPE_CHECKING:
    from tx_platform.producer._kafka import RecordProducer

#: Records per message through the pipe (about 300 KB of transactions).
CHUNK = 2_048
#: keys, values and headers (None: none) of consecutive records
Chunk = tuple[list[bytes], list[bytes | None], list[list[tuple[str, str | bytes | None]] | None]]


@dataclass(frozen=True)
class _Done:
    """The child's last message: the producer state it accumulated while preparing."""

    good_totals: dict[str, Decimal]
    faults: tuple[dict[str, int], int, Any] | None  # injected counts, next kind, rng state


@dataclass(frozen=True)
class _Failed:
    """The child stopped on an error: the exception itself when it pickles, else its text."""

    error: BaseException | str


def can_prepare_in_child() -> bool:
    """True where a forked preparing process is safe and useful: Linux, two CPUs or more."""
    return sys.platform == "linux" and (os.cpu_count() or 1) >= 2


def _portable(exc: BaseException) -> BaseException | str:
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, to test the round trip
    except Exception:  # noqa: BLE001 - any exception that does not survive the pipe goes as text
        return f"{type(exc).__name__}: {exc}"
    return exc


def _prepare(conn: Connection, parents_end: Connection, records: Iterable[Record], producer: RecordProducer) -> None:
    """The child's work: prepare every record, chunk by chunk, then report the producer's state."""
    # forked with every descriptor of the parent: close the reading end, else the pipe keeps a
    # reader after the parent died and a send blocks forever instead of failing with EPIPE
    parents_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keys: list[bytes] = []
    values: list[bytes | None] = []
    kinds: list[list[tuple[str, str | bytes | None]] | None] = []
    try:
        prepare = producer.prepare
        for record in records:
            key, value, kind = prepare(record)
            keys.append(key)
            values.append(value)
            kinds.append(kind)
            if len(keys) >= CHUNK:
                conn.send((keys, values, kinds))
                keys, values, kinds = [], [], []
        if keys:
            conn.send((keys, values, kinds))
        faults = producer.faults
        state = None if faults is None else (faults.injected, faults.next_kind, faults.rng_state())
        conn.send(_Done(producer.good_totals, state))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent is gone: nobody to prepare for
    except BaseException as exc:  # noqa: BLE001 - every failure is the parent's to raise
        try:
            if keys:  # what was prepared before the error is sent, as the one-process loop would have
                conn.send((keys, values, kinds))
            conn.send(_Failed(_portable(exc)))
        except OSError:
            return
    finally:
        conn.close()


def prepared_in_child(records: Iterable[Record], producer: RecordProducer) -> Generator[Chunk, None, None]:
    """Chunks of ``(keys, values, headers)`` of the records, in order, prepared by a forked child process.

    The caller must not iterate ``records`` itself. Raises the child's exception, or
    :class:`DeliveryError` when the child died without a word.
    """
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(
        target=_prepare, args=(writer, reader, records, producer), name="txp-produce-prepare", daemon=True
    )
    child.start()
    writer.close()  # the child holds the only writing end: EOF here when it exits
    try:
        while True:
            try:
                item = reader.recv()
            except EOFError:
                child.join(5)
                msg = f"[PREPARE_FAILED] the record-preparing process exited early (exit code {child.exitcode})"
                raise DeliveryError(msg) from None
            if isinstance(item, _Done):
                producer.good_totals = item.good_totals
                if item.faults is not None and producer.faults is not None:
                    producer.faults.restore(*item.faults)
                return
            if isinstance(item, _Failed):
                if isinstance(item.error, BaseException):
                    raise item.error
                msg = f"[PREPARE_FAILED] preparing records failed: {item.error}"
                raise DeliveryError(msg)
            yield item
    finally:
        reader.close()  # a child still sending gets a broken pipe and exits
        child.join(5)
        if child.is_alive():
            child.terminate()
            child.join(5)
