"""Generate and encode records in forked processes while this one hands them to Kafka.

One Python thread cannot generate, encode and deliver 100k records/s: each stage costs a few
microseconds per record. A child iterates the records (the seeded generator) and runs
:meth:`RecordProducer.prepare` (fault injection, Avro, the good records' decimal totals), sending
``(keys, values, headers)`` in chunks through a pipe; the parent only produces them, in the same
order, with the same callbacks and the same final flush. The child never touches the Kafka client it
inherits (forked with librdkafka's threads running, it must not): it returns the totals and the fault
injector's state at the end, so the producer object ends up as if it had prepared every record itself.

When the generator's records come in independent blocks (:class:`~tx_platform.pipelines.BlockedRecords`)
and no faults are injected (the injector draws from one random source, record after record), several
children share the blocks: child ``k`` of ``n`` prepares blocks ``k, k + n, ...`` and the parent reads
block ``b`` from child ``b % n``, so the records reach Kafka in the stream's order, whatever ``n``.

The pipes are the back-pressure (a chunk is sent when the parent reads it); a child ignores SIGINT
(the parent stops it) and exits on a broken pipe when the parent is gone, even after a SIGKILL.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tx_platform.contract import Record
from tx_platform.errors import DeliveryError
from tx_platform.pipelines import BlockedRecords

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


#: ``fcntl`` command that sets a pipe's capacity (Linux), and the capacity asked for.
_F_SETPIPE_SZ = 1031
_PIPE_BYTES = 4 << 20
#: What a child sends after the last chunk of each of its blocks.
_END_OF_BLOCK = None


@dataclass(frozen=True)
class _Failed:
    """The child stopped on an error: the exception itself when it pickles, else its text."""

    error: BaseException | str


def can_prepare_in_child() -> bool:
    """True where a forked preparing process is safe and useful: Linux, two CPUs or more."""
    return sys.platform == "linux" and (os.cpu_count() or 1) >= 2


def preparing_processes(records: Iterable[Record], producer: RecordProducer) -> int:
    """How many children prepare ``records``: one per CPU (at most one per block) for blocked records
    without fault injection or per-record headers, else one."""
    if not isinstance(records, BlockedRecords) or records.started:
        return 1
    if producer.faults is not None or producer.record_headers:
        return 1
    return max(1, min(os.cpu_count() or 1, len(records.blocks)))


def _portable(exc: BaseException) -> BaseException | str:
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, to test the round trip
    except Exception:  # noqa: BLE001 - any exception that does not survive the pipe goes as text
        return f"{type(exc).__name__}: {exc}"
    return exc


def _prepare(
    conn: Connection, parents_ends: list[Connection], blocks: Iterable[Iterable[Record]], producer: RecordProducer
) -> None:
    """A child's work: prepare every record of its blocks, chunk by chunk, each block closed by
    :data:`_END_OF_BLOCK`; then report the producer's state."""
    # forked with every descriptor of the parent: close its reading ends, else a pipe keeps a reader
    # after the parent died and a send blocks forever instead of failing with EPIPE
    for end in parents_ends:
        end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keys: list[bytes] = []
    values: list[bytes | None] = []
    kinds: list[list[tuple[str, str | bytes | None]] | None] = []
    try:
        prepare = producer.prepare
        for block in blocks:
            for record in block:
                key, value, kind = prepare(record)
                keys.append(key)
                values.append(value)
                kinds.append(kind)
                if len(keys) >= CHUNK:
                    conn.send((keys, values, kinds))
                    keys, values, kinds = [], [], []
            if keys:
                conn.send((keys, values, kinds))
                keys, values, kinds = [], [], []
            conn.send(_END_OF_BLOCK)
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


def _widen(conn: Connection) -> None:
    """Let the pipe hold a whole block or more (Linux's default holds 64 KiB, a 4,096-record block of
    transactions is about 600 KB): a child then prepares its next block while the parent still reads
    another child's, instead of waiting for its turn. The system's ``fs.pipe-max-size`` caps it."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(conn.fileno(), _F_SETPIPE_SZ, min(limit, _PIPE_BYTES))
    except (OSError, ValueError):
        return  # a narrower pipe is slower, not wrong


def _receive(reader: Connection, child: BaseProcess) -> Chunk | _Done | None:
    """The next message of a child; raises its error, or :class:`DeliveryError` when it died without a word."""
    try:
        item = reader.recv()
    except EOFError:
        child.join(5)
        msg = f"[PREPARE_FAILED] the record-preparing process exited early (exit code {child.exitcode})"
        raise DeliveryError(msg) from None
    if isinstance(item, _Failed):
        if isinstance(item.error, BaseException):
            raise item.error
        msg = f"[PREPARE_FAILED] preparing records failed: {item.error}"
        raise DeliveryError(msg)
    return cast("Chunk | _Done | None", item)


def prepared_in_child(records: Iterable[Record], producer: RecordProducer) -> Generator[Chunk, None, None]:
    """Chunks of ``(keys, values, headers)`` of the records, in order, prepared by forked children
    (as many as :func:`preparing_processes` says).

    The caller must not iterate ``records`` itself. Raises a child's exception, or
    :class:`DeliveryError` when a child died without a word.
    """
    processes = preparing_processes(records, producer)
    if processes > 1 and isinstance(records, BlockedRecords):
        blocks = records.blocks
        shares: list[Iterable[Iterable[Record]]] = [
            (block() for block in blocks[k::processes]) for k in range(processes)
        ]
        order = [b % processes for b in range(len(blocks))]
    else:
        shares, order = [[records]], [0]
    context = multiprocessing.get_context("fork")
    readers: list[Connection] = []
    children: list[BaseProcess] = []
    try:
        for k, share in enumerate(shares):
            reader, writer = context.Pipe(duplex=False)
            _widen(writer)
            readers.append(reader)
            process = context.Process(
                target=_prepare, args=(writer, readers, share, producer), name=f"txp-produce-prepare-{k}", daemon=True
            )
            process.start()
            children.append(process)
            writer.close()  # the child holds the only writing end: EOF here when it exits
        for k in order:  # block by block, each from the child that prepared it
            while (item := _receive(readers[k], children[k])) is not None:
                if isinstance(item, _Done):
                    msg = f"[PREPARE_FAILED] preparing process {k} ended before its blocks did"
                    raise DeliveryError(msg)
                yield item
        # each child started from the totals at the fork and added its own records' to them
        before = dict(producer.good_totals)
        totals = dict(before)
        for reader, finished in zip(readers, children, strict=True):
            done = _receive(reader, finished)
            if not isinstance(done, _Done):
                msg = "[PREPARE_FAILED] a preparing process sent records past its last block"
                raise DeliveryError(msg)
            for name, value in done.good_totals.items():
                totals[name] += value - before.get(name, Decimal(0))
            if done.faults is not None and producer.faults is not None:
                producer.faults.restore(*done.faults)  # one child when faults are injected
        producer.good_totals = totals
    finally:
        for reader in readers:
            reader.close()  # a child still sending gets a broken pipe and exits
        for left in children:
            left.join(5)
            if left.is_alive():
                left.terminate()
                left.join(5)
