"""Ingest throughput: driftwatch's pipeline against a plain kafka-python consumer on the same topic.

Anchor: a kafka-python consumer group doing json.loads per record and a commit per batch. Candidate: the
daemon's own KafkaSource + Ingestor (contract decode, dedup window, dead-letter sink, per-adapter metrics,
offset journal, commit per batch) feeding the monitor (features, sketches per adapter window) as in the daemon. Same broker, same topic, same consumer settings, fresh group per run; the
runs alternate so drift in the machine's speed hits both. Rates are timed from the first record received to
the last one committed (group joins excluded). Prints median and range of each and the ratio of medians.

    python bench/ingest.py [--broker tansu|noida] [--events 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from driftwatch.app import build_monitor
from driftwatch.config import Settings
from driftwatch.ingest.kafka import KafkaDeadLetterSink, KafkaSource
from driftwatch.ingest.pipeline import Ingestor, OffsetJournal
from driftwatch.dev.localbroker import LocalBroker
from driftwatch.metrics import Metrics
from driftwatch.monitor.signals import AdapterSignals
from driftwatch.ingest.recent import DedupWindow
from driftwatch.dev.simulate import SimConfig, Simulator

CONSUMER = {"max_poll_records": 500, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
            "fetch_max_bytes": 52_428_800, "max_partition_fetch_bytes": 4_194_304}


def produce(bootstrap: str, topic: str, n: int) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144, acks=1)
    sim = Simulator(SimConfig(seed=1, feedback_rate=0.0, adapters={"support-v1": 0.7, "support-v2": 0.3}))
    sizes = 0
    for i in range(n):
        out = sim.inference(1_795_514_400_000 + i * 10)
        sizes += len(out.value)
        producer.send(topic, key=out.key, value=out.value)
    producer.flush()
    producer.close()
    return sizes / n


def anchor(bootstrap: str, topic: str, n: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"anchor-{uuid.uuid4().hex[:6]}",
                             enable_auto_commit=False, auto_offset_reset="earliest", **CONSUMER)
    consumer.subscribe([topic])
    seen, t0 = 0, None
    while seen < n:
        batches = consumer.poll(timeout_ms=500)
        if not batches:
            continue
        t0 = t0 or time.perf_counter()
        for records in batches.values():
            for rec in records:
                json.loads(rec.value)
            seen += len(records)
        consumer.commit()
    rate = n / (time.perf_counter() - t0)
    consumer.close(autocommit=False)
    return rate


def driftwatch(bootstrap: str, topics: dict, n: int, state_dir: Path) -> float:
    settings = Settings.model_validate({"kafka": {
        "bootstrap_servers": [bootstrap], "topics": topics,
        "consumer": {**CONSUMER, "group_id": f"dw-{uuid.uuid4().hex[:6]}", "poll_timeout_ms": 500}}})
    k = settings.kafka
    metrics = Metrics()
    signals, monitor = AdapterSignals(metrics), build_monitor(settings)
    source, sink = KafkaSource(k), KafkaDeadLetterSink(k)
    ing = Ingestor(source, sink, metrics, kinds={k.topics.inference: "inference", k.topics.feedback: "feedback"},
                   max_record_bytes=settings.ingest.max_record_bytes, dedup=DedupWindow(200_000, 3600),
                   journal=OffsetJournal(state_dir / f"{k.consumer.group_id}.json"), label=metrics.adapter_cap,
                   downstream=lambda evs: (signals(evs), monitor.observe(evs)), group_id=k.consumer.group_id)
    seen, t0 = 0, None
    while seen < n:
        batch = ing.poll()
        if batch is None:
            continue
        t0 = t0 or batch.started
        ing.finish(batch)
        monitor.maintain()  # the daemon's step between polls
        seen = int(metrics.registry.get_sample_value(
            "driftwatch_ingest_records_total", {"topic": k.topics.inference, "outcome": "accepted"}) or 0)
    rate = n / (time.perf_counter() - t0)
    source.close()
    sink.close()
    return rate


def summary(rates: list[float]) -> str:
    return f"median {statistics.median(rates):>8,.0f}/s  range {min(rates):,.0f}-{max(rates):,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", choices=["tansu", "noida"], default="tansu")  # noida-db 0.2.3 bogs down past ~100k
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with LocalBroker(args.broker) as broker, tempfile.TemporaryDirectory() as tmp:
        topics = {"inference": "bench-inference", "feedback": "bench-feedback", "dead_letter": "bench-dlq"}
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(name, 4, 1) for name in topics.values()])
        admin.close()
        t = time.perf_counter()
        mean_bytes = produce(broker.bootstrap, topics["inference"], args.events)
        print(f"broker {args.broker}: {args.events:,} simulated inference events, mean {mean_bytes:.0f} B, "
              f"4 partitions, produced in {time.perf_counter() - t:.1f}s")
        a_rates, d_rates = [], []
        for r in range(args.rounds):
            a_rates.append(anchor(broker.bootstrap, topics["inference"], args.events))
            d_rates.append(driftwatch(broker.bootstrap, topics, args.events, Path(tmp)))
            print(f"round {r + 1}: anchor {a_rates[-1]:,.0f}/s  driftwatch {d_rates[-1]:,.0f}/s")
        ratio = statistics.median(d_rates) / statistics.median(a_rates)
        print(f"anchor (kafka-python, json.loads + commit per batch): {summary(a_rates)}")
        print(f"driftwatch ingest (decode, dedup, DLQ, metrics, monitor, commit): {summary(d_rates)}")
        print(f"ratio driftwatch/anchor: {ratio:.2f}  (goal >= 0.7)")


if __name__ == "__main__":
    main()
