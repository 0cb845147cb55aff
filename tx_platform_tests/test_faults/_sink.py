"""Helpers of the sink-side fault tests: the audit that ends each test, a sink subprocess in a process
group of its own (to kill -9 it whole), a producer that keeps writing in the background, waits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tx_platform.checks import Audit, audit_pipeline
from tx_platform.config import PROJECT_ROOT, Settings
from tx_platform.kafka_admin import watermarks
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import committed_offsets, connect
from tx_platform_tests.conftest import assert_eventually, fetch_all, fetch_one, process_group, spark_jars

#: Share of bad records every sink fault test mixes in, so quarantine and the DLQ are exercised too.
BAD_RATIO = 0.02


def audit(settings: Settings, spec: PipelineSpec, label: str = "") -> Audit:
    """The independent audit of ``spec``'s topic, printed (it appears in ``-rA`` / ``-s`` output)."""
    conn = connect(settings.dsn())
    try:
        result = audit_pipeline(conn, settings.kafka_bootstrap, spec)
    finally:
        conn.close()
    print(f"audit {label or spec.topic}: {json.dumps(result.as_dict(), sort_keys=True)}")  # noqa: T201
    return result


def assert_exact(settings: Settings, spec: PipelineSpec, label: str = "") -> Audit:
    """Audit and require nothing lost, doubled or unexplained, with every record accounted for."""
    result = audit(settings, spec, label)
    assert (result.lost, result.duplicated, result.unexplained) == (0, 0, 0), result.as_dict()
    assert result.records > 0
    assert result.rows + result.quarantined == result.records, result.as_dict()
    assert result.dlq == result.quarantined, result.as_dict()
    return result


def topic_end(settings: Settings, spec: PipelineSpec) -> dict[int, int]:
    """End offset per partition of ``spec``'s topic now."""
    return {p: high for p, (_low, high) in watermarks(settings.kafka_bootstrap, spec.topic).items()}


def committed(settings: Settings, spec: PipelineSpec) -> dict[int, int]:
    """Next offset per partition in the sink's ledger."""
    conn = connect(settings.dsn())
    try:
        return committed_offsets(conn, spec.topic)
    finally:
        conn.close()


def caught_up(settings: Settings, spec: PipelineSpec) -> bool:
    """The ledger reaches the topic's end on every partition and every quarantined record is in the DLQ."""
    end = topic_end(settings, spec)
    ledger = committed(settings, spec)
    if any(ledger.get(p, 0) < high for p, high in end.items() if high > 0):
        return False
    unpublished = fetch_one(
        settings.dsn(), "SELECT count(*) FROM quarantine WHERE kafka_topic = %s AND dlq_offset IS NULL", spec.topic
    )[0]
    return unpublished == 0


def wait_caught_up(settings: Settings, spec: PipelineSpec, timeout: float = 240.0, sink: Any = None) -> None:  # noqa: ANN401
    """Wait until :func:`caught_up`; fail early if the sink subprocess ``sink`` exits meanwhile."""

    def check() -> bool:
        if sink is not None and sink.proc.poll() is not None:
            msg = f"the sink exited ({sink.proc.returncode}):\n{sink.tail()}"
            raise AssertionError(msg)
        return caught_up(settings, spec)

    assert_eventually(check, timeout=timeout, what=f"the sink to catch up with {spec.topic}")


def batches(settings: Settings, spec: PipelineSpec) -> list[tuple[int, list[int], int, int, int, int]]:
    """``sink_batches`` rows of the topic: (batch_id, partitions, records, inserted, quarantined, skipped)."""
    return fetch_all(
        settings.dsn(),
        "SELECT batch_id, partitions, records, inserted, quarantined, skipped FROM sink_batches "
        "WHERE topic = %s ORDER BY id",
        spec.topic,
    )


def slices_committed(settings: Settings, spec: PipelineSpec) -> int:
    """How many slice commits the topic's ledger has seen (one ``sink_batches`` row each)."""
    return int(fetch_one(settings.dsn(), "SELECT count(*) FROM sink_batches WHERE topic = %s", spec.topic)[0])


class SinkProcess:
    """``spark_jobs/sink/main.py`` in a process group of its own: ``kill9`` takes the driver JVM with it."""

    def __init__(
        self,
        spec: PipelineSpec,
        settings: Settings,
        log: Path,
        available_now: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self.settings = settings
        variables = {
            **os.environ,
            "TXP_CHECKPOINT_DIR": str(settings.checkpoint_root),
            # the driver UI of a continuous local sink: a port of this suite's own block
            "TXP_SPARK_UI_PORT": os.environ.get("TXP_TEST_SPARK_UI_PORT", "4040"),
            **(env or {}),
        }
        mode = ["--available-now"] if available_now else ["--trigger", "1 second"]
        command = [
            sys.executable, str(PROJECT_ROOT / "spark_jobs" / "sink" / "main.py"), *mode,
            "--pipeline", spec.name, "--topic", spec.topic, "--jars", ",".join(spark_jars()),
        ]  # fmt: skip
        with log.open("a") as out:
            out.write(f"==== start {datetime.now(UTC).isoformat()} {' '.join(mode)}\n")
            out.flush()
            self.proc = subprocess.Popen(  # noqa: S603 - our own entry point
                command, env=variables, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_running(self, timeout: float = 180.0) -> None:
        """Until the continuous sink logs ``sink running``."""

        def running() -> bool:
            if self.proc.poll() is not None:
                msg = f"the sink exited ({self.proc.returncode}):\n{self.tail()}"
                raise AssertionError(msg)
            return "sink running" in self.log.read_text(errors="replace").rsplit("==== start", 1)[-1]

        assert_eventually(running, timeout=timeout, what="the sink to start")

    def alive(self) -> bool:
        """True while the sink runs; raises with the end of its log once it has exited."""
        if self.proc.poll() is not None:
            msg = f"the sink exited ({self.proc.returncode}):\n{self.tail()}"
            raise AssertionError(msg)
        return True

    def kill9(self) -> int:
        """SIGKILL the whole process group (Python driver, its JVM, PySpark workers); how many processes it had."""
        members = process_group(self.proc.pid)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert_eventually(lambda: not process_group(self.proc.pid), timeout=30, what="the sink's processes to die")
        self._forget_target()
        return len(members)

    def _forget_target(self) -> None:
        # a killed driver leaves its Prometheus target behind (see spark_jobs/sink/main.py): not in a test's stack
        (self.settings.state_dir / "prometheus" / "targets" / f"spark-{self.proc.pid}.json").unlink(missing_ok=True)

    def stop(self, timeout: float = 120.0) -> int:
        """Graceful stop (SIGTERM); its exit code. Kills the group if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.cleanup()
        return int(self.proc.returncode)

    def wait(self, timeout: float = 600.0) -> int:
        """Wait for an available-now sink to finish; its exit code."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.cleanup()
        return int(self.proc.returncode)

    def cleanup(self) -> None:
        """Nothing of the group may outlive the test."""
        if process_group(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._forget_target()


class BackgroundProducer:
    """Produces ``spec``'s records (with bad ones mixed in) at ``rate`` per second until stopped."""

    def __init__(self, spec: PipelineSpec, settings: Settings, rate: float, seed: int, limit: int = 1_000_000) -> None:
        from tx_platform.producer import open_producer

        self.producer, _ = open_producer(
            spec, settings.kafka_bootstrap, settings.schema_registry_url, bad_ratio=BAD_RATIO, seed=seed
        )
        mixed = seed * 1_000_003 + zlib.crc32(spec.topic.encode())
        self._records = spec.generate(limit, mixed, datetime.now(UTC) - timedelta(hours=2), span=timedelta(hours=1))
        self._rate = rate
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.report: Any = None
        self._thread = threading.Thread(target=self._run, name="background-producer", daemon=True)

    def _until_stopped(self) -> Any:  # noqa: ANN401 - records
        for record in self._records:
            if self._stop.is_set():
                return
            yield record

    def _run(self) -> None:
        from tx_platform.producer import produce

        try:
            self.report = produce(self._until_stopped(), self.producer, rate=self._rate)
        except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
            self.error = exc

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    @property
    def sent(self) -> int:
        return int(self.producer.report.sent)

    def stop(self) -> int:
        """Stop, flush; how many records were delivered (all of them, or it raises)."""
        self._stop.set()
        self._thread.join(timeout=180)
        assert not self._thread.is_alive(), "the background producer did not stop"
        if self.error is not None:
            raise self.error
        assert self.report.failed == 0, self.report
        return int(self.report.delivered)


def wait_for(predicate: Any, timeout: float, step: float = 0.02) -> bool:  # noqa: ANN401
    """Poll ``predicate`` fast (a kill must land within a batch); False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def socket_owner(local_port: int, remote_port: int) -> int | None:
    """Pid of the process holding the loopback TCP connection from ``local_port`` to ``remote_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
            if (local, remote) == (local_port, remote_port):
                inode = fields[9]
    if inode is None:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(entry.name)
            except OSError:
                continue
    return None


def ancestor_running(pid: int, needle: str) -> int | None:
    """The nearest process (``pid`` or an ancestor) whose command line contains ``needle``."""
    while pid > 1:
        try:
            cmdline = (Path(f"/proc/{pid}") / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        if needle in cmdline:
            return pid
        pid = int(stat[1])
    return None


def event_log(directory: Path) -> list[dict[str, Any]]:
    """The events of the one Spark application whose event log is in ``directory``."""
    [path] = [p for p in directory.iterdir() if not p.name.startswith(".")]
    # Spark 4 writes a directory eventlog_v2_<app> of files events_<n>_<app> (rolled over by size)
    files = sorted(path.glob("events_*"), key=lambda f: int(f.name.split("_")[1])) if path.is_dir() else [path]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]
