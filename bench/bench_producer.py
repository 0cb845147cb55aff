"""Benchmark: our producer (seeded records, Avro, idempotent acks=all) vs the seed's producer design.

Runs against the Kafka and schema registry of the running stack (`make up`), each method on a fresh
topic named bench_producer_* with 3 partitions, all in the same run:

- ours: ``open_producer`` + ``produce`` of the transactions pipeline's generator, end to end
  (generation + Avro serialization + delivery, acknowledged by acks=all);
- the seed's design (baseline): random dicts encoded as JSON, acks=1, ``flush()`` after every message;
- where our time goes: generation alone, Avro serialization alone and delivery of pre-serialized
  bytes alone (``PRODUCER_DEFAULTS``), each beside our end-to-end figure, then the functions with
  the most cumulative time in a cProfile of one more full run.

Kafka's own ProducerPerformance tool is not measured (its jar is not resolved by infra/maven).
Prints a table, then one JSON line per figure. Usage:

    .venv/bin/python bench/bench_producer.py [--records 100000] [--seed-records 5000] [--seed 1] [--top 8]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import KafkaError, Message, Producer

from tx_platform.config import Settings, load_settings
from tx_platform.contract import AvroRecordSerializer, Record, register_contract, registry_client
from tx_platform.kafka_admin import PRODUCER_DEFAULTS, ensure_topic
from tx_platform.pipelines.transactions import TRANSACTIONS
from tx_platform.producer import open_producer, produce

PARTITIONS = 3
#: inside the pipeline's event-time rules, as the sink would see the records
SPAN = timedelta(hours=2)


@dataclass(frozen=True)
class Figure:
    """One measured method: what it is, over how many records, in how long."""

    method: str
    label: str
    records: int
    seconds: float

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
            }
        )


def _fresh_topic(settings: Settings) -> str:
    topic = f"bench_producer_{uuid.uuid4().hex[:8]}"
    ensure_topic(settings.kafka_bootstrap, topic, PARTITIONS, settings.topic_replication)
    return topic


def _start() -> datetime:
    return datetime.now(UTC) - timedelta(hours=3)


def ours(settings: Settings, count: int, seed: int) -> Figure:
    """`txp produce`'s path: generation + Avro + delivery with acks=all, one flush at the end."""
    spec = TRANSACTIONS.with_topic(_fresh_topic(settings))
    producer, _ = open_producer(spec, settings.kafka_bootstrap, settings.schema_registry_url, seed=seed)
    started = time.perf_counter()
    report = produce(spec.generate(count, seed, _start(), span=SPAN), producer)
    elapsed = time.perf_counter() - started
    assert report.delivered == count, report  # noqa: S101 - a benchmark of lost records measures nothing
    return Figure("txp_produce", "txp produce (Avro, acks=all)", count, elapsed)


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


def generation(count: int, seed: int) -> tuple[Figure, list[Record]]:
    """The generator alone (entity pools built with Faker, then sampling)."""
    started = time.perf_counter()
    records = list(TRANSACTIONS.generate(count, seed, _start(), span=SPAN))
    return Figure("generate_only", "  generation alone", count, time.perf_counter() - started), records


def serialization(settings: Settings, records: list[Record]) -> tuple[Figure, list[tuple[bytes, bytes]]]:
    """Avro alone: the serializer ``open_producer`` builds, on records generated beforehand."""
    # no record is sent: the topic only names the subject, registered as open_producer does
    spec = TRANSACTIONS.with_topic(f"bench_producer_{uuid.uuid4().hex[:8]}")
    url, text = settings.schema_registry_url, spec.contract.schema_str
    client = registry_client(url)
    register_contract(client, url, text, spec.subject)
    serializer = AvroRecordSerializer(client, spec.topic, text)
    key = spec.kafka_key
    started = time.perf_counter()
    messages = [(str(r[key]).encode(), serializer(r)) for r in records]
    elapsed = time.perf_counter() - started
    return Figure("avro_serialize_only", "  Avro serialization alone", len(records), elapsed), messages


def delivery(settings: Settings, messages: list[tuple[bytes, bytes]]) -> Figure:
    """Delivery alone: pre-serialized bytes through a raw producer with PRODUCER_DEFAULTS, one flush."""
    topic = _fresh_topic(settings)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, **PRODUCER_DEFAULTS})
    delivered = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal delivered
        delivered += err is None

    started = time.perf_counter()
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    assert delivered == len(messages), (delivered, len(messages))  # noqa: S101
    return Figure("deliver_only", "  delivery alone (bytes, acks=all)", len(messages), elapsed)


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
    return f"  {figure.label:<42} {figure.seconds:8.3f} s  {figure.rate:>10,.0f} records/s  {beside}"


def main() -> None:
    """Measure every method in one run and print each beside its baseline, then as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records of our producer's runs")
    parser.add_argument("--seed-records", type=int, default=5_000, help="records of the seed design's run")
    parser.add_argument("--seed", type=int, default=1, help="generator seed")
    parser.add_argument("--top", type=int, default=8, help="functions shown from the profile")
    args = parser.parse_args()
    settings = load_settings()

    main_run = ours(settings, args.records, args.seed)
    baseline, json_size = seed_design(settings, args.seed_records, args.seed)
    gen, records = generation(args.records, args.seed)
    avro, messages = serialization(settings, records)
    deliver = delivery(settings, messages)
    avro_size = sum(len(value) for _, value in messages) / len(messages)
    profiled_seconds, hot = profile(settings, args.records, args.seed, args.top)

    print(  # noqa: T201
        f"producer: transactions pipeline, {PARTITIONS} partitions, one run "
        f"(values: Avro {avro_size:.0f} B, seed JSON {json_size:.0f} B on average)"
    )
    print(_row(main_run, f"{main_run.rate / baseline.rate:6.1f}x the seed design"))  # noqa: T201
    print(_row(baseline, "  1.0x"))  # noqa: T201
    print("  Kafka ProducerPerformance (acks=all)          not measured: kafka-tools jar not resolved")  # noqa: T201
    print("where the time goes (each stage alone, beside txp produce end to end):")  # noqa: T201
    stages = (gen, avro, deliver)
    for stage in stages:
        share = stage.seconds / stage.records / (main_run.seconds / main_run.records)
        print(_row(stage, f"{stage.rate / main_run.rate:6.1f}x  ({share:4.0%} of end-to-end time/record)"))  # noqa: T201
    print(  # noqa: T201
        f"cProfile of one full run ({args.records:,} records, {profiled_seconds:.1f} s profiled), "
        f"top {args.top} by cumulative time:"
    )
    for line in hot:
        print(line)  # noqa: T201
    for figure in (main_run, baseline, *stages):
        print(figure.json())  # noqa: T201


if __name__ == "__main__":
    main()
