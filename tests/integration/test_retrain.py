"""The retrain stage in the daemon, on a real broker: feedback harvested from Kafka, a drift decision, and a
real LoRA training run of the session's tiny Llama, recorded as a candidate."""

import json
from pathlib import Path

import driftwatch
from driftwatch.client import EventProducer
from driftwatch.events import decode
from driftwatch.monitor.monitor import build_profile
from driftwatch.dev.simulate import SimConfig, Simulator

from .conftest import InProcessDaemon, make_settings, wait_for
from .test_ingest import send_stream

EXAMPLES = Path(driftwatch.__file__).parent / "defaults" / "examples"


def test_a_drift_decision_trains_a_candidate_from_harvested_feedback(tansu, tiny_model, tmp_path):
    sim = Simulator(SimConfig(seed=600, feedback_rate=0))
    reference = build_profile([decode("inference", o.value, 10**7) for o in sim.stream(5000, start_ms=1795514400000)])
    reference.save(tmp_path / "ref.json")
    settings = make_settings(
        tansu, tmp_path,
        monitor={"reference_path": str(tmp_path / "ref.json"), "window_events": 1000, "check_interval_s": 0.5},
        policy={"rules": [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "min_samples": 500}]},
        retrain={"base_model": str(tiny_model), "golden_set": str(EXAMPLES / "golden.jsonl"),
                 "base_training_set": str(EXAMPLES / "base.jsonl"),
                 "training": {"max_steps": 4, "eval_every": 2}, "gates": {"min_route_examples": 3}})
    d = InProcessDaemon(settings).wait_ready()
    shifted = SimConfig(seed=601, feedback_rate=0.5, negative_rate=0.5, adapters={"support-v2": 1.0},
                        routes={"qa": 0.1, "summarize": 0.6, "code": 0.1, "chat": 0.1, "extract": 0.1})
    with EventProducer(kafka=settings.kafka) as producer:
        # a week of normal traffic and its feedback first (in a compressed form), then the shift
        before, first = send_stream(producer, settings, Simulator(SimConfig(seed=602, feedback_rate=0.5, negative_rate=0.5,
                                                                         adapters={"support-v2": 1.0})), 900)
        wait_for(lambda: d.accepted(settings.kafka.topics.feedback) == before["feedback"], 60, "the first feedback")
        sent, second = send_stream(producer, settings, Simulator(shifted), 1300)

    wait_for(lambda: d.value("driftwatch_retrain_runs_total", status="succeeded") >= 1
             or d.value("driftwatch_retrain_runs_total") >= 1, 180, "the retrain run to finish")
    (run,) = d.daemon.control.store.runs()
    assert run.status == "succeeded", (run.reason, run.detail.get("gates"))
    decision = d.daemon.control.store.decisions(action="retrain")[0]
    assert run.decision_id == decision.id and run.adapter == "support-v2"
    assert "summarize" in run.detail["focus_routes"]  # the route whose share grew must be covered
    # the run used what was harvested when it started; training competes for the CPU, so feedback may still be
    # arriving: wait for all of it, then every joined correction and thumbs-up is in the store
    dataset = json.loads((Path(run.dataset) / "manifest.json").read_text())
    assert dataset["sources"]["harvested"] > 100
    assert dataset["counts"]["from_correction"] + dataset["counts"]["from_positive"] == dataset["sources"]["harvested"]
    wait_for(lambda: d.accepted(settings.kafka.topics.feedback) == before["feedback"] + sent["feedback"], 60, "all feedback")
    stored = d.daemon.control.store.examples()
    feedback = [decode("feedback", out.value, 10**7) for out, _ in first + second if out.topic == "feedback"]
    expected = {f.request_id for f in feedback if f.correction or f.sentiment == "positive"}
    assert {e.request_id for e in stored} == expected  # every correction and thumbs-up joined to its request
    assert d.value("driftwatch_training_examples_total") == len(stored) > 400
    assert {e.source for e in stored} == {"correction", "positive"} and all(e.adapter == "support-v2" for e in stored)
    manifest = json.loads((Path(run.output) / "manifest.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["dataset"]["version"] == dataset["version"]
    assert (Path(run.output) / "adapter" / "adapter_model.safetensors").exists()
    assert d.value("driftwatch_training_tokens_total") == manifest["tokens_seen"]
    assert d.stop() == 0
