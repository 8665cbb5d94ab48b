"""The demo's served mode: simulated users talk to a real vLLM (CPU build, the tiny Llama, LoRA adapters
support-v1 and support-v2) through the driftwatch gateway, so the inference logs the daemon monitors are real.

:class:`GatewayPublisher` looks like the producer the simulator drives (``send_raw``), and turns each simulated
request into a real call: the prompt goes to the gateway under the alias of its adapter, with the simulator's
request id (``x-request-id``) and route; feedback goes to ``/v1/feedback``. Records that are not valid events
(the bad-record kinds) and repeats of a request id (duplicates) go to Kafka as they are, so the demo's exact
count check still holds.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from driftwatch.events import InferenceEvent, Rejected, decode

ALIASES = {"support-v1": "production", "support-v2": "canary"}


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("peft") is not None


class GatewayPublisher:
    def __init__(self, gateway_url: str, producer, topics: dict[str, str], max_record_bytes: int) -> None:
        self.url, self.producer, self.topics, self.max_bytes = gateway_url, producer, topics, max_record_bytes
        self.client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16))
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="demo-client")  # users in parallel, as in life
        self.futures: list = []
        self.seen: set[str] = set()
        self.calls = Counter()

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None, headers=None):
        kind = "inference" if topic == self.topics["inference"] else "feedback"
        event = decode(kind, value, self.max_bytes) if value is not None else None
        if event is None or isinstance(event, Rejected) or (kind == "inference" and event.request_id in self.seen):
            return self.producer.send_raw(topic, value, key=key)  # bad records and duplicates, as they are
        if kind == "inference":
            assert isinstance(event, InferenceEvent)
            self.seen.add(event.request_id)
            self.futures.append(self.pool.submit(self._complete, event, len(self.seen)))
        else:
            doc = {k: v for k, v in json.loads(value).items() if k in ("feedback_id", "request_id", "rating", "thumbs",
                                                                      "correction", "label")}
            r = self.client.post(f"{self.url}/v1/feedback", json=doc)
            self.calls[f"feedback {r.status_code}"] += 1
        return None

    def _complete(self, event: InferenceEvent, seed: int) -> None:
        r = self.client.post(f"{self.url}/v1/completions",
                             json={"model": ALIASES.get(event.adapter, event.adapter), "prompt": event.prompt,
                                   "max_tokens": 6, "temperature": 0.8, "seed": seed},
                             headers={"x-request-id": event.request_id, "x-driftwatch-route": event.route or ""})
        self.calls[f"inference {r.status_code}"] += 1

    def flush(self) -> None:
        for f in self.futures:
            f.result()
        self.futures.clear()
        self.producer.flush()


class ServedStack:
    """vLLM with the tiny model and two adapters, and a gateway for each topic layout the demo needs."""

    def __init__(self, echo) -> None:
        self.echo, self.vllm, self.gateways = echo, None, []
        self.tmp = Path(tempfile.mkdtemp(prefix="driftwatch-demo-serving-"))

    def start(self) -> ServedStack:
        from driftwatch.localvllm import LocalVLLM
        from driftwatch.retrain.dataset import curate, read_examples, read_golden, write_dataset
        from driftwatch.retrain.models import build_tiny_llama
        from driftwatch.retrain.trainer import TrainSpec, train

        t0 = time.monotonic()
        model = build_tiny_llama(self.tmp / "tiny-llama")
        examples = Path(__file__).parent / "defaults" / "examples"
        data = write_dataset(curate(read_examples(examples / "base.jsonl"), read_golden(examples / "golden.jsonl")),
                             self.tmp / "datasets", sources={"demo": "shipped examples"})
        train(TrainSpec(base_model=str(model), dataset=str(data), output=str(self.tmp / "adapter"), max_steps=8,
                        eval_every=4, progress=False))
        self.echo(f"tiny Llama built and a LoRA adapter trained on the shipped examples in {time.monotonic() - t0:.1f}s;"
                  " starting vLLM (CPU build)")
        self.vllm = LocalVLLM(model).start()
        for name in ALIASES:
            self.vllm.load_adapter(name, self.tmp / "adapter" / "adapter")
        self.echo(f"vLLM ready at {self.vllm.url} with adapters {', '.join(ALIASES)} after {time.monotonic() - t0:.1f}s")
        return self

    def gateway(self, settings):
        from driftwatch import gateway as gw
        from driftwatch.http import HttpServer

        service, sink = gw.build(settings.model_copy(update={"gateway": settings.gateway.model_copy(update={
            "upstreams": [self.vllm.url], "store_path": self.tmp / "aliases.db", "alias_poll_s": 0.1})}))
        if service.table.version == 0:
            service.store.set_aliases({alias: {adapter: 1.0} for adapter, alias in ALIASES.items()}, time.time(),
                                      who="demo", why="initial aliases")
            service.reload()
        http = HttpServer(service.app(), "127.0.0.1", 0).start()
        self.gateways.append((service, sink, http))
        return http.url, sink

    def stop(self) -> None:
        import shutil

        t0 = time.monotonic()
        for service, sink, http in self.gateways:
            http.stop()
            service.close()
            sink.close()
        t1 = time.monotonic()
        if self.vllm is not None:
            self.vllm.stop()
        self.echo(f"stopped: gateways in {t1 - t0:.1f}s, vLLM in {time.monotonic() - t1:.1f}s")
        shutil.rmtree(self.tmp, ignore_errors=True)
