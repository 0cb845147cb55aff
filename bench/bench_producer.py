"""Benchmark: our producer (seeded records, Avro, idempotent acks=all) vs the seed's design vs Kafka's own tool.

Runs against the Kafka and schema registry of the running stack (`make up`), each method on a fresh
topic named bench_producer_* with 3 partitions, all in the same run:

- ours: ``open_producer`` + ``produce`` of the transactions pipeline's generator, end to end
  (generation + Avro serialization + delivery, acknowledged by acks=all);
- the seed's design (baseline): random dicts encoded as JSON, acks=1, ``flush()`` after every message;
- Kafka's ``org.apache.kafka.tools.ProducerPerformance`` (the kafka-tools jar resolved by
  infra/maven, on the broker's class path) against the same broker and partition count, with
  ``--record-size`` = the mean size of our Avro values, ``acks=all`` and idempotence, unthrottled
  (``--throughput -1``): once with Kafka's producer defaults and once with our batching settings
  (lz4, linger, batch size); our rate is given as a share of the faster of the two;
- where our time goes: generation alone, Avro serialization alone (confluent-kafka's
  ``AvroSerializer``, which the producer used before, and the compiled ``WireEncoder`` it uses now,
  checked byte for byte against each other) and delivery of pre-serialized bytes through the
  producer's own ``send`` path, each beside our end-to-end figure, then the functions with the most
  cumulative time in a cProfile of one more full run.

Wall-clock rates move with whatever else loads the machine, so ours and ProducerPerformance run in
alternating rounds (ratio per round, median reported), and the CPU time each spends per record is
reported too (``getrusage``: the producing processes, not the broker), which load moves far less.

Prints a table, then one JSON line per figure. Usage:

    .venv/bin/python bench/bench_producer.py [--records 200000] [--seed-records 5000] [--pp-records 200000]
        [--rounds 3] [--seed 1] [--top 8]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import re
import resource
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaError, Producer

from tx_platform.config import Settings, load_settings
from tx_platform.contract import AvroRecordSerializer, Record, register_contract, registry_client
from tx_platform.kafka_admin import PRODUCER_DEFAULTS, ensure_topic
from tx_platform.pipelines.transactions import TRANSACTIONS
from tx_platform.producer import THROUGHPUT_CONFIG, RecordProducer, WireEncoder, open_producer, produce
from tx_platform.stack import require_java, resolve_artifacts

PARTITIONS = 3
#: inside the pipeline's event-time rules, as the sink would see the records
SPAN = timedelta(hours=2)
PRODUCER_PERFORMANCE = "org.apache.kafka.tools.ProducerPerformance"
#: ProducerPerformance's summary line: "N records sent, R records/sec (M MB/sec), L ms avg latency, ..."
_PP_SUMMARY = re.compile(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency")


@dataclass(frozen=True)
class Figure:
    """One measured method: what it is, over how many records, in how long."""

    method: str
    label: str
    records: int
    seconds: float
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def json(self) -> str:
        return json.dumps(
            {
                "bench": "producer",
                "method": self.method,
                "records": self.records,
                "seconds": round(self.seconds, 4),
                "records_per_s": round(self.rate, 1),
                **self.extra,
            }
        )


def _fresh_topic(settings: Settings) -> str:
    topic = f"bench_producer_{uuid.uuid4().hex[:8]}"
    ensure_topic(settings.kafka_bootstrap, topic, PARTITIONS, settings.topic_replication)
    return topic


def _start() -> datetime:
    return datetime.now(UTC) - timedelta(hours=3)


def ours(settings: Settings, count: int, seed: int, prepare_in_child: bool) -> Figure:
    """`txp produce`'s path: generation + Avro + delivery with acks=all, one flush at the end.

    ``prepare_in_child``: generation and Avro in a forked process, as `txp produce` does without --rate.
    """
    spec = TRANSACTIONS.with_topic(_fresh_topic(settings))
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=seed)
    cpu, started = _cpu_seconds(), time.perf_counter()
    report = produce(spec.generate(count, seed, _start(), span=SPAN), producer, prepare_in_child=prepare_in_child)
    elapsed = time.perf_counter() - started
    used = _cpu_seconds() - cpu  # this process with librdkafka's threads, and the preparing child
    assert report.delivered == count, report  # noqa: S101 - a benchmark of lost records measures nothing
    extra: dict[str, object] = {
        "processes": 2 if prepare_in_child else 1,
        "cpu_us_per_record": round(used / count * 1e6, 2),
    }
    if prepare_in_child:
        return Figure("txp_produce", "txp produce (Avro, acks=all)", count, elapsed, extra)
    return Figure("txp_produce_one_process", "  the same in one process", count, elapsed, extra)


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its waited-for children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _seed_record(rng: random.Random) -> dict[str, object]:
    """A record as the seed made them: independent random values under the contract's field names."""
    return {
        "transaction_id": str(uuid.uuid4()),
        "account_id": f"ACC-{rng.randint(1, 5_000):06d}",
        "customer_id": f"CUST-{rng.randint(1, 2_000):06d}",
        "card_id": f"CARD-{rng.randint(1, 8_000):06d}",
        "merchant_id": f"MER-{rng.randint(1, 1_000):06d}",
        "merchant_category": rng.choice(["5411", "5812", "5999", "6011", "4829"]),
        "amount": round(rng.uniform(1, 500), 2),
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "channel": rng.choice(["POS", "ECOM", "ATM", "TRANSFER"]),
        "transaction_type": rng.choice(["PURCHASE", "REFUND", "WITHDRAWAL", "TRANSFER"]),
        "country": rng.choice(["FR", "US", "GB", "DE"]),
        "city": rng.choice(["Paris", "New York", "London", "Berlin"]),
        "latitude": rng.uniform(-90, 90),
        "longitude": rng.uniform(-180, 180),
        "event_time": datetime.now(UTC).isoformat(),
    }


def seed_design(settings: Settings, count: int, seed: int) -> tuple[Figure, float]:
    """Baseline: random dicts, JSON, acks=1, ``flush()`` after every message. Also the mean value size."""
    topic = _fresh_topic(settings)
    rng = random.Random(seed)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": 1})
    failed: list[KafkaError] = []
    size = 0
    started = time.perf_counter()
    for _ in range(count):
        record = _seed_record(rng)
        value = json.dumps(record).encode()
        size += len(value)
        producer.produce(
            topic,
            key=str(record["account_id"]).encode(),
            value=value,
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
        producer.flush()
    elapsed = time.perf_counter() - started
    assert not failed, failed[:3]  # noqa: S101
    return Figure("seed_json_flush_each", "seed design (JSON, flush each, acks=1)", count, elapsed), size / count


#: librdkafka settings of ours that mean the same to the Java producer (acks and idempotence are always passed).
_JAVA_EQUIVALENTS = ("compression.type", "linger.ms", "batch.size")


def producer_performance(
    settings: Settings, records: int, record_size: int, ours_settings: bool, fixed_cpu: float = 0.0
) -> Figure:
    """Kafka's ProducerPerformance on a fresh topic: acks=all, idempotent, unthrottled, ``record_size`` bytes.

    With ``ours_settings`` it also gets our compression, linger and batch size; without, Kafka's defaults.
    ``fixed_cpu``: the CPU seconds of a run of a thousand records (JVM start and warm-up), taken off its
    CPU time per record.
    """
    java = require_java()
    classpath = resolve_artifacts(settings.jars_dir).tools_classpath()
    props = {"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": "true"}
    if ours_settings:
        config = {**PRODUCER_DEFAULTS, **THROUGHPUT_CONFIG}
        props |= {name: str(config[name]) for name in _JAVA_EQUIVALENTS}
    topic = _fresh_topic(settings)
    cmd = [
        java, "-Xmx512m", "-cp", classpath, PRODUCER_PERFORMANCE, "--topic", topic,
        "--num-records", str(records), "--record-size", str(record_size), "--throughput", "-1",
        "--producer-props", *(f"{k}={v}" for k, v in props.items()),
    ]  # fmt: skip
    cpu = _cpu_seconds()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
    used = _cpu_seconds() - cpu - fixed_cpu
    summaries = _PP_SUMMARY.findall(result.stdout)
    if result.returncode != 0 or not summaries:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        msg = f"ProducerPerformance failed (exit {result.returncode}):\n{tail}"
        raise RuntimeError(msg)
    sent, per_second, _mb, latency = summaries[-1]  # the last line is the whole run's
    assert int(sent) == records, (sent, records)  # noqa: S101
    which = "ours" if ours_settings else "kafka_defaults"
    label = f"Kafka ProducerPerformance ({'our batching' if ours_settings else 'Kafka defaults'})"
    extra = {
        "record_size": record_size, "settings": which, "avg_latency_ms": float(latency), "props": props,
        "cpu_us_per_record": round(used / records * 1e6, 2), "cpu_seconds": round(used, 3),
    }  # fmt: skip
    # its own rate: measured from its first send to its last acknowledgement (the JVM start is not in it)
    return Figure(f"producer_performance_{which}", label, records, records / float(per_second), extra)


def generation(count: int, seed: int) -> tuple[Figure, list[Record]]:
    """The generator alone (entity pools built with Faker, then sampling)."""
    started = time.perf_counter()
    records = list(TRANSACTIONS.generate(count, seed, _start(), span=SPAN))
    return Figure("generate_only", "  generation alone", count, time.perf_counter() - started), records


def serialization(settings: Settings, records: list[Record]) -> tuple[Figure, Figure, list[bytes]]:
    """Avro alone, on records generated beforehand: confluent's AvroSerializer (before) and our WireEncoder (now).

    Both must give the same bytes: the encoder is checked against the serializer it replaced.
    """
    # no record is sent: the topic only names the subject, registered as open_producer does
    spec = TRANSACTIONS.with_topic(f"bench_producer_{uuid.uuid4().hex[:8]}")
    url, text = settings.schema_registry_url, spec.contract.schema_str
    client = registry_client(url)
    registration = register_contract(client, url, text, spec.subject)
    serializer = AvroRecordSerializer(client, spec.topic, text)
    started = time.perf_counter()
    before = [serializer(r) for r in records]
    confluent = Figure("avro_confluent_serializer", "  Avro: confluent AvroSerializer (before)", len(records),
                       time.perf_counter() - started)  # fmt: skip
    encoder = WireEncoder(text, registration.schema_id)
    started = time.perf_counter()
    values = [encoder(r) for r in records]
    compiled = Figure("avro_serialize_only", "  Avro: compiled WireEncoder (now)", len(records),
                      time.perf_counter() - started)  # fmt: skip
    assert values == before, "the compiled encoder and confluent's serializer disagree"  # noqa: S101
    return confluent, compiled, values


def delivery(settings: Settings, records: list[Record], values: list[bytes]) -> Figure:
    """Delivery alone: the producer's own ``send`` path and settings, its values serialized beforehand."""
    spec = TRANSACTIONS.with_topic(_fresh_topic(settings))
    ready = iter(values)
    producer = RecordProducer(settings.kafka_bootstrap, spec, lambda _record: next(ready))
    started = time.perf_counter()
    report = produce(records, producer)
    elapsed = time.perf_counter() - started
    assert report.delivered == len(records), report  # noqa: S101
    return Figure("deliver_only", "  delivery alone (send, bytes ready)", len(records), elapsed)


def profile(settings: Settings, count: int, seed: int, top: int) -> tuple[float, list[str]]:
    """cProfile of one more end-to-end run: its seconds and the ``top`` functions by cumulative time."""
    spec = TRANSACTIONS.with_topic(_fresh_topic(settings))
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=seed)
    profiler = cProfile.Profile()
    records = spec.generate(count, seed, _start(), span=SPAN)
    started = time.perf_counter()
    profiler.runcall(produce, records, producer)
    elapsed = time.perf_counter() - started
    functions = pstats.Stats(profiler).get_stats_profile().func_profiles
    ranked = sorted(functions.items(), key=lambda item: item[1].cumtime, reverse=True)[:top]
    lines = []
    for name, stats in ranked:
        where = f"{stats.file_name.rsplit('/', 2)[-1]}:{stats.line_number}" if stats.file_name != "~" else "builtin"
        lines.append(f"  {stats.cumtime:7.2f} s  {stats.ncalls:>9}  {name}  ({where})")
    return elapsed, lines


def _row(figure: Figure, beside: str) -> str:
    return f"  {figure.label:<46} {figure.seconds:8.3f} s  {figure.rate:>10,.0f} records/s  {beside}"


def _median(figures: list[Figure]) -> Figure:
    """The round with the median rate, its rounds' rates kept in the JSON."""
    ranked = sorted(figures, key=lambda f: f.rate)
    middle = ranked[len(ranked) // 2]
    rates = [round(f.rate, 1) for f in figures]
    return Figure(middle.method, middle.label, middle.records, middle.seconds, {**middle.extra, "round_rates": rates})


def main() -> None:
    """Measure every method in one run and print each beside its baseline, then as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records of our producer's runs")
    parser.add_argument("--seed-records", type=int, default=5_000, help="records of the seed design's run")
    parser.add_argument("--pp-records", type=int, default=200_000, help="records of each ProducerPerformance run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ours beside ProducerPerformance (medians)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument("--top", type=int, default=8, help="functions shown from the profile")
    args = parser.parse_args()
    settings = load_settings()
    if shutil.which("java") is None:
        parser.error("ProducerPerformance needs java on PATH (`make setup` checks it)")

    gen, records = generation(args.records, args.seed)
    confluent, avro, values = serialization(settings, records)
    avro_size = round(sum(len(v) for v in values) / len(values))
    # Rounds, each ours between the two runs of Kafka's tool: whatever else loads the machine meets
    # all of them alike; the ratio is taken within each round, and the median round is reported.
    fixed = producer_performance(settings, 1_000, avro_size, ours_settings=False).extra["cpu_seconds"]
    assert isinstance(fixed, float)  # noqa: S101
    rounds: list[tuple[Figure, Figure, Figure, Figure]] = []
    for _ in range(args.rounds):
        pp_defaults = producer_performance(settings, args.pp_records, avro_size, ours_settings=False, fixed_cpu=fixed)
        two = ours(settings, args.records, args.seed, prepare_in_child=True)
        pp_ours = producer_performance(settings, args.pp_records, avro_size, ours_settings=True, fixed_cpu=fixed)
        one = ours(settings, args.records, args.seed, prepare_in_child=False)
        rounds.append((two, one, pp_defaults, pp_ours))
    shares = sorted(two.rate / max(a.rate, b.rate) for two, _one, a, b in rounds)
    share = shares[len(shares) // 2]
    main_run, one_process, pp_defaults, pp_ours = (_median([r[k] for r in rounds]) for k in range(4))
    tool = max(pp_defaults, pp_ours, key=lambda f: f.rate)
    baseline, json_size = seed_design(settings, args.seed_records, args.seed)
    deliver = delivery(settings, records, values)
    profiled_seconds, hot = profile(settings, args.records, args.seed, args.top)

    print(  # noqa: T201
        f"producer: transactions pipeline, {PARTITIONS} partitions, one run, median of {args.rounds} rounds "
        f"(values: Avro {avro_size} B, seed JSON {json_size:.0f} B on average)"
    )
    for run in (main_run, one_process):
        cpu = f"({run.extra['cpu_us_per_record']:.1f} µs CPU/record)"
        print(_row(run, f"{run.rate / baseline.rate:6.1f}x the seed design  {cpu}"))  # noqa: T201
    print(_row(baseline, "  1.0x"))  # noqa: T201
    for pp in (pp_defaults, pp_ours):
        latency = (
            f"({pp.extra['cpu_us_per_record']:.1f} µs CPU/record, {pp.extra['avg_latency_ms']:.0f} ms avg latency)"
        )
        print(_row(pp, f"{pp.rate / baseline.rate:6.1f}x the seed design  {latency}"))  # noqa: T201
    print(  # noqa: T201
        f"  txp produce / ProducerPerformance (the faster of the two in each round; acks=all, idempotent, "
        f"{avro_size} B records): {share:.2f} (rounds: {', '.join(f'{x:.2f}' for x in shares)})"
    )
    ours_cpu, pp_cpu = (
        main_run.extra["cpu_us_per_record"],
        [pp.extra["cpu_us_per_record"] for pp in (pp_defaults, pp_ours)],
    )
    print(  # noqa: T201
        f"  CPU per record (the producing processes, the broker not counted; ProducerPerformance without its "
        f"JVM start): txp produce {ours_cpu:.1f} µs, ProducerPerformance {pp_cpu[0]:.1f} µs (Kafka defaults), "
        f"{pp_cpu[1]:.1f} µs (our batching)"
    )
    print("where the time goes (each stage alone, beside txp produce end to end):")  # noqa: T201
    stages = (gen, confluent, avro, deliver)
    for stage in stages:
        part = stage.seconds / stage.records / (main_run.seconds / main_run.records)
        print(_row(stage, f"{stage.rate / main_run.rate:6.1f}x  ({part:4.0%} of end-to-end time/record)"))  # noqa: T201
    print(  # noqa: T201
        f"cProfile of one full run in one process ({args.records:,} records, {profiled_seconds:.1f} s profiled), "
        f"top {args.top} by cumulative time:"
    )
    for line in hot:
        print(line)  # noqa: T201
    verdict = {"ratio": round(share, 3), "round_ratios": [round(x, 3) for x in shares], "vs": tool.method}
    ratio = Figure("ratio_vs_producer_performance", "", main_run.records, main_run.seconds, verdict)
    for figure in (main_run, one_process, baseline, pp_defaults, pp_ours, *stages, ratio):
        print(figure.json())  # noqa: T201


if __name__ == "__main__":
    main()
