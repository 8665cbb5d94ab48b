"""Ingest throughput: driftwatch's pipeline against a plain kafka-python consumer on the same topic.

Anchor: a kafka-python consumer group doing json.loads per record and a commit per batch. Candidate: the
daemon's own KafkaSource + Ingestor (contract decode, dedup window, dead-letter sink, per-adapter metrics,
offset journal, commit per batch) feeding the monitor (features, sketches per adapter window) as in the daemon. Same broker, same topic, same consumer settings, fresh group per run; the
runs alternate so drift in the machine's speed hits both. Rates are timed from the first record received to
the last one committed (group joins excluded). Prints median and range of each and the ratio of medians.

Then the per-event cost of each stage, timed in isolation on the same events (no broker): the anchor's
json.loads, the contract decode, features, the window's sketches (without a reference, as the timed run; and
with one built from the same events, whose numeric histograms count too) and the per-adapter signals — with
the anchor's whole per-event time beside them, so the shares show what the gap is made of.

    python bench/ingest.py [--broker tansu|noida] [--events 200000] [--rounds 3] [--costs-only]
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
from driftwatch.events import decode
from driftwatch.monitor.features import FeatureExtractor
from driftwatch.monitor.monitor import Window, build_profile
from driftwatch.ingest.kafka import KafkaDeadLetterSink, KafkaSource
from driftwatch.ingest.pipeline import Ingestor, OffsetJournal
from driftwatch.dev.localbroker import LocalBroker
from driftwatch.metrics import Metrics
from driftwatch.monitor.signals import AdapterSignals
from driftwatch.ingest.recent import DedupWindow
from driftwatch.dev.simulate import SimConfig, Simulator

CONSUMER = {"max_poll_records": 500, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
            "fetch_max_bytes": 52_428_800, "max_partition_fetch_bytes": 4_194_304}


def simulated(n: int):
    """The bench's events: (key, value) of n simulated inference events, the same every run."""
    sim = Simulator(SimConfig(seed=1, feedback_rate=0.0, adapters={"support-v1": 0.7, "support-v2": 0.3}))
    for i in range(n):
        out = sim.inference(1_795_514_400_000 + i * 10)
        yield out.key, out.value


def produce(bootstrap: str, topic: str, n: int) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262_144, acks=1)
    sizes = 0
    for key, value in simulated(n):
        sizes += len(value)
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()
    return sizes / n


def per_event_costs(n: int = 20_000, rounds: int = 3) -> dict[str, float]:
    """Microseconds per event of each stage, on the bench's first n events, each the best of ``rounds`` passes."""
    settings = Settings()
    values = [value for _, value in simulated(n)]
    limit = settings.ingest.max_record_bytes
    events = [decode("inference", v, limit) for v in values]
    fx = FeatureExtractor()
    features = [fx(e) for e in events]
    reference = build_profile(events)
    mon = settings.monitor

    def window(ref):
        return Window(ref, mon.max_categories, mon.diversity_sample, 0.0, mon.report_sample, 0)

    def sketches(ref):
        win = window(ref)
        for f, e in zip(features, events):
            if win.events >= mon.window_events:  # a window closes and a new one starts, as in the monitor
                win = window(ref)
            win.add(f, e.response, None)

    signals = AdapterSignals(Metrics())
    items = [("inference", e, e.adapter, None) for e in events]
    stages = {
        "json.loads (the anchor's work)": lambda: [json.loads(v) for v in values],
        "decode (contract, pydantic)": lambda: [decode("inference", v, limit) for v in values],
        "features": lambda: [fx(e) for e in events],
        "sketches, no reference (as timed above)": lambda: sketches(None),
        "sketches, with a reference (drift on)": lambda: sketches(reference),
        "signals (per-adapter metrics)": lambda: signals(items),
    }
    out = {}
    for name, run in stages.items():
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t)
        out[name] = best / n * 1e6
    return out


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
    from driftwatch.dev import unwind_on_sigterm

    unwind_on_sigterm()  # killed with SIGTERM, it still stops the servers it started
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", choices=["tansu", "noida"], default="tansu")  # noida-db 0.2.3 bogs down past ~100k
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--costs-only", action="store_true", help="the per-event costs alone (no broker)")
    args = ap.parse_args()
    if args.costs_only:
        print_costs(None)
        return
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
        print(f"ratio driftwatch/anchor: {ratio:.2f}  (goal >= 0.9); load average {loadavg()}")
        print_costs(statistics.median(a_rates), statistics.median(d_rates))


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 1)[0]


def print_costs(anchor_rate: float | None, driftwatch_rate: float | None = None) -> None:
    costs = per_event_costs()
    print(f"\nper-event cost of each stage, in isolation on the same events (best of 3 passes over 20,000; load "
          f"average {loadavg()}):")
    if anchor_rate:
        print(f"  {'the anchor, whole (consume + json.loads + commit)':48s} {1e6 / anchor_rate:6.1f} us")
        print(f"  {'driftwatch ingest, whole':48s} {1e6 / driftwatch_rate:6.1f} us")
    for name, us in costs.items():
        print(f"  {name:48s} {us:6.1f} us")


if __name__ == "__main__":
    main()
