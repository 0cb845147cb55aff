"""Benchmark: end to end, an open-loop producer at fixed rates with the continuous sink (1-second trigger).

Runs against the Kafka, registry and Postgres of the running stack (`make up`). For each rate
(default 5k, 20k and 50k records/s), on a fresh topic ``bench_e2e_*`` and an empty warehouse
schema of its own (see ``_common``):

1. the continuous sink starts as ``spark_jobs/sink/main.py --trigger "1 second"`` (a subprocess, as
   ``txp sink`` runs it; ``local[*]`` unless TXP_SPARK_MASTER says otherwise) and logs "sink running";
2. ``txp produce --rate`` starts, as ``--producers`` processes sharing the rate (default: one per
   25k records/s), each pacing itself against the clock: a producer that falls behind sends at once
   to catch up, it never lowers the rate it was given (open loop);
3. once the sink has committed its first batch, and ``--warmup`` seconds later, the window opens
   (``--minutes``, default 5): every 2 s the lag (end offsets in Kafka minus the offsets committed
   in Postgres) is sampled; the rate the producers actually reached is the topic's growth over the
   window;
4. e2e latency (Kafka timestamp -> committed in Postgres) over the window is the difference of the
   sink's exact cumulative histogram (``sink_latency``, kind ``kafka_timestamp``, written in each
   commit's transaction) between the window's end and start; p50/p99 interpolate inside a bucket
   (bounds 0.1, 0.25, 0.5, 1, 2, 5 s ...), and the share of records at or under 2 s is exact.

Lag is flat when its least-squares trend over the window grows by less than 2 seconds' worth of
records (``rate * 2``) over the whole window. Prints a table, then one JSON line per figure. Usage:

    .venv/bin/python bench/bench_e2e.py [--rates 5000,20000,50000] [--minutes 5] [--warmup 30]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from _common import bench_schema, fresh_topic, out

from tx_platform.config import PROJECT_ROOT, Settings, load_settings
from tx_platform.kafka_admin import watermarks
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.stack import resolve_artifacts
from tx_platform.warehouse import connect, ensure_schema

BENCH = "e2e"
SAMPLE_SECONDS = 2.0
#: what one producer process is asked for at most (its unthrottled rate is about twice that)
RATE_PER_PRODUCER = 25_000
#: seconds the sink may take to commit its first batch before the run is called failed
FIRST_COMMIT_TIMEOUT = 600


@dataclass(frozen=True)
class RateResult:
    """One rate's window."""

    rate: int
    window: float
    reached: float  # records/s the producers actually added to the topic over the window
    lag_start: int
    lag_end: int
    lag_max: int
    lag_slope: float  # records/s, least squares over the window
    histogram: dict[float, int]

    @property
    def producer_reached(self) -> bool:
        return self.reached >= 0.95 * self.rate

    @property
    def flat(self) -> bool:
        return self.lag_slope * self.window < 2 * self.rate

    @property
    def records(self) -> int:
        return sum(self.histogram.values())

    def quantile(self, q: float) -> float:
        return quantile(self.histogram, q)

    def share_within(self, bound: float) -> float:
        total = self.records
        return sum(c for le, c in self.histogram.items() if le <= bound) / total if total else 0.0

    def json(self) -> str:
        return json.dumps(
            {
                "bench": BENCH,
                "method": f"continuous_sink_at_{self.rate}",
                "target_rate": self.rate,
                "reached_rate": round(self.reached, 1),
                "producer_reached_rate": self.producer_reached,
                "window_seconds": round(self.window, 1),
                "lag_start": self.lag_start,
                "lag_end": self.lag_end,
                "lag_max": self.lag_max,
                "lag_slope_per_s": round(self.lag_slope, 1),
                "lag_flat": self.flat,
                "latency_records": self.records,
                # null, not NaN (which JSON does not have), when no record was committed in the window
                "latency_p50_s": round(self.quantile(0.5), 3) if self.records else None,
                "latency_p99_s": round(self.quantile(0.99), 3) if self.records else None,
                "latency_share_within_2s": round(self.share_within(2.0), 4),
            }
        )


def quantile(histogram: dict[float, int], q: float) -> float:
    """Prometheus' histogram_quantile over per-bucket counts (keyed by upper bound): linear inside a bucket."""
    total = sum(histogram.values())
    if not total:
        return math.nan
    rank = q * total
    lower, seen = 0.0, 0
    for le in sorted(histogram):
        count = histogram[le]
        if seen + count >= rank and count:
            if math.isinf(le):
                return lower  # above the highest finite bound: that bound is all we know
            return lower + (le - lower) * (rank - seen) / count
        seen += count
        lower = le
    return lower


def _histogram(dsn: str, topic: str) -> dict[float, int]:
    with closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT le, count FROM sink_latency WHERE topic = %s AND kind = 'kafka_timestamp'",
            (topic,),
        )
        return {float(le): int(count) for le, count in cur.fetchall()}


def _committed(dsn: str, topic: str) -> int:
    """Offsets committed in Postgres, summed over the partitions."""
    with closing(connect(dsn)) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(next_offset), 0) FROM sink_offsets WHERE topic = %s", (topic,))
        return int(cur.fetchone()[0])


def _lag(settings: Settings, dsn: str, topic: str) -> tuple[int, int]:
    """(records in the topic, lag) now."""
    end = sum(high for _, high in watermarks(settings.kafka_bootstrap, topic).values())
    return end, end - _committed(dsn, topic)


def _slope(points: list[tuple[float, int]]) -> float:
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var if var else 0.0


def _stop(process: subprocess.Popen, timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            msg = f"the sink exited ({process.returncode}) before logging {text!r}:\n{log.read_text()[-3000:]}"
            raise RuntimeError(msg)
        time.sleep(0.5)
    msg = f"the sink did not log {text!r} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    raise RuntimeError(msg)


def run_rate(settings: Settings, dsn: str, rate: int, args: argparse.Namespace, work: Path) -> RateResult:
    """Sink + producers at ``rate``; the window's figures."""
    topic = fresh_topic(settings, "bench_e2e", args.partitions)
    spec = TRANSACTIONS.with_topic(topic)
    ensure_schema(dsn, [spec])
    jars = ",".join(str(j) for j in resolve_artifacts(settings.jars_dir).spark_jars())
    env = {**os.environ, "TXP_POSTGRES_DSN": dsn, "TXP_CHECKPOINT_DIR": str(work / f"ck_{rate}")}
    sink_log = work / f"sink_{rate}.log"
    command = [
        sys.executable, str(PROJECT_ROOT / "spark_jobs" / "sink" / "main.py"), "--trigger", args.trigger,
        "--pipeline", spec.name, "--topic", topic, "--jars", jars,
    ]  # fmt: skip
    producers: list[subprocess.Popen] = []
    with sink_log.open("w") as log_file:
        sink = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        _wait_for(sink_log, "sink running", sink, timeout=300)
        count = max(1, args.producers or math.ceil(rate / RATE_PER_PRODUCER))
        # enough to run past the window whatever the wait for the first commit (stopped after the window):
        # the window must never see the producers run out
        seconds = FIRST_COMMIT_TIMEOUT + args.warmup + args.minutes * 60 + 60
        txp = str(Path(sys.executable).parent / "txp")
        for n in range(count):
            share = rate / count
            producers.append(
                subprocess.Popen(  # noqa: S603 - our own CLI
                    [
                        txp,
                        "produce",
                        "--pipeline",
                        spec.name,
                        "--topic",
                        topic,
                        "--rate",
                        str(share),
                        "--count",
                        str(int(share * seconds)),
                        "--seed",
                        str(rate * 100 + n),
                        "--span-hours",
                        "2",
                    ],  # fmt: skip
                    env=env,
                    stdout=(work / f"producer_{rate}_{n}.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
        # the window opens once the sink has committed (its first batch starts Python workers and
        # compiles the query: tens of seconds on a busy machine), then ran for the warm-up
        deadline = time.monotonic() + FIRST_COMMIT_TIMEOUT
        while _committed(dsn, topic) == 0:
            if time.monotonic() > deadline or sink.poll() is not None:
                msg = f"the sink committed nothing within 600 s:\n{sink_log.read_text()[-3000:]}"
                raise RuntimeError(msg)
            time.sleep(1)
        time.sleep(args.warmup)
        before = _histogram(dsn, topic)
        opened = time.monotonic()
        end0, lag0 = _lag(settings, dsn, topic)
        points: list[tuple[float, int]] = [(0.0, lag0)]
        closes = opened + args.minutes * 60
        while time.monotonic() < closes:
            time.sleep(max(0.0, min(SAMPLE_SECONDS, closes - time.monotonic())))
            _, lag = _lag(settings, dsn, topic)
            points.append((time.monotonic() - opened, lag))
            if sink.poll() is not None:
                msg = f"the sink exited ({sink.returncode}) during the window:\n{sink_log.read_text()[-3000:]}"
                raise RuntimeError(msg)
        end1, lag1 = _lag(settings, dsn, topic)
        window = time.monotonic() - opened
        after = _histogram(dsn, topic)
    finally:
        for producer in producers:
            _stop(producer, timeout=30)
        _stop(sink)
    histogram = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    return RateResult(
        rate=rate,
        window=window,
        reached=(end1 - end0) / window,
        lag_start=lag0,
        lag_end=lag1,
        lag_max=max(lag for _, lag in points),
        lag_slope=_slope(points),
        histogram={le: c for le, c in histogram.items() if c},
    )


def main() -> None:
    """Each rate in turn; the table, the highest rate with flat lag, latency at the lowest rate, JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="5000,20000,50000", help="comma-separated records/s")
    parser.add_argument("--minutes", type=float, default=5.0, help="window per rate")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds of production before the window")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--trigger", default="1 second", help="the continuous sink's trigger")
    parser.add_argument("--producers", type=int, default=0, help="producer processes per rate [default: 1 per 25k/s]")
    parser.add_argument("--keep", action="store_true", help="keep the sink's and producers' logs")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    settings = load_settings()
    results: list[RateResult] = []
    failed: dict[int, str] = {}
    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    try:
        with bench_schema(settings, "e2e") as dsn:
            for rate in rates:
                try:
                    result = run_rate(settings, dsn, rate, args, work)
                except RuntimeError as exc:
                    # the other rates still count; the failure is reported with them
                    failed[rate] = str(exc).splitlines()[0]
                    out(f"  FAILED: {rate:,}/s: {failed[rate]} (logs: --keep)")
                    continue
                results.append(result)
                out(f"  done: {rate:,}/s: reached {result.reached:,.0f}/s, lag trend {result.lag_slope:+,.0f}/s")
    finally:
        if args.keep:
            out(f"  logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    out(
        f"end to end: open-loop producer -> Kafka ({args.partitions} partitions) -> continuous sink "
        f"(trigger {args.trigger}), {args.minutes:g} min window per rate after {args.warmup:g} s"
    )
    out(
        f"  {'target/s':>9} {'reached/s':>10} {'lag start':>10} {'lag end':>9} {'lag max':>9} {'trend/s':>9} "
        f"{'flat':>5} {'p50 s':>7} {'p99 s':>7} {'<=2 s':>7}"
    )
    for r in results:
        reached = f"{r.reached:,.0f}" + ("" if r.producer_reached else "*")
        out(
            f"  {r.rate:>9,} {reached:>10} {r.lag_start:>10,} {r.lag_end:>9,} {r.lag_max:>9,} {r.lag_slope:>+9,.0f} "
            f"{'yes' if r.flat else 'NO':>5} {r.quantile(0.5):>7.2f} {r.quantile(0.99):>7.2f} "
            f"{r.share_within(2.0):>7.2%}"
        )
    for rate, why in failed.items():
        out(f"  {rate:>9,}  FAILED: {why}")
    if not results:
        raise SystemExit(1)
    if any(not r.producer_reached for r in results):
        out("  * the producers did not reach the target rate (under 95% of it): that rate was not tested as asked")
    flat = [r.rate for r in results if r.flat and r.producer_reached]
    out(f"  highest rate with flat lag: {max(flat):,} records/s" if flat else "  no rate had flat lag")
    low = results[0]
    out(
        f"  e2e latency at {low.rate:,}/s (Kafka timestamp -> committed, {low.records:,} records): "
        f"p50 {low.quantile(0.5):.2f} s, p99 {low.quantile(0.99):.2f} s (target p99 <= 2 s: "
        f"{'met' if low.quantile(0.99) <= 2 else 'NOT met'}; {low.share_within(2.0):.2%} within 2 s)"
    )
    for r in results:
        out(r.json())
    for rate, why in failed.items():
        out(json.dumps({"bench": BENCH, "method": f"continuous_sink_at_{rate}", "target_rate": rate, "failed": why}))
    summary = {"bench": BENCH, "method": "highest_flat_rate", "records_per_s": max(flat) if flat else 0}
    out(json.dumps(summary))


if __name__ == "__main__":
    main()
